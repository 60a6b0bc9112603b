"""The data-throughput benchmark section (scripts/bench/data.py): its ratio arithmetic on made-up
measurements, and the video-folder fixture against the camera frames it is written from."""

from __future__ import annotations

import numpy as np
import pytest

from scripts.bench import data as bd


def _rate(n: int, clips_per_s: float, default: int = 1) -> dict:
    return {
        "data_config": "kitti_video_medium",
        "num_workers": n,
        "default_num_workers": default,
        "batch_size": 2,
        "clip_shape": [3, 9, 64, 192],
        "clips_per_epoch": 312,
        "first_batch_s": 0.1,
        "clips_per_s": clips_per_s,
        "loadavg": (0.0, 0.0, 0.0),
    }


STEP = {
    "experiment": "wfvae_kitti",
    "step_time_s": 0.25,
    "consumption_clips_per_s": 8.0,  # batch 2 / 0.25 s
    "clip_shape": [3, 9, 64, 192],
}


def test_loader_row_ratios():
    rates = [_rate(1, 40.0), _rate(0, 20.0), _rate(2, 30.0)]
    row = bd.loader_row("kitti_camera", "wfvae_kitti", [], rates, STEP)
    assert row["default_num_workers"] == 1
    assert row["clips_per_s"] == {"1": 40.0, "0": 20.0, "2": 30.0}
    assert row["ratio_at_default"] == pytest.approx(5.0)
    assert row["ratio_at_0"] == pytest.approx(2.5)
    assert row["ratio_by_workers"]["2"] == pytest.approx(3.75)
    assert row["meets_3x"] is True
    # 2 clips at 20 clips/s = 0.1 s of loading per 0.25 s step.
    assert row["load_share_at_0"] == pytest.approx(0.1 / 0.35)
    # The same loader with 0 workers as its default falls short of 3x.
    rates0 = [_rate(0, 20.0, default=0), _rate(1, 40.0, default=0)]
    assert bd.loader_row("kitti_camera", "wfvae_kitti", [], rates0, STEP)["meets_3x"] is False
    with pytest.raises(ValueError, match="default num_workers=1"):
        bd.loader_row("kitti_camera", "wfvae_kitti", [], [_rate(0, 20.0)], STEP)


def test_video_folder_round_trips_the_camera_frames(synthetic_kitti, tmp_path):
    from wavecast.data.kitti_raw import KittiRawDrive
    from wavecast.data.video import VideoReader

    name = "2011_09_26_drive_0002_sync"
    made = bd.write_video_folder(synthetic_kitti, [name], tmp_path)
    drive = KittiRawDrive(synthetic_kitti, name, streams=("image_02",))
    pngs = np.stack([drive.read_image("image_02", i) for i in range(drive.n_frames)])
    assert made == {f"{name}.mp4": {"frames": len(pngs), "size": list(pngs.shape[1:3])}}
    with VideoReader(tmp_path / f"{name}.mp4") as reader:
        frames = reader.read_all()
    assert frames.shape == pngs.shape
    # Lossy H.264: close to the PNGs on average, frame for frame (a shifted frame is far off).
    err = np.abs(frames.astype(np.float32) - pngs).mean(axis=(1, 2, 3))
    shifted = np.abs(frames[1:].astype(np.float32) - pngs[:-1]).mean(axis=(1, 2, 3))
    assert err.max() < 6.0 and err.max() < shifted.min()
