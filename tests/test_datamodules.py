"""Datasets and LightningDataModules on the synthetic KITTI: documented shapes and value ranges,
closed-form resizing, ground-truth range images through the whole pipeline, name-based splits,
bad input (too short, unknown drive, corrupt file) raising or being skipped and counted."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import RandomSampler, SequentialSampler

from tests.test_kitti_readers import _mini_root, _odometry_from_raw
from wavecast.data.datamodules import RangeSequenceDataModule, VideoClipDataModule, evenly_spaced
from wavecast.data.datasets import KittiCameraClips, KittiRangeSequences
from wavecast.data.errors import DataError
from wavecast.data.kitti_raw import KittiRawDrive
from wavecast.data.range_projection import denormalize_range

TRAIN = ["2011_09_26_drive_0001_sync", "2011_09_28_drive_0001_sync"]
VAL = ["2011_09_26_drive_0002_sync"]
TEST = ["2011_09_26_drive_0005_sync"]
SYNTH = {"generate_if_missing": True, "size": "small", "seed": 0}


def _video_dm(root: Path, **kw) -> VideoClipDataModule:
    args = dict(
        root=root, train_drives=TRAIN, val_drives=VAL, test_drives=TEST, clip_length=5,
        image_size=[32, 96], batch_size=2, stride=3,
    )  # fmt: skip
    args.update(kw)
    return VideoClipDataModule(**args)


# ----------------------------------------------------------------------------------------------
# Camera clips


def test_video_datamodule_batches(synthetic_kitti):
    dm = _video_dm(synthetic_kitti, synthetic=SYNTH, max_clips_per_split={"train": 5, "test": 2})
    assert dm.frame_size == (32, 96) and dm.channels == 3 and dm.clip_length == 5
    dm.prepare_data()  # the dataset is there (same size / seed): reused, not rewritten
    dm.setup("fit")
    assert dm.datasets["test"] is None
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train.sampler, RandomSampler) and isinstance(val.sampler, SequentialSampler)
    assert len(dm.datasets["train"]) == 5  # capped, from 2 x 6 clips (20 frames, T=5, stride 3)
    assert len(dm.datasets["val"]) == 6
    batch = next(iter(train))
    assert batch["video"].shape == (2, 3, 5, 32, 96) and batch["video"].dtype == torch.float32
    assert batch["video"].min() >= -1.0 and batch["video"].max() <= 1.0
    assert set(batch["drive"]) <= set(TRAIN) and batch["start"].dtype == torch.int64
    val_batch = next(iter(val))
    assert val_batch["drive"] == VAL * 2 and val_batch["start"].tolist() == [0, 3]
    dm.setup("test")
    test_items = [dm.datasets["test"][i] for i in range(len(dm.datasets["test"]))]
    assert [it["start"] for it in test_items] == [0, 15]  # evenly spaced: first and last clip


def test_evenly_spaced():
    assert evenly_spaced(10, None) == list(range(10))
    picked = evenly_spaced(10, 3)
    assert len(picked) == 3 and picked[0] == 0 and picked[-1] == 9 and 3 <= picked[1] <= 6
    assert evenly_spaced(3, 8) == [0, 1, 2]
    with pytest.raises(ValueError, match=">= 1"):
        evenly_spaced(5, 0)


def test_camera_clip_resize_is_aspect_preserving(synthetic_kitti):
    drive = KittiRawDrive(synthetic_kitti, TRAIN[0], streams=("image_02",))
    h, w = drive.image_size("image_02")  # 96 x 312
    frames = np.stack([drive.read_image("image_02", 2 + t) for t in range(3)]).astype(np.float32)
    native = KittiCameraClips(
        synthetic_kitti, TRAIN[:1], clip_length=3, stride=2, image_size=(h, w)
    )[1]
    assert native["start"] == 2
    torch.testing.assert_close(
        native["video"], torch.from_numpy(frames).permute(3, 0, 1, 2) / 127.5 - 1
    )
    # half height, narrower target: scale by exactly 1/2 (2x2 box means), centre-crop the width
    target_w = 100
    clip = KittiCameraClips(
        synthetic_kitti, TRAIN[:1], clip_length=3, stride=2, image_size=(h // 2, target_w)
    )[1]
    box = frames.reshape(3, h // 2, 2, w // 2, 2, 3).mean(axis=(2, 4))
    left = (w // 2 - target_w) // 2
    expected = torch.from_numpy(box[:, :, left : left + target_w]).permute(3, 0, 1, 2) / 127.5 - 1
    assert clip["video"].shape == (3, 3, h // 2, target_w)
    torch.testing.assert_close(clip["video"], expected, atol=1.01 / 127.5, rtol=0)  # uint8 rounding


def test_camera_clip_random_crop_is_seeded(synthetic_kitti):
    ds = KittiCameraClips(
        synthetic_kitti, TRAIN[:1], clip_length=2, image_size=(48, 48), crop="random"
    )
    torch.manual_seed(3)
    a = ds[0]["video"]
    torch.manual_seed(3)
    b = ds[0]["video"]
    torch.testing.assert_close(a, b)
    offsets = set()
    for seed in range(6):
        torch.manual_seed(seed)
        offsets.add(ds[0]["video"][0, 0, 0, :4].sum().item())
    assert len(offsets) > 1  # different seeds, different crops


def test_short_drive_unknown_drive_and_skip(synthetic_kitti):
    with pytest.raises(
        DataError,
        match=r"drive 2011_09_26_drive_0002_sync has 20 frames, shorter than one clip of 25",
    ):
        KittiCameraClips(synthetic_kitti, VAL, clip_length=13, frame_step=2)
    with pytest.raises(
        DataError,
        match=r"unknown drive '2011_09_26_drive_0104_sync'; available drives: .*0001_sync",
    ):
        KittiCameraClips(
            synthetic_kitti, ["2011_09_26_drive_0104_sync"], clip_length=2, on_error="skip"
        )
    with pytest.raises(DataError, match=r"no usable clips in drives .* \(skipped: .*has 20 frames"):
        KittiCameraClips(synthetic_kitti, VAL + TRAIN[:1], clip_length=21, on_error="skip")


def test_skip_counts_short_drives(synthetic_kitti, tmp_path, caplog):
    root = _mini_root(synthetic_kitti, tmp_path / "raw", TRAIN[0], ("image_02",), 4)
    src = synthetic_kitti / "2011_09_26" / VAL[0] / "image_02"
    shutil.copytree(src, root / "2011_09_26" / VAL[0] / "image_02")
    with caplog.at_level(logging.WARNING, logger="wavecast.data.datasets"):
        ds = KittiCameraClips(
            root, [TRAIN[0], VAL[0]], clip_length=6, stride=7, image_size=(32, 96), on_error="skip"
        )
    assert len(ds.skipped) == 1 and "has 4 frames, shorter than one clip of 6" in ds.skipped[0]
    assert len(ds) == 3 and {ds[i]["drive"] for i in range(3)} == {VAL[0]}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and TRAIN[0] in warnings[0].getMessage()
    with pytest.raises(
        DataError, match=rf"{TRAIN[0]} has 4 frames, shorter than one clip of 6 frames"
    ):
        KittiCameraClips(root, [TRAIN[0], VAL[0]], clip_length=6, image_size=(32, 96))


def test_corrupt_png_raises_or_is_skipped(synthetic_kitti, tmp_path, caplog):
    root = _mini_root(synthetic_kitti, tmp_path / "raw", TRAIN[0], ("image_02",), 6)
    bad = root / "2011_09_26" / TRAIN[0] / "image_02" / "data" / "0000000001.png"
    bad.write_bytes(bad.read_bytes()[:300])
    ds = KittiCameraClips(root, TRAIN[:1], clip_length=2, stride=2, image_size=(32, 96))
    with pytest.raises(DataError, match=r"0000000001\.png: cannot decode image"):
        ds[0]
    skip = KittiCameraClips(
        root, TRAIN[:1], clip_length=2, stride=2, image_size=(32, 96), on_error="skip"
    )
    with caplog.at_level(logging.WARNING, logger="wavecast.data.datasets"):
        items = [skip[i] for i in range(len(skip))]
    assert [it["start"] for it in items] == [2, 2, 4]  # the clip with the bad frame serves the next
    assert len(skip.skipped) == 1 and "0000000001.png" in skip.skipped[0]
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1


# ----------------------------------------------------------------------------------------------
# Range sequences


def test_range_datamodule_batches_and_ground_truth(synthetic_kitti):
    dm = RangeSequenceDataModule(
        synthetic_kitti,
        train_drives=OmegaConf.create(TRAIN[:1]),  # as Hydra passes them
        val_drives=VAL,
        test_drives=None,
        n_obs=3,
        n_pred=2,
        batch_size=2,
        projection=OmegaConf.create({"height": 64, "width": 512, "method": "spherical"}),
        channels=["range", "reflectance"],
        stride=5,
        synthetic=SYNTH,
    )
    assert dm.frame_size == (64, 512) and dm.channels == 2 and dm.clip_length == 5
    dm.prepare_data()
    dm.setup("fit")
    assert dm.test_dataloader() == []  # no test drives configured
    batch = next(iter(dm.train_dataloader()))
    frames, mask, range_m = batch["frames"], batch["mask"], batch["range_m"]
    assert frames.shape == (2, 5, 2, 64, 512) and frames.dtype == torch.float32
    assert mask.shape == range_m.shape == (2, 5, 1, 64, 512) and mask.dtype == torch.bool
    assert frames.min() >= -1 and frames.max() <= 1
    assert torch.all(frames[:, :, :1][~mask] == -1) and torch.all(range_m[~mask] == -1)
    assert range_m[mask].min() > 1.45 and range_m[mask].max() <= 80.0
    decoded = denormalize_range(frames[:, :, :1])
    torch.testing.assert_close(decoded[mask], range_m[mask], rtol=1e-4, atol=1e-4)
    # range_m against the clean ray-cast range of the same frames (see test_range_projection)
    for b in range(2):
        drive, start = batch["drive"][b], int(batch["start"][b])
        for t in (0, 4):
            with np.load(
                synthetic_kitti / "ground_truth" / drive / "range" / f"{start + t:010d}.npz"
            ) as gt:
                truth = gt["spherical"]
            m = mask[b, t, 0].numpy() & (truth > 0) & (truth <= 80)
            diff = np.abs(range_m[b, t, 0].numpy() - truth)[m]
            assert m.sum() > 20000 and np.median(diff) < 0.1


def test_range_sequences_odometry_layout(synthetic_kitti, tmp_path):
    root, _ = _odometry_from_raw(synthetic_kitti, tmp_path / "odometry", TRAIN[0], 7)
    ds = KittiRangeSequences(
        root, ["00"], n_obs=2, n_pred=1, layout="odometry", projection={"width": 256}
    )
    assert len(ds) == 5
    item = ds[4]
    assert item["drive"] == "00" and item["start"] == 4 and item["frames"].shape == (3, 1, 64, 256)
    raw = KittiRangeSequences(
        synthetic_kitti, TRAIN[:1], n_obs=2, n_pred=1, projection={"width": 256}
    )
    torch.testing.assert_close(item["frames"], raw[4]["frames"])  # same scans, same images
    with pytest.raises(DataError, match=r"unknown sequence '08'; available: 00"):
        KittiRangeSequences(root, ["08"], n_obs=2, n_pred=1, layout="odometry")
    with pytest.raises(DataError, match=r"00 has 7 scans, shorter than one sequence of 10"):
        KittiRangeSequences(root, ["0"], n_obs=5, n_pred=5, layout="odometry")


def test_range_sequences_truncated_scan(synthetic_kitti, tmp_path):
    root = _mini_root(synthetic_kitti, tmp_path / "raw", TRAIN[0], ("velodyne_points",), 4)
    scan = root / "2011_09_26" / TRAIN[0] / "velodyne_points" / "data" / "0000000002.bin"
    scan.write_bytes(scan.read_bytes()[:-9])
    ds = KittiRangeSequences(root, TRAIN[:1], n_obs=1, n_pred=1, projection={"width": 128})
    with pytest.raises(DataError, match=r"0000000002\.bin: \d+ bytes is not a multiple of 16"):
        ds[1]
    skip = KittiRangeSequences(
        root, TRAIN[:1], n_obs=1, n_pred=1, projection={"width": 128}, on_error="skip"
    )
    assert [skip[i]["start"] for i in range(3)] == [0, 0, 0]  # clips 1 and 2 hold frame 2
    assert len(skip.skipped) == 2


# ----------------------------------------------------------------------------------------------
# Configuration errors


def test_missing_root_and_synthetic_request(tmp_path, monkeypatch):
    dm = _video_dm(tmp_path / "no_such_root")
    with pytest.raises(
        DataError,
        match=r"data root .*no_such_root does not exist; pass data.root=/path/to/kitti_raw",
    ):
        dm.prepare_data()
    with pytest.raises(DataError, match="does not exist"):
        dm.setup("fit")
    calls = []

    def fake_generate(root, size="small", seed=0, overwrite=False):
        calls.append((Path(root), size, seed))
        return Path(root)

    import wavecast.data.synthetic as synthetic

    monkeypatch.setattr(synthetic, "generate_synthetic_kitti", fake_generate)
    _video_dm(
        tmp_path / "fresh", synthetic={"generate_if_missing": True, "size": "demo", "seed": 4}
    ).prepare_data()
    assert calls == [(tmp_path / "fresh", "demo", 4)]


def test_bad_configuration_fails_at_construction(synthetic_kitti):
    with pytest.raises(ValueError, match="unknown splits"):
        _video_dm(synthetic_kitti, max_clips_per_split={"training": 2})
    with pytest.raises(ValueError, match="data.source"):
        _video_dm(synthetic_kitti, source="youtube")
    with pytest.raises(ValueError, match="unknown keys"):
        _video_dm(synthetic_kitti, synthetic={"generate": True})
    common = dict(
        root=synthetic_kitti,
        train_drives=TRAIN,
        val_drives=VAL,
        test_drives=TEST,
        n_obs=5,
        n_pred=5,
        batch_size=1,
    )
    with pytest.raises(ValueError, match="normalization must be one of"):
        RangeSequenceDataModule(**common, normalization="zscore")
    with pytest.raises(ValueError, match="data.channels"):
        RangeSequenceDataModule(**common, channels=["range", "intensity"])
    with pytest.raises(TypeError, match="fov_upp"):
        RangeSequenceDataModule(**common, projection={"fov_upp": 3.0})
    with pytest.raises(ValueError, match="list of names"):
        KittiCameraClips(synthetic_kitti, TRAIN[0], clip_length=2)
    dm = _video_dm(
        synthetic_kitti, train_drives=["2011_09_26_drive_0001_sync", "2011_09_26_drive_0099_sync"]
    )
    with pytest.raises(DataError, match="unknown drive '2011_09_26_drive_0099_sync'"):
        dm.setup("fit")
