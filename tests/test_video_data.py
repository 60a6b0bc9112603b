"""Video clip data: train-split augmentation, and what the data module may write."""

from __future__ import annotations

import torch

from wavecast.data.datamodules import HorizontalFlip, VideoClipDataModule


def test_horizontal_flip_mirrors_about_half_of_the_items() -> None:
    video = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(3, 2, 4, 5)
    ds = HorizontalFlip([{"video": video, "drive": "d", "start": 0}] * 200)
    torch.manual_seed(0)
    flipped = 0
    for i in range(len(ds)):
        out = ds[i]["video"]
        if torch.equal(out, video):
            continue
        assert torch.equal(out[..., 0], video[..., -1])  # left column <- right column
        assert torch.equal(out.flip(-1), video)
        flipped += 1
    assert 70 < flipped < 130


def test_flip_applies_to_the_train_split_only(synthetic_kitti) -> None:
    dm = VideoClipDataModule(
        synthetic_kitti,
        ["2011_09_26_drive_0001_sync"],
        ["2011_09_26_drive_0002_sync"],
        None,
        clip_length=5,
        image_size=(64, 192),
        batch_size=1,
        train_flip=True,
    )
    dm.setup("fit")
    assert isinstance(dm.datasets["train"], HorizontalFlip)
    assert not isinstance(dm.datasets["val"], HorizontalFlip)
    assert len(dm.datasets["train"]) == 16  # 20 frames, clips of 5, stride 1


def test_synthetic_generation_never_writes_into_a_foreign_folder(tmp_path) -> None:
    import pytest

    from wavecast.data.errors import DataError

    videos = tmp_path / "my_videos"
    videos.mkdir()
    (videos / "holiday.mp4").write_bytes(b"not really a video")
    dm = VideoClipDataModule(
        videos, ["a"], ["b"], None, clip_length=5, image_size=(64, 192), batch_size=1,
        synthetic={"generate_if_missing": True, "size": "small", "seed": 0},
    )  # fmt: skip
    with pytest.raises(DataError, match="data.synthetic=null"):
        dm.prepare_data()
    assert sorted(p.name for p in videos.iterdir()) == ["holiday.mp4"]
