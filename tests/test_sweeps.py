"""Hydra sweeps: basic multirun with a failing trial, and an Optuna search, on tiny trials."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import yaml

from tests.conftest import ROOT
from wavecast.run import objective_value


def test_objective_value_turns_nan_and_missing_into_worst():
    assert objective_value({"val/psnr": float("nan")}, "val/psnr", "max") == -math.inf
    assert objective_value({"val/loss": float("nan")}, "val/loss", "min") == math.inf
    assert objective_value({}, "val/loss", "min") == math.inf
    assert objective_value({"val/loss": 0.25}, "val/loss") == 0.25
    assert objective_value({"val/loss": 0.25}, None) is None


def _multirun(args: list[str], log_dir, ok: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="2")
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", f"paths.log_dir={log_dir}", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert (proc.returncode == 0) == ok, proc.stderr[-4000:]
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
    proc = _multirun(
        [
            *TINY,
            f"data.root={synthetic_kitti}",
            "model.optimizer.lr=1e-3,-1.0,2e-3",
            "logger=wandb",
            "logger.wandb.offline=true",
        ],
        tmp_path,
        ok=False,  # a failed trial makes the sweep exit non-zero, after the other trials
    )
    sweep, jobs = _job_dirs(tmp_path)
    assert [j.name for j in jobs] == ["0", "1", "2"]
    assert "model.optimizer.lr=-1.0: must be > 0" in (jobs[1] / "FAILED.txt").read_text()
    assert "1 of 3 trials did not finish ok (jobs 1" in proc.stderr + proc.stdout
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "model.optimizer.lr=-1.0" in rows[1]["overrides"]
    assert rows[1]["objective"] == "" and float(rows[0]["objective"]) > 0
    for ok in (jobs[0], jobs[2]):
        assert not (ok / "FAILED.txt").exists()
        assert (ok / "checkpoints" / "last.ckpt").is_file()
    # Each job logged into its own wandb run.
    ids = [(j / "wandb_id.txt").read_text() for j in (jobs[0], jobs[2])]
    assert len(set(ids)) == 2


def test_optuna_sweep_runs_trials_and_reports_best(tmp_path, synthetic_kitti):
    # The plugin is in the dev extra: a missing one is a failure here, not a skip.
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


def test_sweep_refuses_re_executing_ddp_before_any_trial(tmp_path, synthetic_kitti):
    proc = _multirun(
        [*TINY, f"data.root={synthetic_kitti}", "trainer=ddp_sim", "seed=1,2"], tmp_path, ok=False
    )
    assert "start_method=popen re-executes the script" in proc.stderr + proc.stdout
    assert not list((tmp_path / "train" / "multiruns").glob("*/*/0"))


def test_summary_table_of_a_sweep_directory(tmp_path):
    from wavecast.sweeps import format_table, trial_rows

    for i, (status, value) in enumerate([("ok", 0.5), ("failed", None), ("ok", float("nan"))]):
        job = tmp_path / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- seed={i}\n")
        if status == "failed":
            (job / "FAILED.txt").write_text("Traceback ...")
        else:
            (job / "metrics_final.json").write_text(json.dumps({"val/loss": value}))
    rows = trial_rows(tmp_path, "val/loss")
    assert [(r["job"], r["status"], r["overrides"]) for r in rows] == [
        (0, "ok", "seed=0"), (1, "failed", "seed=1"), (2, "ok", "seed=2"),
    ]  # fmt: skip
    table = format_table(rows, "val/loss").splitlines()
    assert table[2].split()[:3] == ["0", "ok", "0.5"]
    assert table[3].split()[:3] == ["1", "failed", "-"]
    assert table[4].split()[:3] == ["2", "ok", "nan"]
