"""The forecast baselines in STDiff's test metrics: scored by the module's own metric code,
reported per step under test/<metric>/step<k>/<method>, and equal to the metric computed here
straight from the dataset's metres (independent of the [-1, 1] image round trip)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stdiff.evaluation import FLAT_METRICS
from tests.conftest import compose
from tests.test_stdiff_training import TINY
from wavecast.data.range_projection import RangeProjection

pytestmark = pytest.mark.usefixtures("one_torch_thread")

METHODS = ("copy_last", "constant_velocity", "mean_of_k", "best_of_k")


@pytest.fixture(scope="module")
def tested(tmp_path_factory, synthetic_kitti):
    """An untrained tiny STDiff run through trainer.test on the test drive: (report, datamodule)."""
    from wavecast.run import build

    out = tmp_path_factory.mktemp("stdiff_baselines")
    cfg = compose(
        "train.yaml", [TINY, f"data.root={synthetic_kitti}", "model.num_inference_steps=2"], out
    )
    objs = build(cfg)
    model, dm = objs["model"], objs["datamodule"]
    objs["trainer"].test(model, datamodule=dm)
    return model.eval_report(), dm


def test_every_method_metric_and_step_is_reported(tested):
    report, _ = tested
    for metric in FLAT_METRICS:
        for method in METHODS:
            for k in (1, 2, 3):
                value = report[f"test/{metric}/step{k}/{method}"]
                assert math.isfinite(value) and value >= 0, (metric, method, k)
            per_step = report[f"test/{method}/{metric}_per_step"]
            assert [report[f"test/{metric}/step{k}/{method}"] for k in (1, 2, 3)] == per_step


def test_copy_last_metrics_match_the_dataset_metres(tested):
    report, dm = tested
    ds = dm.test_dataloader().dataset
    n_obs = dm.n_obs
    lo = RangeProjection(**dm.projection).min_range
    l1, l1_both = [[] for _ in range(3)], [[] for _ in range(3)]
    for i in range(len(ds)):
        r = ds[i]["range_m"][:, 0].double()  # [T, H, W] metres, -1 empty
        last = r[n_obs - 1]
        for k in range(3):
            gt = r[n_obs + k]
            valid = gt > 0
            # A cell the forecast leaves empty counts as a return at the minimum range.
            l1[k].append((last.clamp_min(lo) - gt).abs()[valid].mean().item())
            both = valid & (last > 0)
            l1_both[k].append((last - gt).abs()[both].mean().item())
    for k in range(3):
        step = f"step{k + 1}/copy_last"
        assert report[f"test/range_l1_m/{step}"] == pytest.approx(np.mean(l1[k]), rel=1e-4)
        assert report[f"test/range_l1_both_m/{step}"] == pytest.approx(
            np.mean(l1_both[k]), rel=1e-4
        )


def test_constant_velocity_beats_copy_last_where_both_have_returns(tested):
    # The synthetic street is static but for a few movers: moving the last scan with the
    # ego-motion must explain most of the change on the cells it fills.
    report, _ = tested
    for k in (1, 2, 3):
        cv = report[f"test/range_l1_both_m/step{k}/constant_velocity"]
        assert cv < report[f"test/range_l1_both_m/step{k}/copy_last"]


def test_unknown_baseline_is_refused():
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    cfg = compose("train.yaml", [TINY, "model.baselines=[copy_first]"], None)
    with pytest.raises(InstantiationException, match=r"model\.baselines: unknown \['copy_first'\]"):
        instantiate(cfg.model, _recursive_=True)
