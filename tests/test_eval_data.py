"""`eval.py ckpt_path=<run>/checkpoints/...` evaluates with the model and data config of the run
(its config_tree.yaml), with the command line's own model.* / data.* keys on top, says which, and
writes the reconstructions of the first test batch as media."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.test_stdiff_training import check_ok, run_script
from tests.test_train_run import run_train
from tests.test_wfvae_eval import run_eval


@pytest.fixture(scope="module")
def wfvae_run(tmp_path_factory, synthetic_kitti):
    """A 2-step tiny WF-VAE run on a copy of the synthetic KITTI elsewhere; its run dir."""
    log_dir = tmp_path_factory.mktemp("wfvae_run")
    root = log_dir / "elsewhere"
    shutil.copytree(synthetic_kitti, root)
    run_train(["experiment=wfvae_kitti_tiny", f"data.root={root}", "trainer.max_steps=2"], log_dir)
    (run,) = (log_dir / "train" / "runs" / "wfvae_kitti_tiny").glob("*")
    return run, root


def _eval_record(log_dir):
    (metrics,) = (log_dir / "eval").rglob("metrics.json")
    return metrics.parent, json.loads(metrics.read_text())


def test_eval_without_experiment_uses_the_runs_model_and_data(tmp_path, wfvae_run):
    run, root = wfvae_run
    # No experiment=: the default model config (latent_dim 8, base 32) differs from the run's.
    proc = run_eval([f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], tmp_path)
    out = proc.stdout + proc.stderr
    assert "eval model: wfvae.module.WFVAEModule from the checkpoint's run" in out
    assert f"eval data: wavecast.data.datamodules.VideoClipDataModule, root {root}" in out
    # No weights for the training loss's LPIPS term: said in evaluation words.
    assert "the perceptual loss term is off" not in out
    assert "the evaluation loss (test/loss, val/loss) leaves out the perceptual term" in out
    eval_dir, record = _eval_record(tmp_path)
    assert record["config_from"]["model"].startswith("the checkpoint's run")
    assert record["metrics"]["test/psnr"] > 0
    tree = (eval_dir / "config_tree.yaml").read_text()
    assert "latent_dim: 4" in tree and str(root) in tree  # the run's, not eval.yaml's defaults
    media = sorted(p.name for p in (eval_dir / "media").iterdir())
    assert any(n.startswith("test_reconstruction_0") and n.endswith(".mp4") for n in media)


def test_command_line_keys_apply_on_top_of_the_runs_config(tmp_path, wfvae_run, synthetic_kitti):
    run, _ = wfvae_run
    ckpt = run / "checkpoints" / "last.ckpt"
    proc = run_eval(
        [f"ckpt_path={ckpt}", f"data.root={synthetic_kitti}", "data.max_clips_per_split={test: 1}"],
        tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert "with data.root, data.max_clips_per_split from this command's config" in out
    eval_dir, record = _eval_record(tmp_path)
    tree = (eval_dir / "config_tree.yaml").read_text()
    assert f"root: {synthetic_kitti}\n" in tree and "latent_dim: 4" in tree
    assert "data.root" in record["config_from"]["data"]


def test_eval_of_an_stdiff_run_needs_no_experiment(tmp_path, synthetic_kitti):
    check_ok(
        run_script(
            "train.py",
            ["experiment=stdiff_kitti_range_tiny", f"data.root={synthetic_kitti}",
             "trainer.max_steps=3", "callbacks.media.every_n_epochs=100"],
            tmp_path,
        )
    )  # fmt: skip
    (ckpt,) = (tmp_path / "train" / "runs").rglob("last.ckpt")
    proc = run_eval([f"ckpt_path={ckpt}", "data.max_clips_per_split={test: 1}"], tmp_path)
    assert "eval model: stdiff.module.STDiffModule from the checkpoint's run" in (
        proc.stdout + proc.stderr
    )
    _, record = _eval_record(tmp_path)
    assert record["metrics"]["test/num_sequences"] == 1
