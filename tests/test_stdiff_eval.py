"""STDiff evaluation: eval.py metrics (mean and best of K, metres, Chamfer), continuity analysis,
metrics against closed-form cases, and the checkpoint checks (another model, another schedule)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from stdiff.evaluation import reduce_over_samples
from tests.conftest import compose
from tests.test_stdiff_training import TINY, check_ok, only_run_dir, run_script
from wavecast.config import ConfigError
from wavecast.data.range_projection import normalize_range

K = 2  # model.num_samples of the tiny experiment
STEPS = 4  # model.num_inference_steps of the tiny experiment


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, synthetic_kitti):
    """A 4-step tiny STDiff run (in process); its last.ckpt."""
    from wavecast.run import build

    out = tmp_path_factory.mktemp("stdiff_tiny_run")
    cfg = compose(
        "train.yaml",
        [TINY, f"data.root={synthetic_kitti}", "trainer.max_steps=4",
         "callbacks.media.every_n_epochs=100"],
        out,
    )  # fmt: skip
    objs = build(cfg)
    objs["trainer"].fit(objs["model"], datamodule=objs["datamodule"])
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


def _evaluate(tmp_path, overrides):
    from wavecast.run import evaluate

    cfg = compose("eval.yaml", [TINY, *overrides], tmp_path)
    return evaluate(cfg)


# ----------------------------------------------------------------------------------------------
# eval.py end to end


def test_eval_writes_mean_and_best_of_k_metrics_and_continuity(
    tmp_path, tiny_ckpt, synthetic_kitti
):
    check_ok(
        run_script(
            "eval.py",
            [
                TINY,
                f"data.root={synthetic_kitti}",
                f"ckpt_path={tiny_ckpt}",
                "analyses=[continuity]",
            ],
            tmp_path,
        )
    )
    run_dir = only_run_dir(tmp_path, task="eval")
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert metrics["test/num_samples"] == K and metrics["test/num_sequences"] == 2
    assert metrics["test/beta_schedule"] == "squaredcos_cap_v2"
    for name, higher in (
        ("psnr", True),
        ("ssim", True),
        ("range_l1_m", False),
        ("chamfer_m", False),
    ):
        mean_k, best_k = metrics[f"test/mean_of_k/{name}"], metrics[f"test/best_of_k/{name}"]
        for key in (f"test/mean_of_k/{name}_per_step", f"test/best_of_k/{name}_per_step"):
            per_step = metrics[key]
            assert len(per_step) == 3 and all(math.isfinite(v) for v in per_step), (key, per_step)
            # The overall value is the mean of the per-step means (equal counts per step).
            assert np.mean(per_step) == pytest.approx(metrics[key[: -len("_per_step")]])
        # Best of K (chosen by the metric itself) is never worse than the mean over K.
        assert (best_k >= mean_k - 1e-9) if higher else (best_k <= mean_k + 1e-9), name
    # Metres: a barely trained model is metres off, but within the 1.45-80 m range limits.
    assert 0 < metrics["test/mean_of_k/range_l1_m"] < 80
    files = metrics["continuity/files"]
    for kind in ("png", "npz", "json"):
        path = run_dir / "continuity" / f"continuity{'_summary' if kind == 'json' else ''}.{kind}"
        assert path.is_file() and files[kind] == str(path)
    arrays = np.load(run_dir / "continuity" / "continuity.npz")
    assert arrays["step"].tolist() == list(range(STEPS))
    # K samples x min(2, batch 2) sequences, compared frame to frame at every step.
    assert arrays["x0_distance_per_sample"].shape == (STEPS, K * 2)
    assert np.all(arrays["eps_cosine"] <= 1 + 1e-9)
    assert sorted((run_dir / "media").glob("test_range_obs_pred_gt_*.png"))


# ----------------------------------------------------------------------------------------------
# checkpoint checks (in process, fail before any sampling)


def test_checkpoint_of_another_model_is_refused(tmp_path, synthetic_kitti):
    import lightning

    wf_cfg = compose("train.yaml", ["experiment=wfvae_kitti_tiny"], tmp_path / "wf")
    wfvae = instantiate(wf_cfg.model, _recursive_=True)
    ckpt = {"state_dict": wfvae.state_dict(), "pytorch-lightning_version": lightning.__version__}
    wfvae.on_save_checkpoint(ckpt)
    path = tmp_path / "wfvae.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(ConfigError, match=r"holds a 'wfvae' model, not STDiff"):
        _evaluate(tmp_path / "eval", [f"data.root={synthetic_kitti}", f"ckpt_path={path}"])


def test_schedule_mismatch_between_config_and_checkpoint_is_refused(
    tmp_path, tiny_ckpt, synthetic_kitti
):
    with pytest.raises(
        ConfigError,
        match=r"another noise schedule.*beta_schedule: checkpoint 'squaredcos_cap_v2' vs "
        r"config 'linear'",
    ):
        _evaluate(
            tmp_path,
            [f"data.root={synthetic_kitti}", f"ckpt_path={tiny_ckpt}",
             "model.noise_scheduler.beta_schedule=linear"],
        )  # fmt: skip


def test_architecture_mismatch_is_refused(tmp_path, tiny_ckpt, synthetic_kitti):
    with pytest.raises(ConfigError, match=r"does not fit the network of model\.net.*shape"):
        _evaluate(
            tmp_path,
            [f"data.root={synthetic_kitti}", f"ckpt_path={tiny_ckpt}",
             "model.net.unet.block_out_channels=[8,16,16,24,32]"],
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# metrics against closed-form cases


@pytest.fixture(scope="module")
def module_and_batch(tmp_path_factory, synthetic_kitti):
    tmp = tmp_path_factory.mktemp("stdiff_metrics")
    cfg = compose("eval.yaml", [TINY, f"data.root={synthetic_kitti}", "ckpt_path=x"], tmp)
    dm = instantiate(cfg.data, batch_size=2)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    module = instantiate(cfg.model, _recursive_=True)
    module.check_data(dm)
    return module, batch


def _shifted_images(batch, module, metres: float) -> torch.Tensor:
    """Future range images of the true ranges moved outwards by ``metres`` ([B, Tp, 1, H, W])."""
    proj = module.range_space.projection
    r = batch["range_m"][:, module.n_obs :]
    valid = batch["mask"][:, module.n_obs :]
    moved = torch.where(valid, (r + metres).clamp(max=proj.max_range), r)
    img, _ = normalize_range(moved, "log2_81", proj.min_range, proj.max_range)
    return img


def test_metrics_of_exact_and_shifted_predictions(module_and_batch):
    module, batch = module_and_batch
    vp = batch["frames"][:, module.n_obs :]
    exact = vp.unsqueeze(0)  # K = 1
    out = module.score(exact, vp, batch)
    assert torch.all(out["psnr"] == 100.0)  # identical frames: the PSNR cap
    assert torch.allclose(out["ssim"], torch.ones_like(out["ssim"]), atol=1e-4)
    assert out["range_l1_m"].abs().max() < 1e-3  # metres, through the normalisation and back
    assert out["chamfer_m"].max() < 1e-3

    shift = 1.0
    moved = _shifted_images(batch, module, shift).unsqueeze(0)
    out = module.score(moved, vp, batch)
    r = batch["range_m"][:, module.n_obs :, 0].double()
    valid = batch["mask"][:, module.n_obs :, 0]
    top = module.range_space.projection.max_range
    expected = ((r + shift).clamp(max=top) - r).abs()
    expected = (expected * valid).sum((-2, -1)) / valid.sum((-2, -1))  # [B, Tp]
    assert torch.allclose(out["range_l1_m"][0].double(), expected, atol=2e-3)
    # Each point moved 1 m radially: its partner is 1 m away, so no NN distance exceeds 1 m.
    assert torch.all(out["chamfer_m"] > 0) and torch.all(out["chamfer_m"] <= shift + 1e-4)

    # K = 2: one exact sample, one shifted: best of K is the exact one, mean in between.
    both = torch.cat([exact, moved])
    values = module.score(both, vp, batch)
    mean_k, best_k = reduce_over_samples(values["range_l1_m"], higher_is_better=False)
    assert best_k.abs().max() < 1e-3
    assert torch.allclose(mean_k, expected / 2, atol=2e-3)
    mean_k, best_k = reduce_over_samples(values["psnr"], higher_is_better=True)
    assert torch.all(best_k == 100.0)


def test_best_of_k_is_chosen_per_sequence_by_its_mean_over_steps():
    nan = float("nan")
    values = torch.tensor(
        [
            [[1.0, 9.0], [5.0, 5.0]],  # sample 0: sequence means 5.0, 5.0
            [[4.0, 4.0], [nan, nan]],  # sample 1: 4.0, all NaN
            [[0.0, 11.0], [6.0, nan]],  # sample 2: 5.5, 6.0 (NaN step ignored)
        ]
    )  # [K=3, B=2, Tp=2]
    mean_k, best_k = reduce_over_samples(values, higher_is_better=False)
    assert torch.allclose(mean_k, torch.tensor([[5 / 3, 8.0], [5.5, 5.0]], dtype=torch.float64))
    # Lower is better: sequence 0 -> sample 1 (4.0), sequence 1 -> sample 0 (5.0; NaN never wins).
    assert torch.equal(best_k, torch.tensor([[4.0, 4.0], [5.0, 5.0]], dtype=torch.float64))
    _, best_k = reduce_over_samples(values, higher_is_better=True)
    # Higher is better: sequence 0 -> sample 2 (5.5), sequence 1 -> sample 2 (6.0).
    assert torch.allclose(best_k, torch.tensor([[0.0, 11.0], [6.0, nan]], dtype=torch.float64),
                          equal_nan=True)  # fmt: skip


def test_lpips_is_scored_per_sample_and_step(module_and_batch, monkeypatch):
    import stdiff.evaluation as mod

    module, batch = module_and_batch
    calls = []

    class Stub(torch.nn.Module):
        def forward(self, x, y):  # [N, 1, H, W] pairs -> [N]
            calls.append(x.shape)
            return (x - y).abs().mean(dim=(1, 2, 3))

    monkeypatch.setattr(mod, "_LPIPS_MIN_SIZE", 8)
    monkeypatch.setattr(module, "lpips_metric", Stub())
    vp = batch["frames"][:, module.n_obs :]
    moved = _shifted_images(batch, module, 1.0)
    out = module.score(torch.stack([vp, moved]), vp, batch)
    b, tp = vp.shape[:2]
    assert calls == [(2 * b * tp, 1, 16, 64)]
    assert out["lpips"].shape == (2, b, tp)
    assert torch.all(out["lpips"][0] == 0) and torch.all(out["lpips"][1] > 0)
