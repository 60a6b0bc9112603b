"""The first hour of a new user: a did-you-mean for mistyped keys, `ckpt_path=last` on a finished
run, no config tree before an error, no run folder left by a failed start, one file for the best
and last checkpoints of the same step, help texts and README commands that work in a clone."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import CONFIG_DIR, ROOT
from tests.test_train_run import run_train
from tests.videos import SIZES, write_video
from wavecast.config import override_hint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["experiment=wfvae_kitti_tiny", "trainer.max_steps=2"]


def _train(overrides, log_dir):
    """train.py in a subprocess that may fail: the CompletedProcess."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", WANDB_MODE="offline")
    cmd = [sys.executable, str(ROOT / "train.py"), f"paths.log_dir={log_dir}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _runs(log_dir):
    return sorted((log_dir / "train" / "runs").glob("*/*"))


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ("data.batch_szie=4", "did you mean 'data.batch_size'?"),
        ("trainer.max_stepz=4", "did you mean 'trainer.max_steps'?"),
        ("model.nett.latent_dim=4", "did you mean 'model.net'?"),
        ("sed=3", "did you mean 'seed'?"),
    ],
)
def test_override_hint_names_the_closest_existing_key(override, hint) -> None:
    text = override_hint("train.yaml", ["experiment=wfvae_kitti_tiny", override], CONFIG_DIR)
    assert text is not None and text.endswith(hint)
    assert override_hint("train.yaml", ["experiment=wfvae_kitti_tiny"], CONFIG_DIR) is None


def test_mistyped_key_without_plus_gets_a_did_you_mean(tmp_path, synthetic_kitti) -> None:
    proc = _train([*TINY, f"data.root={synthetic_kitti}", "data.batch_szie=4"], tmp_path)
    assert proc.returncode != 0
    assert "data.batch_szie: no such key; did you mean 'data.batch_size'?" in proc.stderr
    assert not (tmp_path / "train").exists()  # Hydra failed before making a run folder


def test_failed_start_leaves_no_run_folder_and_prints_no_config_tree(tmp_path, synthetic_kitti):
    proc = _train([*TINY, f"data.root={synthetic_kitti}", "data.clip_length=8"], tmp_path)
    assert proc.returncode != 0 and "data.clip_length=8 is not 4n+1" in proc.stderr
    assert "CONFIG" not in proc.stdout  # the error is not buried under the config tree
    assert "removed the run folder" in proc.stdout + proc.stderr
    assert _runs(tmp_path) == []


def test_data_errors_inside_fit_also_leave_no_run_folder(tmp_path) -> None:
    videos = tmp_path / "videos"
    for name in ("a", "b", "c"):
        write_video(videos / f"{name}.mp4", SIZES["4:3"], n=6)
    # clips of 9 frames from 6-frame videos: VideoFolderClips refuses them in setup (inside fit)
    proc = _train(
        [*TINY, "data=video_folder", f"data.root={videos}", "data.short_side=32"], tmp_path
    )
    assert proc.returncode != 0 and "shorter than one clip of 9 frames" in proc.stderr
    assert _runs(tmp_path) == []


def test_last_of_a_finished_run_says_so_and_makes_no_run_folder(tmp_path, synthetic_kitti):
    common = [*TINY, f"data.root={synthetic_kitti}"]
    proc = run_train(common, tmp_path, threads=1)
    assert proc.stdout.count("CONFIG") == 1  # printed once, when the run starts
    (first,) = _runs(tmp_path)
    proc = _train([*common, "ckpt_path=last"], tmp_path)
    assert proc.returncode != 0
    message = proc.stderr
    assert "is at step 2 and trainer.max_steps=2: that run has finished" in message
    assert "raise trainer.max_steps (e.g. ckpt_path=last trainer.max_steps=4)" in message
    assert _runs(tmp_path) == [first]  # no new (empty) run folder to become the newest `last`
    # Raising max_steps extends it.
    run_train([*common, "ckpt_path=last", "trainer.max_steps=4"], tmp_path, threads=1)
    assert len(_runs(tmp_path)) == 2


def test_best_and_last_of_the_same_step_are_one_file_and_resume(tmp_path, synthetic_kitti):
    import torch

    # A monitor that improves at every validation: the best is always the newest step.
    common = ["experiment=wfvae_kitti_tiny", f"data.root={synthetic_kitti}",
              "optimized_metric=train/generator_steps", "optimized_mode=max"]  # fmt: skip
    run_train([*common, "trainer.max_steps=8"], tmp_path, threads=1)
    (run,) = _runs(tmp_path)
    files = sorted((run / "checkpoints").glob("*.ckpt"))
    assert [f.name for f in files] == ["best-epoch001-step000008.ckpt", "last.ckpt"]
    assert os.path.samefile(files[0], files[1]) and files[1].stat().st_nlink == 2
    # last.ckpt still resumes where it should (the epoch-end loop state) and trains on.
    run_train([*common, "trainer.max_steps=12", "ckpt_path=last"], tmp_path, threads=1)
    newest = _runs(tmp_path)[-1]
    ckpt = torch.load(newest / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 12
    # the first run's files are untouched by the second run's saves
    assert torch.load(files[1], map_location="cpu", weights_only=False)["global_step"] == 8


def test_benchmark_help_cites_no_file_a_clone_lacks() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--help"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0
    for path in re.findall(r"[\w./-]+\.(?:md|yaml|py)\b", proc.stdout):
        if "/" in path and not path.startswith("/path"):
            assert (ROOT / path).exists(), path


def test_readme_commands_use_the_venv_interpreter() -> None:
    bare = [
        line
        for line in (ROOT / "README.md").read_text().splitlines()
        if re.match(r"\s*(srun\s+)?python\s", line)
    ]
    assert bare == []


def test_same_weights_compares_extra_states_too(tmp_path) -> None:
    import torch

    from wavecast.checkpoints import _same_weights

    def save(name, w, extra):
        path = tmp_path / name
        torch.save({"state_dict": {"w": w, "net._extra_state": extra}}, path)
        return path

    w = torch.arange(6.0)
    a = save("a.ckpt", w, {"steps": 3, "scale": [1.0, 2.0]})
    assert _same_weights(a, save("b.ckpt", w.clone(), {"steps": 3, "scale": [1.0, 2.0]}))
    assert not _same_weights(a, save("c.ckpt", w, {"steps": 4, "scale": [1.0, 2.0]}))
    assert not _same_weights(a, save("d.ckpt", w + 1, {"steps": 3, "scale": [1.0, 2.0]}))
