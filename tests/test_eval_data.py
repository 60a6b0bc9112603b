"""`eval.py ckpt_path=<run>/checkpoints/...` evaluates on the data the run was trained with."""

from __future__ import annotations

import json
import shutil

from tests.test_train_run import run_train
from tests.test_wfvae_eval import run_eval


def test_eval_uses_the_runs_data_unless_overridden(tmp_path, synthetic_kitti):
    # The run trains on a copy of the synthetic KITTI elsewhere; eval.py is given no data.root.
    root = tmp_path / "elsewhere"
    shutil.copytree(synthetic_kitti, root)
    run_train(["experiment=wfvae_kitti_tiny", f"data.root={root}", "trainer.max_steps=2"], tmp_path)
    (run,) = (tmp_path / "train" / "runs" / "wfvae_kitti_tiny").glob("*")
    ckpt = run / "checkpoints" / "last.ckpt"
    proc = run_eval(["experiment=wfvae_kitti_tiny", f"ckpt_path={ckpt}"], tmp_path)
    out = proc.stdout + proc.stderr
    assert "evaluating on the data of the checkpoint's run" in out and str(root) in out
    (metrics,) = (tmp_path / "eval").rglob("metrics.json")
    assert json.loads(metrics.read_text())["metrics"]["test/psnr"] > 0
    # A data override on the command line wins.
    proc = run_eval(
        ["experiment=wfvae_kitti_tiny", f"ckpt_path={ckpt}", f"data.root={synthetic_kitti}"],
        tmp_path,
    )
    assert "from this command's config" in proc.stdout + proc.stderr
