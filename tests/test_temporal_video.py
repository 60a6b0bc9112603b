"""`experiment=temporal_video`: the TemporalModule trains and evaluates on a folder of videos
(written here with PyAV) with OpenCV DIS flow."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.test_train_run import run_train
from tests.test_wfvae_eval import run_eval
from tests.videos import snapshot, video_folder, write_video
from wavecast.data.video import VideoReader
from wavecast.data.video_folder import VideoFlowPairDataModule, VideoFlowPairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_pairs_carry_the_dis_flow_of_a_known_motion(tmp_path) -> None:
    # The pattern moves 2 pixels right per frame: the flow t-1 -> t is (2, 0) where it is
    # visible in both frames (the left border enters the view: not consistent there).
    write_video(tmp_path / "pan.mp4", (64, 96), n=4, speed=2.0)
    pairs = VideoFlowPairs(tmp_path, ["pan.mp4"], short_side=None, consistency_check=True)
    assert len(pairs) == 3 and pairs.clip_size(0) == (64, 96)
    item = pairs[1]
    assert item["frames"].shape == (2, 3, 64, 96) and item["start"] == 1
    assert item["flow"].shape == (2, 64, 96) and item["flow_valid"].shape == (1, 64, 96)
    with VideoReader(tmp_path / "pan.mp4") as reader:
        decoded = reader.read_all()[1:3]
    want = torch.from_numpy(decoded).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(item["frames"], want)  # native size: no resize, no crop
    valid = item["flow_valid"][0]
    assert valid.float().mean() > 0.5
    inner = valid.clone()
    inner[:, :8] = False  # away from the entering border and the index stripes
    inner[:8] = False
    dx, dy = (float(np.median(item["flow"][c][inner].numpy())) for c in (0, 1))
    assert dx == pytest.approx(2.0, abs=0.25) and dy == pytest.approx(0.0, abs=0.25)


def test_flow_pair_module_splits_by_video_and_batches_by_size(tmp_path) -> None:
    made = video_folder(tmp_path, n=4)
    dm = VideoFlowPairDataModule(
        tmp_path, batch_size=2, short_side=32, max_pairs_per_split={"train": None}
    )
    dm.setup("fit")
    seen = set()
    for batch in dm.train_dataloader():
        b = batch["frames"].shape[0]
        assert batch["flow"].shape == (b, 2, *batch["frames"].shape[-2:])
        seen |= set(batch["drive"])
    assert seen == set(dm.drives["train"]) and len(seen) == len(made) - 2
    with pytest.raises(ValueError, match="data.flow_source"):
        VideoFlowPairDataModule(tmp_path, batch_size=2, flow_source="ground_truth")


def test_train_and_eval_py_on_a_video_folder(tmp_path) -> None:
    root = tmp_path / "videos"
    video_folder(root, n=6)
    before = snapshot(root)
    run_train(
        [
            "experiment=temporal_video",
            f"data.root={root}",
            "model.vae_ckpt=null",
            "model.vae.latent_dim=4",
            "model.vae.base_channels=8",
            "model.vae.encoder_energy_flow_hidden_size=8",
            "model.vae.decoder_energy_flow_hidden_size=8",
            "model.temporal.refiner_hidden=8",
            "data.short_side=32",
            "data.max_pairs_per_split={train: 8, val: 2, test: 2}",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "callbacks.alpha_warmup.steps=2",
        ],
        tmp_path,
        threads=1,
    )
    (run,) = (tmp_path / "train" / "runs" / "temporal_video").glob("*")
    metrics = json.loads((run / "metrics_final.json").read_text())
    assert np.isfinite(metrics["val/psnr"]) and np.isfinite(metrics["test/temporal_error"])
    assert "flow_source: dis" in (run / "config_tree.yaml").read_text()
    # eval.py needs only the checkpoint: model and data come from the run.
    proc = run_eval([f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], tmp_path)
    assert "eval data: wavecast.data.video_folder.VideoFlowPairDataModule" in (
        proc.stdout + proc.stderr
    )
    (record,) = (tmp_path / "eval").rglob("metrics.json")
    assert np.isfinite(json.loads(record.read_text())["metrics"]["test/psnr"])
    assert snapshot(root) == before  # nothing written into the video folder
