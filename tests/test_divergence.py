"""A run that diverges with finite values ends non-zero and never saves the diverged weights."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from wavecast.guards import DivergenceError, DivergenceGuard


def test_lr_1e10_run_fails_and_keeps_no_diverged_checkpoint(tmp_path, synthetic_kitti):
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={tmp_path}",
         "experiment=wfvae_kitti_tiny", f"data.root={synthetic_kitti}",
         "model.optimizer.lr=1e10", "callbacks.last_checkpoint.every_n_train_steps=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "training diverged at step 1" in proc.stdout + proc.stderr
    (run,) = sorted((tmp_path / "train" / "runs" / "wfvae_kitti_tiny").glob("*"))
    # The step-1 periodic save would have written the exploded weights: nothing was written.
    assert not (run / "checkpoints" / "last.ckpt").exists()


class _Trainer:
    def __init__(self) -> None:
        self.global_step = 0
        self.callback_metrics: dict = {}


def test_loss_explosion_after_warmup() -> None:
    guard = DivergenceGuard(max_abs_weight=None, loss_factor=100.0, window=10, warmup_steps=5)
    model = torch.nn.Linear(2, 2)
    trainer = _Trainer()
    for loss in [1.0, 0.9, 1.1, 0.8, 1.0, 0.95, 50.0]:  # 50 < 100 x median: fine
        guard.on_train_batch_end(trainer, model, {"loss": torch.tensor(loss)}, None, 0)
    with pytest.raises(DivergenceError, match="over 100 x the recent median"):
        guard.on_train_batch_end(trainer, model, {"loss": torch.tensor(200.0)}, None, 0)
    # Non-finite losses are the NonFiniteGuard's business (skipped steps), not divergence.
    guard.on_train_batch_end(trainer, model, {"loss": torch.tensor(math.inf)}, None, 0)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(DivergenceError, match="a weight reached nan"):
        DivergenceGuard().on_train_batch_end(trainer, model, None, None, 0)
