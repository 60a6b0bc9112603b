"""A run killed mid-training and resumed with `ckpt_path=last` ends where the uninterrupted run ends.

Tolerance: parameters and logged losses equal to 1e-6 (absolute) in deterministic mode; the
difference measured here is 0 (same kernels, same order of operations, RNG state restored).
Exactness holds for resumes from epoch-boundary checkpoints (this test); a mid-epoch step
checkpoint restarts that epoch's data order, since plain DataLoaders are not stateful.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from tests.test_train_run import column, read_metrics, run_train

COMMON = [
    "experiment=wfvae_kitti_tiny",
    "deterministic=true",
    "logger=many",
    "logger.wandb.offline=true",
    "~logger.tensorboard",
]


def _runs(log_dir):
    return sorted((log_dir / "train" / "runs" / "wfvae_kitti_tiny").glob("*"))


# 4 steps per epoch: with every_n_train_steps=4 the periodic save of step 4 comes before the
# epoch-end save of the same step, which must still be written (it holds "epoch finished").
@pytest.mark.parametrize("every_n", ["null", "4"])
def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, synthetic_kitti, every_n):
    data = f"data.root={synthetic_kitti}"
    common = [*COMMON, f"callbacks.last_checkpoint.every_n_train_steps={every_n}"]
    run_train([*common, data], tmp_path / "a")
    (full,) = _runs(tmp_path / "a")

    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="2")
    killed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            f"paths.log_dir={tmp_path / 'b'}",
            *common,
            data,
            "+callbacks.kill._target_=tests.helpers.HardKillAtStep",
            "+callbacks.kill.step=7",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == 17, killed.stderr[-3000:]
    (crashed,) = _runs(tmp_path / "b")
    assert torch.load(crashed / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4

    run_train([*common, data, "ckpt_path=last"], tmp_path / "b")
    resumed = [r for r in _runs(tmp_path / "b") if r != crashed][0]

    a = torch.load(full / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 12
    worst = max(
        (a["state_dict"][k] - b["state_dict"][k]).abs().max().item() for k in a["state_dict"]
    )
    assert worst <= 1e-6, worst

    loss_full = column(read_metrics(full), "train/loss")
    loss_resumed = column(read_metrics(resumed), "train/loss")
    assert len(loss_full) == 12 and len(loss_resumed) == 8
    assert max(abs(x - y) for x, y in zip(loss_full[4:], loss_resumed)) <= 1e-6

    # The resumed run continues the crashed run's wandb run.
    assert (resumed / "wandb_id.txt").read_text() == (crashed / "wandb_id.txt").read_text()
