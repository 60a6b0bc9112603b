"""SIGTERM (preemption) and SIGINT mid-run: last.ckpt saved at the signalled step, non-zero exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from tests.test_train_run import run_train


def _train(tmp_path, synthetic_kitti, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={tmp_path}",
         "experiment=wfvae_kitti_tiny", f"data.root={synthetic_kitti}",
         "callbacks.last_checkpoint.every_n_train_steps=null", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        # A job started in the background of a non-interactive shell inherits SIGINT ignored,
        # and Python then installs no KeyboardInterrupt handler: give the child the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 1)])
def test_signal_saves_the_step_and_exits_non_zero(tmp_path, synthetic_kitti, signum, code):
    proc = _train(
        tmp_path, synthetic_kitti, "+callbacks.sig._target_=tests.helpers.SignalAtStep",
        "+callbacks.sig.step=6", f"+callbacks.sig.signum={int(signum)}",
    )  # fmt: skip
    assert proc.returncode == code, proc.stderr[-3000:]
    (run,) = sorted((tmp_path / "train" / "runs" / "wfvae_kitti_tiny").glob("*"))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # Mid-epoch (4 steps per epoch, periodic saves off): only the signal handler saved step 6.
    assert ckpt["global_step"] == 6
    if signum == signal.SIGTERM:
        assert json.loads((run / "metrics_final.json").read_text())["status"] == "preempted"
        # The saved state resumes and the run completes its 12 steps.
        run_train(["experiment=wfvae_kitti_tiny", f"data.root={synthetic_kitti}",
                   "ckpt_path=last"], tmp_path)  # fmt: skip
        runs = sorted((tmp_path / "train" / "runs" / "wfvae_kitti_tiny").glob("*"))
        done = torch.load(runs[-1] / "checkpoints" / "last.ckpt", weights_only=False)
        assert done["global_step"] == 12
