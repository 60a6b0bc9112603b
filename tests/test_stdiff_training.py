"""STDiffModule training: train.py end to end, the non-finite guard, start-up checks, configs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from stdiff import stdiff_config
from stdiff.model import STDiff
from stdiff.module import STDiffModule
from tests.conftest import ROOT, compose
from wavecast.config import ConfigError, validate_config

TINY = "experiment=stdiff_kitti_range_tiny"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------------------------
# helpers (also used by test_stdiff_eval.py)


def run_script(script: str, overrides: list[str], log_dir: Path, timeout: int = 900):
    env = dict(
        os.environ,
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        # One thread: the shared 2-core machine makes two OpenMP threads much slower.
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    cmd = [sys.executable, str(ROOT / script), f"paths.log_dir={log_dir}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def check_ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if proc.returncode != 0:
        raise AssertionError(
            f"{proc.args[1]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-5000:]}"
        )
    return proc


def only_run_dir(log_dir: Path, task: str = "train") -> Path:
    runs = sorted((log_dir / task / "runs").glob("*/*"))
    assert len(runs) == 1, runs
    return runs[0]


def metric_column(run_dir: Path, key: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key) not in (None, "")]


def tiny_module(tmp_path: Path, overrides: list[str] = ()) -> STDiffModule:
    cfg = compose("train.yaml", [TINY, *overrides], tmp_path)
    return instantiate(cfg.model, _recursive_=True)


def range_data(n_obs: int = 3, n_pred: int = 3, size=(16, 64), channels=("range",)):
    """What STDiffModule.check_data reads from a RangeSequenceDataModule."""
    return SimpleNamespace(
        n_obs=n_obs,
        n_pred=n_pred,
        channels=len(channels),
        channels_names=tuple(channels),
        frame_size=tuple(size),
        normalization="log2_81",
        projection={"height": size[0], "width": size[1]},
    )


# ----------------------------------------------------------------------------------------------
# train.py end to end


def test_tiny_run_writes_checkpoint_ema_and_a_falling_loss(tmp_path, synthetic_kitti):
    check_ok(run_script("train.py", [TINY, f"data.root={synthetic_kitti}"], tmp_path))
    run_dir = only_run_dir(tmp_path)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 16
    meta = ckpt["wavecast"]
    assert meta["model"] == "stdiff"
    # The training schedule of model.noise_scheduler travels with the weights.
    assert meta["scheduler_config"]["beta_schedule"] == "squaredcos_cap_v2"
    extra = ckpt["state_dict"]["net._extra_state"]
    assert extra["scheduler_config"]["beta_schedule"] == "squaredcos_cap_v2"
    # EMA: the saved state_dict holds the averaged weights, the raw ones beside them.
    raw = ckpt["current_model_state"]
    key = "net.unet.conv_in.weight"
    assert not torch.equal(ckpt["state_dict"][key], raw[key])
    loss = metric_column(run_dir, "train/loss")
    assert len(loss) == 16
    assert sum(loss[-4:]) / 4 < sum(loss[:4]) / 4 - 0.05, loss
    val = metric_column(run_dir, "val/loss")
    assert len(val) == 4 and val[-1] < val[0], val
    assert metric_column(run_dir, "val/sample_range_l1_m"), "validation samples were not scored"
    strips = sorted((run_dir / "media").glob("val_range_obs_pred_gt_*.png"))
    assert strips, "no range-image strips logged"
    import cv2

    img = cv2.imread(str(strips[0]))
    # observed | predicted | ground truth: (3 + 3 + 3) frames of 16 x 64.
    assert img.shape[:2] == (16, 9 * 64)


@pytest.mark.slow
def test_small_experiment_loss_goes_down(tmp_path, synthetic_kitti):
    check_ok(
        run_script(
            "train.py",
            ["experiment=stdiff_kitti_range_small", f"data.root={synthetic_kitti}"],
            tmp_path,
            timeout=1800,
        )  # fmt: skip
    )
    run_dir = only_run_dir(tmp_path)
    loss = metric_column(run_dir, "train/loss")
    assert len(loss) == 150
    assert sum(loss[-20:]) / 20 < 0.6 * sum(loss[:10]) / 10, loss
    val = metric_column(run_dir, "val/loss")
    assert val[-1] < val[0], val


# ----------------------------------------------------------------------------------------------
# steps (in process)


def _batch(n: int = 2, t: int = 6, h: int = 16, w: int = 64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(n, t, 1, h, w, generator=g) * 2 - 1
    return {"frames": frames}


def test_rand_predict_trains_on_sorted_random_future_subsets(tmp_path):
    module = tiny_module(tmp_path, ["model.rand_Tp=2", "model.time_step=0.5"])
    module.check_data(range_data())
    seen = []

    def fake_loss(vo, vp, idx_o, idx_p, scheduler, loss):
        seen.append((vo, vp, idx_o, idx_p))
        return (vp - vp).abs().mean() + 1.0, {}

    module.net.training_loss = fake_loss
    batch = _batch()
    picked = set()
    for _ in range(30):
        module.training_step(batch, 0)
    for vo, vp, idx_o, idx_p in seen:
        assert torch.equal(vo, batch["frames"][:, :3])
        assert torch.equal(idx_o, torch.tensor([0.0, 0.5, 1.0]))
        assert idx_p.numel() == 2 and bool((idx_p[1:] > idx_p[:-1]).all())
        index = (idx_p / 0.5).round().long()  # times = 0.5 * frame index, futures 3..5
        assert set(index.tolist()) <= {3, 4, 5}
        assert torch.equal(vp, batch["frames"][:, index])
        picked.add(tuple(index.tolist()))
    assert len(picked) == 3  # every 2-subset of 3 futures shows up


def test_nonfinite_loss_skips_the_step_without_touching_the_weights(tmp_path):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    module = tiny_module(tmp_path, ["model.lr_scheduler=null", "model.max_nonfinite_skips=3"])
    module.check_data(range_data())
    good = _batch(seed=1)
    bad = _batch(seed=2)
    bad["frames"][0, 0, 0, 0, 0] = float("nan")
    batches = [good, bad, good]

    class Watch(pl.Callback):
        def __init__(self):
            self.changed = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.before = [p.detach().clone() for p in pl_module.net.parameters()]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            after = list(pl_module.net.parameters())
            self.changed.append(any(not torch.equal(a, b) for a, b in zip(self.before, after)))

    watch = Watch()
    trainer = pl.Trainer(
        max_steps=3, max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[watch],
        gradient_clip_val=1.0,
    )  # fmt: skip
    loader = DataLoader(batches, batch_size=None)
    with pytest.warns(UserWarning, match="training_step"):
        trainer.fit(module, train_dataloaders=loader)
    assert watch.changed == [True, False, True]
    assert module.guard.skipped == 1 and module.guard.consecutive == 0
    assert all(torch.isfinite(p).all() for p in module.net.parameters())


def test_nonfinite_gradients_are_dropped_and_counted(tmp_path):
    module = tiny_module(tmp_path, ["model.max_nonfinite_skips=1"])
    params = list(module.net.parameters())
    for p in params:
        p.grad = torch.ones_like(p)
    params[3].grad[0] = float("inf")
    module.on_before_optimizer_step(None)
    assert all(p.grad is None for p in params)
    assert module.guard.skipped == 1
    for p in params:
        p.grad = torch.ones_like(p)
    module.on_before_optimizer_step(None)  # finite: kept, and the run of skips is reset
    assert all(p.grad is not None for p in params) and module.guard.consecutive == 0
    from wavecast.guards import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="max_nonfinite_skips=1"):
        for _ in range(2):
            for p in params:
                p.grad = torch.full_like(p, float("nan"))
            module.on_before_optimizer_step(None)


# ----------------------------------------------------------------------------------------------
# start-up checks


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (range_data(n_obs=1), r"n_obs=1.*difference images"),
        (range_data(size=(16, 72)), r"16 x 72 must be divisible by 16"),
        (range_data(size=(32, 64)), r"sample_size=\[16, 64\].*\[32, 64\]"),
        (range_data(channels=("range", "reflectance")), r"tde\.in_channels=2.*in_channels=4"),
        (range_data(n_pred=1), r"rand_Tp=2 exceeds data\.n_pred=1"),
        (SimpleNamespace(clip_length=9, frame_size=(16, 64)), r"no n_obs / n_pred"),
    ],
)
def test_data_and_model_must_agree_at_start_up(tmp_path, data, match):
    module = tiny_module(tmp_path, ["model.rand_Tp=2"])
    with pytest.raises(ConfigError, match=match):
        module.check_data(data)


def test_warmup_must_be_shorter_than_the_run(tmp_path, synthetic_kitti):
    from wavecast.run import build

    cfg = compose(
        "train.yaml",
        [TINY, f"data.root={synthetic_kitti}", "model.lr_scheduler.num_warmup_steps=16",
         "logger=none", "callbacks=none"],
        tmp_path,
    )  # fmt: skip
    objs = build(cfg)
    with pytest.raises(ConfigError, match=r"num_warmup_steps=16 is not shorter than the run \(16"):
        objs["trainer"].fit(objs["model"], datamodule=objs["datamodule"])


def test_unknown_settings_are_named(tmp_path):
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match=r"model\.scheduler_type must be one of"):
        tiny_module(tmp_path, ["model.scheduler_type=euler"])
    module = tiny_module(tmp_path)
    with pytest.raises(ConfigError, match=r"analyses: unknown \['flow'\]"):
        module.analyses = ["continuity", "flow"]


# ----------------------------------------------------------------------------------------------
# configs


def _net_kwargs(node) -> dict:
    from omegaconf import OmegaConf

    kw = OmegaConf.to_container(node, resolve=True)
    kw.pop("_target_")
    return kw


def test_target_experiment_is_the_published_kitti_range_model(tmp_path):
    cfg = compose("train.yaml", ["experiment=stdiff_kitti_range"], tmp_path)
    validate_config(cfg)
    net = _net_kwargs(cfg.model.net)
    net.pop("_convert_")
    want = stdiff_config("kitti_range")
    for part in ("unet", "tde"):
        for key, value in want[part].items():
            if key == "adjoint":
                continue
            assert net[part][key] == (list(value) if isinstance(value, tuple) else value), key
    assert net["autoregressive"] is True and net["super_res_training"] is False
    with torch.device("meta"):
        model = STDiff(**net)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / 1e6 - 204.2) < 0.05, n  # spec: 204.2 M (UNet 194.2 M, TDE 10.1 M)
    assert abs(sum(p.numel() for p in model.unet.parameters()) / 1e6 - 194.2) < 0.05
    # Training recipe of the spec.
    m = cfg.model
    assert m.noise_scheduler.beta_schedule == "squaredcos_cap_v2"
    assert m.noise_scheduler.num_train_timesteps == 1000 and m.noise_scheduler.clip_sample
    assert m.loss == "l1" and m.optimizer._target_ == "torch.optim.AdamW"
    assert (m.optimizer.lr, list(m.optimizer.betas), m.optimizer.weight_decay) == (
        1e-4, [0.95, 0.999], 1e-6,
    )  # fmt: skip
    assert m.lr_scheduler.num_warmup_steps == 500
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.trainer.precision == "bf16-mixed"
    assert "EMAWeightAveraging" in cfg.callbacks.ema._target_
    assert (cfg.data.n_obs, cfg.data.n_pred) == (3, 3)
    assert (cfg.data.projection.height, cfg.data.projection.width) == (64, 512)
    assert list(cfg.data.test_drives) == ["08", "09", "10"]


def test_odometry_protocol_experiment(tmp_path):
    cfg = compose("train.yaml", ["experiment=stdiff_odometry"], tmp_path)
    validate_config(cfg)
    assert (cfg.data.n_obs, cfg.data.n_pred) == (5, 5)
    assert (cfg.data.projection.height, cfg.data.projection.width) == (64, 2048)
    assert list(cfg.model.net.unet.sample_size) == [64, 2048]
    assert cfg.data.layout == "odometry"
    assert list(cfg.data.train_drives) == ["00", "01", "02", "03", "04", "05"]
    assert list(cfg.data.val_drives) == ["06", "07"]
    assert list(cfg.data.test_drives) == ["08", "09", "10"]


def test_optuna_search_sweeps_keys_that_exist(tmp_path):
    cfg = compose(
        "train.yaml",
        ["hparams_search=stdiff_optuna", "experiment=stdiff_kitti_range_small"],
        tmp_path,
    )
    validate_config(cfg)
    assert cfg.optimized_metric == "val/loss" and cfg.optimized_mode == "min"
    from omegaconf import OmegaConf

    # compose() drops the hydra node: read the search space from the file.
    space = OmegaConf.load(ROOT / "configs" / "hparams_search" / "stdiff_optuna.yaml")
    for key in space.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, key


def test_default_model_is_the_reduced_configuration(tmp_path):
    cfg = compose(
        "train.yaml", ["model=stdiff", "data=kitti_range", "data.projection.width=128"], tmp_path
    )
    validate_config(cfg)
    net = _net_kwargs(cfg.model.net)
    net.pop("_convert_")
    with torch.device("meta"):
        model = STDiff(**net)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / 1e6 - 12.8) < 0.05, n  # spec: the reduced configuration, 12.8 M
    assert net["unet"]["sample_size"] == [64, 128]
