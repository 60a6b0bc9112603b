"""Hydra sweeps: basic multirun with a failing trial, and an Optuna search, on tiny trials."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT
from wavecast.run import objective_value


def test_objective_value_turns_nan_and_missing_into_worst():
    assert objective_value({"val/psnr": float("nan")}, "val/psnr", "max") == -math.inf
    assert objective_value({"val/loss": float("nan")}, "val/loss", "min") == math.inf
    assert objective_value({}, "val/loss", "min") == math.inf
    assert objective_value({"val/loss": 0.25}, "val/loss") == 0.25
    assert objective_value({"val/loss": 0.25}, None) is None


def _multirun(args: list[str], log_dir) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="2")
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", f"paths.log_dir={log_dir}", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _job_dirs(log_dir) -> list:
    (sweep,) = (log_dir / "train" / "multiruns" / "wfvae_kitti_tiny").glob("*")
    return sweep, sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())


TINY = [
    "experiment=wfvae_kitti_tiny",
    "trainer.max_steps=4",
    "trainer.max_epochs=1",
    "callbacks.rich_progress_bar=null",
]


def test_basic_sweep_records_failing_trial_and_goes_on(tmp_path, synthetic_kitti):
    _multirun(
        [
            *TINY,
            f"data.root={synthetic_kitti}",
            "model.optimizer.lr=1e-3,-1.0,2e-3",
            "logger=wandb",
            "logger.wandb.offline=true",
        ],
        tmp_path,
    )
    _, jobs = _job_dirs(tmp_path)
    assert [j.name for j in jobs] == ["0", "1", "2"]
    assert "Invalid learning rate" in (jobs[1] / "FAILED.txt").read_text()
    for ok in (jobs[0], jobs[2]):
        assert not (ok / "FAILED.txt").exists()
        assert (ok / "checkpoints" / "last.ckpt").is_file()
    # Each job logged into its own wandb run.
    ids = [(j / "wandb_id.txt").read_text() for j in (jobs[0], jobs[2])]
    assert len(set(ids)) == 2


def test_optuna_sweep_runs_trials_and_reports_best(tmp_path, synthetic_kitti):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    _multirun(
        [
            *TINY,
            f"data.root={synthetic_kitti}",
            "hparams_search=wfvae_optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2",
        ],
        tmp_path,
    )
    sweep, jobs = _job_dirs(tmp_path)
    assert len(jobs) == 2
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert "model.optimizer.lr" in best["best_params"]
    assert math.isfinite(best["best_value"])
