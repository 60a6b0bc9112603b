"""`train.py` end to end in a subprocess, as a user runs it."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import ROOT


def run_train(
    overrides: list[str], log_dir: Path, timeout: int = 600, threads: int = 2
) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        OMP_NUM_THREADS=str(threads),
        PYTHONUNBUFFERED="1",
    )
    cmd = [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={log_dir}", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


def only_run_dir(log_dir: Path) -> Path:
    runs = sorted((log_dir / "train" / "runs").glob("*/*"))
    assert len(runs) == 1, runs
    return runs[0]


def test_tiny_wfvae_run_writes_checkpoint_metrics_media(tmp_path, synthetic_kitti):
    run_train(["experiment=wfvae_kitti_tiny", f"data.root={synthetic_kitti}"], tmp_path)
    run_dir = only_run_dir(tmp_path)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 12
    assert state["wavecast"]["model"] == "wfvae"
    rows = read_metrics(run_dir)
    loss = column(rows, "train/loss")
    assert len(loss) == 12
    assert sum(loss[-3:]) / 3 < sum(loss[:3]) / 3, loss
    assert column(rows, "val/psnr"), "validation PSNR was not logged"
    assert list((run_dir / "media").glob("*.mp4")) and list((run_dir / "media").glob("*.png"))
    assert (run_dir / "config_tree.yaml").is_file()
    assert (run_dir / "metrics_final.json").is_file()
