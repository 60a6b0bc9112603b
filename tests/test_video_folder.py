"""`data=video_folder`: a user's own videos (made here with PyAV in three aspect ratios and the
codecs this PyAV can encode), split by whole video, frames aspect-kept and cropped to multiples
of 8, every split checked before training, nothing written into the data root."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.test_train_run import run_train
from tests.videos import SIZES, snapshot, video_folder, write_video
from wavecast.data.datamodules import VideoClipDataModule
from wavecast.data.datasets import frame_geometry
from wavecast.data.errors import DataError
from wavecast.data.video import VideoReader
from wavecast.data.video_folder import SizeBatches, VideoFolderDataModule, split_videos

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> tuple[Path, dict[str, tuple[int, int]]]:
    root = tmp_path_factory.mktemp("my_videos")
    return root, video_folder(root)


def test_the_folder_has_every_aspect_ratio_and_several_containers(videos) -> None:
    root, made = videos
    assert set(made.values()) == set(SIZES.values())
    assert len({Path(r).suffix for r in made}) >= 2
    for rel, (h, w) in made.items():
        with VideoReader(root / rel) as reader:
            assert reader.size == (h, w) and reader.n_frames == 12


def test_split_is_by_whole_video_and_follows_the_hash_of_the_relative_path(videos) -> None:
    root, made = videos
    split = split_videos(root)
    # Expected by hand: sorted by SHA-1 of the relative path; 10 % of 5 rounds to 0 -> 1 each.
    order = sorted(made, key=lambda r: hashlib.sha1(r.encode()).hexdigest())
    assert split == {"test": [order[0]], "val": [order[1]], "train": sorted(order[2:])}
    assert split_videos(root) == split  # deterministic


def test_split_does_not_depend_on_the_order_files_were_written(videos, tmp_path) -> None:
    root, made = videos
    for rel in reversed(list(made)):  # the same names, written in the other order
        write_video(tmp_path / rel, made[rel], n=6)
    assert split_videos(tmp_path) == split_videos(root)


def test_named_held_out_videos_and_folders(videos) -> None:
    root, made = videos
    split = split_videos(root, val_videos=["trips"], test_videos=["street.mp4"])
    trips = sorted(r for r in made if r.startswith("trips/"))
    assert split["val"] == trips and split["test"] == ["street.mp4"]
    assert sorted(split["train"]) == sorted(set(made) - set(trips) - {"street.mp4"})


def test_a_missing_named_video_names_the_key_and_the_root(videos) -> None:
    root, _ = videos
    with pytest.raises(DataError, match=r"data\.val_videos: no video 'nope\.mp4'") as err:
        split_videos(root, val_videos=["nope.mp4"])
    assert str(root) in str(err.value) and "street.mp4" in str(err.value)  # lists what exists


def test_an_empty_split_names_the_key_and_the_root(tmp_path) -> None:
    write_video(tmp_path / "a.mp4", SIZES["4:3"], n=6)
    write_video(tmp_path / "b.mp4", SIZES["4:3"], n=6)
    # Two videos: one test, one val by default, nothing left to train on.
    with pytest.raises(DataError, match=r"data\.train_videos: the train split is empty") as err:
        split_videos(tmp_path)
    assert str(tmp_path) in str(err.value)
    split = split_videos(tmp_path, test_fraction=0)  # leave the test split out on purpose
    assert split["test"] == [] and len(split["val"]) == 1 and len(split["train"]) == 1
    with pytest.raises(DataError, match=r"data\.train_videos and data\.val_videos share"):
        split_videos(tmp_path, train_videos=["a.mp4"], val_videos=["a.mp4"], test_fraction=0)


def test_missing_or_empty_root(tmp_path) -> None:
    with pytest.raises(DataError, match=r"data\.root: folder does not exist"):
        split_videos(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("no videos here")
    with pytest.raises(DataError, match=r"data\.root holds no video files"):
        split_videos(tmp_path)


@pytest.mark.parametrize(
    ("size", "short_side", "max_size", "expected"),
    [
        ((720, 1280), 128, None, (128, 224)),  # 16:9: 227.6 -> 224
        ((1280, 720), 128, None, (224, 128)),  # portrait
        ((480, 640), 128, None, (128, 168)),  # 4:3: 170.7 -> 168
        ((720, 1280), 128, 160, (88, 160)),  # long side capped: scale 1/8 -> 90 x 160
        ((100, 203), None, None, (96, 200)),  # as is, cropped to multiples of 8
    ],
)
def test_frame_geometry_closed_forms(size, short_side, max_size, expected) -> None:
    assert frame_geometry(size, short_side, max_size) == expected


def test_clips_keep_the_aspect_ratio_and_equal_an_independent_resize_and_crop(videos) -> None:
    root, made = videos
    dm = VideoFolderDataModule(
        root, clip_length=3, batch_size=1, short_side=32, stride=5, val_fraction=0,
        test_fraction=0,
    )  # fmt: skip
    dm.setup("fit")
    ds = dm.datasets["train"]
    seen = {}
    for i in range(len(ds)):
        item = ds[i]
        seen[item["drive"]] = tuple(item["video"].shape[-2:])
        if item["drive"] == "room.avi" and item["start"] == 5:  # 48 x 64 (4:3)
            with VideoReader(root / "room.avi") as reader:
                frames = reader.read_all()[5:8]
            # scale 32/48: 48 x 64 -> 32 x 43 (INTER_AREA), centre crop of 40 columns from 1
            small = np.stack(
                [cv2.resize(f, (43, 32), interpolation=cv2.INTER_AREA) for f in frames]
            )
            want = torch.from_numpy(small[:, :, 1:41]).permute(3, 0, 1, 2).float() / 127.5 - 1
            torch.testing.assert_close(item["video"], want)
    # 36 x 64 -> 32 x 56.9 -> 32 x 56; 64 x 36 -> 56 x 32; 48 x 64 -> 32 x 40
    by_size = {SIZES["16:9"]: (32, 56), SIZES["portrait"]: (56, 32), SIZES["4:3"]: (32, 40)}
    assert seen == {rel: by_size[hw] for rel, hw in made.items()}


def test_videos_of_different_sizes_are_batched_by_size(videos) -> None:
    root, made = videos
    dm = VideoFolderDataModule(
        root, clip_length=3, batch_size=2, short_side=32, stride=4, val_fraction=0,
        test_fraction=0,
    )  # fmt: skip
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.dataset, SizeBatches)
    starts = []
    for batch in loader:
        assert batch["video"].shape[0] <= 2  # one frame size per batch, or collate would fail
        starts += list(zip(batch["drive"], batch["start"].tolist()))
    # every clip exactly once: 12 frames, clips of 3, stride 4 -> starts 0, 4, 8 per video
    assert sorted(starts) == sorted((rel, s) for rel in made for s in (0, 4, 8))


def test_kitti_video_module_without_train_drives_refuses_to_train(videos) -> None:
    root, _ = videos
    dm = VideoClipDataModule(
        root, None, ["street.mp4"], None, clip_length=3, image_size=(32, 32), batch_size=1,
        source="video_folder",
    )  # fmt: skip
    with pytest.raises(DataError, match=r"data\.train_drives is empty or null.*data=video_folder"):
        dm.setup("fit")


def test_train_py_on_a_video_folder_writes_nothing_into_it(videos, tmp_path) -> None:
    root, made = videos
    before = snapshot(root)
    proc = run_train(
        [
            "experiment=wfvae_kitti",
            "data=video_folder",
            f"data.root={root}",
            "data.short_side=32",
            "data.clip_length=5",
            "data.stride=4",
            "model.net.latent_dim=4",
            "model.net.base_channels=8",
            "model.scheduler.num_warmup_steps=1",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "trainer.precision=32-true",
        ],
        tmp_path,
        threads=1,
    )
    assert snapshot(root) == before  # nothing written into (or touched in) the data root
    (run,) = (tmp_path / "train" / "runs" / "wfvae_kitti").glob("*")
    metrics = json.loads((run / "metrics_final.json").read_text())
    assert metrics["train/generator_steps"] == 2
    assert metrics["val/psnr"] > 0 and metrics["test/psnr"] > 0
    split = split_videos(root)
    out = proc.stdout + proc.stderr
    assert f"val split: 1 videos under {root}" in out
    tree = (run / "config_tree.yaml").read_text()
    assert "VideoFolderDataModule" in tree and split["test"][0] not in split["train"]
    assert any(p.suffix == ".mp4" for p in (run / "media").iterdir())
