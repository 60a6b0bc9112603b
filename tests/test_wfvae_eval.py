"""`eval.py` on WF-VAE checkpoints in a subprocess, as a user runs it.

The checkpoint is the published code's tiny model converted by scripts/convert_reference.py, so
the metrics JSON can be checked against numbers computed here from the fixture's own weights
(`WFVAE.from_reference`, not the module) on the same test clips; FVD with a stand-in I3D (a
TorchScript file with the real call signature) against dataset-level statistics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import ROOT, compose
from tests.test_metrics import _FakeI3D
from tests.test_wfvae_module import FIXTURE, _convert
from wavecast.metrics.fvd import frechet_distance, preprocess_i3d
from wavecast.metrics.image import psnr, ssim
from wfvae.model import WFVAE


def run_eval(
    overrides: list[str], log_dir: Path, timeout: int = 600
) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    env.pop("WAVECAST_WEIGHTS_DIR", None)
    cmd = [sys.executable, str(ROOT / "eval.py"), f"paths.log_dir={log_dir}", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"eval.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def test_eval_py_on_converted_reference_writes_metrics_and_dataset_fvd(tmp_path, synthetic_kitti):
    ckpt, config = _convert(tmp_path)  # the converter's output, as a user gets it
    i3d = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(_FakeI3D()).save(str(i3d))
    n_test = 5
    overrides = [
        "experiment=wfvae_kitti_tiny",
        f"data.root={synthetic_kitti}",
        "data.clip_length=13",  # I3D needs >= 10 frames
        "data.batch_size=1",  # one clip per batch: a per-batch FVD would not even exist
        f"data.max_clips_per_split={{train: 1, val: 1, test: {n_test}}}",
        *(f"++model.net.{k}={v}" for k, v in config.items()),
        f"model.fvd_i3d={i3d}",
        "model.loss.perceptual_weight=0",
    ]
    proc = run_eval([*overrides, f"ckpt_path={ckpt}"], tmp_path / "logs")
    (out,) = list((tmp_path / "logs").rglob("metrics.json"))
    report = json.loads(out.read_text())
    assert report["checkpoint"] == str(ckpt)
    metrics = report["metrics"]
    assert "FVD disabled" not in proc.stdout + proc.stderr

    # Ground truth from the fixture's weights on the same clips.
    cfg = compose("eval.yaml", [*overrides, f"ckpt_path={ckpt}"], tmp_path / "gt")
    dm = instantiate(cfg.data, batch_size=1)
    dm.prepare_data()
    dm.setup("test")
    fixture = torch.load(FIXTURE, weights_only=True)
    net = WFVAE.from_reference(fixture["state_dict"], json.loads(fixture["config"])).eval()
    i3d_model = _FakeI3D()
    clips_psnr, clips_ssim, real, fake = [], [], [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            x = batch["video"]
            recon = net(x, sample_posterior=False).recon
            clips_psnr.append(psnr(recon, x).mean())
            clips_ssim.append(ssim(recon, x).mean())
            feats = (
                i3d_model(preprocess_i3d(v), rescale=False, resize=False, return_features=True)
                for v in (x, recon.clamp(-1, 1))
            )
            r, f = feats
            real.append(r.double())
            fake.append(f.double())
    assert len(clips_psnr) == n_test
    assert metrics["test/psnr"] == pytest.approx(torch.stack(clips_psnr).mean().item(), rel=1e-4)
    assert metrics["test/ssim"] == pytest.approx(torch.stack(clips_ssim).mean().item(), rel=1e-4)
    for key in ("test/flicker", "test/rec_l1", "test/loss", "test/kl", "test/wavelet"):
        assert np.isfinite(metrics[key]), key
    fr, ff = torch.cat(real).numpy(), torch.cat(fake).numpy()
    expected_fvd = frechet_distance(
        fr.mean(0), np.cov(fr, rowvar=False), ff.mean(0), np.cov(ff, rowvar=False)
    )
    assert metrics["test/fvd_clips"] == n_test
    assert metrics["test/fvd"] == pytest.approx(expected_fvd, rel=1e-3, abs=1e-6)
