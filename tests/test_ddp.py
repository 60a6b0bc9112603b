"""Real multi-process DDP (2 CPU processes, gloo) as a subprocess of train.py for every tiny
experiment -- never `strategy=ddp` inside the pytest process (Lightning's process watcher can kill
the whole test run)."""

from __future__ import annotations

import collections

import pytest
import torch

from tests.conftest import CONFIG_DIR
from tests.test_train_run import only_run_dir, run_train

TINY = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*_tiny.yaml"))


@pytest.mark.parametrize("experiment", TINY)
def test_ddp_sim_runs_tiny_experiment(experiment, tmp_path, synthetic_kitti):
    proc = run_train(
        [
            f"experiment={experiment}",
            f"data.root={synthetic_kitti}",
            "trainer=ddp_sim",
            "data.batch_size=4",
            "callbacks.rich_progress_bar=null",
        ],
        tmp_path,
        # One thread per rank: two ranks x two threads oversubscribe the 2 cores badly.
        threads=1,
    )
    run_dir = only_run_dir(tmp_path)
    state = torch.load(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert state["global_step"] > 0
    # Rank 1 re-executed train.py into the same run directory, with its own log file.
    assert (run_dir / "train_rank1.log").is_file()
    assert "GLOBAL_RANK: 1" in (run_dir / "train_rank1.log").read_text()
    # Rank-aware logging: no INFO line printed twice to the console.
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "Instantiating" in ln]
    assert lines and max(collections.Counter(lines).values()) == 1
    # Side effects only on rank 0: one config tree, one metrics file, no second run directory.
    assert len(list((tmp_path / "train" / "runs").glob("*/*"))) == 1
    assert (run_dir / "config_tree.yaml").is_file() and (run_dir / "metrics_final.json").is_file()
