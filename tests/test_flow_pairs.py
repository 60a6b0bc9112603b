"""Frame pairs with flow: shapes, the ground-truth flow carrying frame t-1 onto frame t (at native
and resized resolution), closed-form resizing, estimated flows, bad input naming the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from wavecast.data.errors import DataError
from wavecast.data.flow_pairs import (
    FlowPairDataModule,
    KittiFlowPairs,
    flow_file,
    read_flow_file,
    resize_crop_pair,
)
from wavecast.warping import warp

TRAIN = ["2011_09_26_drive_0001_sync", "2011_09_28_drive_0001_sync"]
VAL = ["2011_09_26_drive_0002_sync"]
TEST = ["2011_09_26_drive_0005_sync"]


def _dm(root: Path, **kw) -> FlowPairDataModule:
    args = dict(
        root=root, train_drives=TRAIN, val_drives=VAL, test_drives=TEST, image_size=[32, 96],
        batch_size=3,
    )  # fmt: skip
    args.update(kw)
    return FlowPairDataModule(**args)


def _warp_errors(item: dict, flow_scale: float = 1.0) -> tuple[float, float]:
    """Mean |warp(frame t-1, flow) - frame t| and |frame t-1 - frame t| on valid, in-frame pixels."""
    x = item["frames"]
    warped, inside = warp(x[:1], flow_scale * item["flow"][None], return_mask=True)
    mask = inside[0, 0].bool() & item["flow_valid"][0]
    assert mask.float().mean() > 0.5
    warp_err = (warped[0] - x[1]).abs().mean(0)[mask].mean()
    zero_err = (x[0] - x[1]).abs().mean(0)[mask].mean()
    return float(warp_err), float(zero_err)


def test_datamodule_batches(synthetic_kitti: Path) -> None:
    dm = _dm(synthetic_kitti, max_pairs_per_split={"train": 7})
    assert dm.frame_size == (32, 96) and dm.channels == 3 and dm.clip_length == 2
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 7  # capped, from 2 drives x 19 pairs
    assert len(dm.datasets["val"]) == 19  # 20 frames -> 19 consecutive pairs
    batch = next(iter(dm.val_dataloader()))
    assert batch["frames"].shape == (3, 2, 3, 32, 96) and batch["frames"].dtype == torch.float32
    assert batch["frames"].min() >= -1.0 and batch["frames"].max() <= 1.0
    assert batch["flow"].shape == (3, 2, 32, 96) and batch["flow"].dtype == torch.float32
    assert batch["flow_valid"].shape == (3, 1, 32, 96) and batch["flow_valid"].dtype == torch.bool
    assert batch["drive"] == VAL * 3 and batch["start"].tolist() == [0, 1, 2]
    # frame t of pair k is frame t-1 of pair k + 1
    torch.testing.assert_close(batch["frames"][0, 1], batch["frames"][1, 0])


@pytest.mark.parametrize("size", [(96, 312), (64, 192)])
def test_ground_truth_flow_carries_previous_frame_onto_current(synthetic_kitti, size) -> None:
    """(96, 312) is the native size; (64, 192) scales by 2/3 and crops, flow values included."""
    ds = KittiFlowPairs(synthetic_kitti, VAL + TEST, image_size=size)
    ratios, unscaled, reversed_ = [], [], []
    for i in (0, 9, 18, 19, 30, 37):
        item = ds[i]
        assert item["flow"].abs().max() > 2.0  # real motion, not a near-identity
        warp_err, zero_err = _warp_errors(item)
        ratios.append(warp_err / zero_err)
        unscaled.append(_warp_errors(item, flow_scale=1.5)[0] / zero_err)
        reversed_.append(_warp_errors(item, flow_scale=-1.0)[0] / zero_err)
    # The rest: bilinear resampling of the sharp synthetic textures (an exact backward warp with
    # the t -> t-1 flow leaves a similar residual), and the flow read at the target pixel.
    assert max(ratios) < 0.65, ratios
    assert np.mean(ratios) < 0.5, ratios
    assert min(reversed_) > 1.0, reversed_  # sampling at p + flow moves content the wrong way
    if size != (96, 312):  # a flow left at native scale (x 1.5) warps much worse
        assert np.mean(unscaled) > np.mean(ratios) + 0.1, (ratios, unscaled)


def test_resize_crop_pair_closed_form() -> None:
    frames = np.zeros((2, 8, 12, 3), np.uint8)
    flow = np.zeros((8, 12, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.0, -2.0
    valid = np.ones((8, 12), bool)
    valid[2, 5] = False
    out_frames, out_flow, out_valid = resize_crop_pair(frames, (4, 4), flow, valid)
    # cover (4, 4): scale 1/2 -> 4 x 6, centre crop columns 1..4
    assert out_frames.shape == (2, 4, 4, 3) and out_flow.shape == (4, 4, 2)
    np.testing.assert_allclose(out_flow[..., 0], 1.5)
    np.testing.assert_allclose(out_flow[..., 1], -1.0)
    # source pixel (2, 5) lands in output (1, 2) of the 4 x 6 grid = (1, 1) after the crop
    expected = np.ones((4, 4), bool)
    expected[1, 1] = False
    np.testing.assert_array_equal(out_valid, expected)


def test_estimated_flows_approach_ground_truth(synthetic_kitti: Path) -> None:
    gt = KittiFlowPairs(synthetic_kitti, VAL, image_size=(64, 192))
    for source in ("dis", "farneback"):
        est = KittiFlowPairs(synthetic_kitti, VAL, image_size=(64, 192), flow_source=source)
        epe, zero = [], []
        for i in (2, 7, 12):
            a, b = gt[i], est[i]
            torch.testing.assert_close(a["frames"], b["frames"])
            mask = a["flow_valid"][0]
            epe.append((a["flow"] - b["flow"]).norm(dim=0)[mask])
            zero.append(a["flow"].norm(dim=0)[mask])
            # the forward-backward check keeps most pixels
            assert 0.5 < b["flow_valid"].float().mean() <= 1.0
        # medians: the means are dominated by textureless sky and occlusion edges
        epe_med, zero_med = torch.cat(epe).median(), torch.cat(zero).median()
        assert epe_med < 0.5 * zero_med, (source, float(epe_med), float(zero_med))


def _partial_root(src: Path, dst: Path, drop: str | None) -> Path:
    """A root of links into the synthetic KITTI whose ground-truth flow lacks file `drop`."""
    for date in ("2011_09_26", "2011_09_28"):
        os.symlink(src / date, dst / date)
    for drive in VAL + TEST:
        (dst / "ground_truth" / drive / "flow").mkdir(parents=True)
        for f in sorted((src / "ground_truth" / drive / "flow").iterdir()):
            if f.name != drop or drive != VAL[0]:
                os.symlink(f, dst / "ground_truth" / drive / "flow" / f.name)
    return dst


def test_missing_flow_file_names_file_and_source(synthetic_kitti, tmp_path) -> None:
    root = _partial_root(synthetic_kitti, tmp_path, drop="0000000007.npz")
    missing = flow_file(root, VAL[0], 7)
    with pytest.raises(DataError, match=r"0000000007\.npz.*flow_source=ground_truth") as err:
        KittiFlowPairs(root, VAL, image_size=(32, 96))
    assert err.value.path == missing
    # skip: the drive is left out and recorded; the other drive still serves pairs
    ds = KittiFlowPairs(root, VAL + TEST, image_size=(32, 96), on_error="skip")
    assert len(ds) == 19 and len(ds.skipped) == 1 and "0000000007.npz" in ds.skipped[0]
    # estimated flows do not need the files
    assert len(KittiFlowPairs(root, VAL, image_size=(32, 96), flow_source="dis")) == 19


def test_bad_flow_file_and_settings_raise(synthetic_kitti, tmp_path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, flow=np.zeros((4, 5, 2), np.float32))
    with pytest.raises(DataError, match=r"bad\.npz.*'valid'"):
        read_flow_file(bad)
    np.savez(bad, flow=np.zeros((4, 5, 3), np.float32), valid=np.ones((4, 5), bool))
    with pytest.raises(DataError, match=r"bad\.npz.*\[H, W, 2\]"):
        read_flow_file(bad)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"junk\.npz"):
        read_flow_file(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="flow_source"):
        _dm(synthetic_kitti, flow_source="sintel")
    with pytest.raises(ValueError, match="image_02"):
        _dm(synthetic_kitti, camera="image_03")
    with pytest.raises(ValueError, match="raft_weights"):
        _dm(synthetic_kitti, flow_source="raft")
    with pytest.raises(DataError, match=r"nowhere\.pth"):
        _dm(synthetic_kitti, flow_source="raft", raft_weights=str(tmp_path / "nowhere.pth"))
