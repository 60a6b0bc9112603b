"""KITTI raw / odometry readers and calibration parsing, against the synthetic KITTI's ground truth
(poses.txt, the manifest) and against hand-written files (the published 2011_09_26 P_rect_02).
Bad input must raise DataError naming the file, folder or drive at fault."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from wavecast.data.calib import parse_calib_text, read_calib_file
from wavecast.data.errors import DataError
from wavecast.data.kitti_odometry import ODOMETRY_SPLITS, KittiOdometrySequence
from wavecast.data.kitti_raw import (
    KittiRawDrive,
    find_drive,
    list_drives,
    read_png,
    read_velodyne_bin,
    relative_to_first,
)

DRIVE = "2011_09_26_drive_0001_sync"
OTHER_DATE_DRIVE = "2011_09_28_drive_0001_sync"

# The published calib_cam_to_cam.txt lines of 2011_09_26 (data.md), plus its calib_time line.
REAL_CAM_TO_CAM = """calib_time: 09-Jan-2012 13:57:47
corner_dist: 9.950000e-02
S_rect_02: 1.242000e+03 3.750000e+02
R_rect_00: 9.999239e-01 9.837760e-03 -7.445048e-03 -9.869795e-03 9.999421e-01 -4.278459e-03 7.402527e-03 4.351614e-03 9.999631e-01
P_rect_02: 7.215377e+02 0.000000e+00 6.095593e+02 4.485728e+01 0.000000e+00 7.215377e+02 1.728540e+02 2.163791e-01 0.000000e+00 0.000000e+00 1.000000e+00 2.745884e-03
"""


def _gt_poses(root: Path, drive: str) -> np.ndarray:
    rows = np.loadtxt(root / "ground_truth" / drive / "poses.txt", ndmin=2).reshape(-1, 3, 4)
    out = np.tile(np.eye(4), (len(rows), 1, 1))
    out[:, :3] = rows
    return out


def _mini_root(src: Path, dst: Path, drive: str, streams: tuple[str, ...], n_frames: int) -> Path:
    """Copy the first `n_frames` of some streams of one synthetic drive into a new raw root."""
    date = drive[:10]
    (dst / date).mkdir(parents=True)
    for f in (src / date).glob("calib_*.txt"):
        shutil.copy(f, dst / date / f.name)
    for stream in streams:
        s, d = src / date / drive / stream, dst / date / drive / stream
        (d / "data").mkdir(parents=True)
        files = sorted((s / "data").iterdir())[:n_frames]
        for f in files:
            shutil.copy(f, d / "data" / f.name)
        for ts in s.glob("timestamps*.txt"):
            (d / ts.name).write_text("\n".join(ts.read_text().splitlines()[:n_frames]) + "\n")
    return dst


# ----------------------------------------------------------------------------------------------
# Calibration files


def test_calib_parses_real_p_rect_02_and_keeps_text(tmp_path):
    path = tmp_path / "calib_cam_to_cam.txt"
    path.write_text(REAL_CAM_TO_CAM)
    calib = read_calib_file(path)
    expected = np.array(
        [
            [721.5377, 0, 609.5593, 44.85728],
            [0, 721.5377, 172.854, 0.2163791],
            [0, 0, 1, 0.002745884],
        ]
    )
    np.testing.assert_allclose(calib.matrix("P_rect_02", (3, 4)), expected, rtol=0, atol=1e-9)
    assert calib["calib_time"] == "09-Jan-2012 13:57:47"
    assert calib.matrix("S_rect_02", (2,)).tolist() == [1242.0, 375.0]
    with pytest.raises(DataError, match=r"calib_cam_to_cam\.txt.*'P_rect_02'.*16 numbers"):
        calib.matrix("P_rect_02", (4, 4))
    with pytest.raises(DataError, match=r"calib_cam_to_cam\.txt.*no calibration entry 'P_rect_03'"):
        calib.matrix("P_rect_03", (3, 4))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("P0: 1 2 3\nthis line has no colon\n", r"bad\.txt: line 2: expected 'key: values'"),
        ("P0: 1 2 3\nP1: 1.0 abc 2.0\n", r"bad\.txt: line 2: key 'P1' mixes numbers and text"),
        ("P0: 1 2\nP0: 3 4\n", r"bad\.txt: line 2: duplicate key 'P0'"),
        ("Tr: 1 nan 3\n", r"bad\.txt: line 1: key 'Tr' holds non-finite"),
    ],
)
def test_calib_errors_name_file_and_line(text, message):
    with pytest.raises(DataError, match=message):
        parse_calib_text(text, "some/dir/bad.txt")


def test_calib_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.txt: calibration file not found"):
        read_calib_file(tmp_path / "nothere.txt")


# ----------------------------------------------------------------------------------------------
# KITTI raw on the synthetic dataset


def test_raw_drive_streams_sizes_and_calibration(synthetic_kitti):
    manifest = json.loads((synthetic_kitti / "SYNTHETIC.json").read_text())
    names = [d.name for d in list_drives(synthetic_kitti)]
    assert sorted(names) == sorted(manifest["drives"])
    for name in (DRIVE, OTHER_DATE_DRIVE):
        info = manifest["drives"][name]
        drive = KittiRawDrive(synthetic_kitti, name)
        assert drive.n_frames == info["n_frames"]
        w, h = info["image_size"]["image_02"]
        assert drive.image_size("image_02") == (h, w)
        img = drive.read_image("image_02", 3)
        assert img.shape == (h, w, 3) and img.dtype == np.uint8
        assert drive.read_image("image_00", 3).shape == (h, w, 1)
        np.testing.assert_allclose(drive.calib.P_rect_02, np.array(info["P_rect_02"]), atol=1e-6)
        assert drive.calib.S_rect["image_02"] == (h, w)
        scan = drive.read_velodyne(0)
        assert scan.dtype == np.float32 and scan.shape[1] == 4
        assert scan[:, 3].min() >= 0.0 and scan[:, 3].max() <= 1.0
        stamps = drive.timestamps("velodyne_points")
        dt = np.diff(stamps).astype(np.int64) / 1e9
        np.testing.assert_allclose(dt, 1.0 / info["frame_rate_hz"], atol=2e-3)
        start, end = (
            drive.timestamps("velodyne_points", "start"),
            drive.timestamps("velodyne_points", "end"),
        )
        assert np.all(start < stamps) and np.all(stamps < end)
    # the two dates differ in image size: nothing may assume one size
    a = KittiRawDrive(synthetic_kitti, DRIVE).image_size("image_02")
    b = KittiRawDrive(synthetic_kitti, OTHER_DATE_DRIVE).image_size("image_02")
    assert a != b


def test_drive_name_without_sync_suffix(synthetic_kitti):
    assert KittiRawDrive(synthetic_kitti, DRIVE.removesuffix("_sync")).name == DRIVE


def test_oxts_poses_equal_ground_truth(synthetic_kitti):
    """KITTI's Mercator oxts -> pose conversion, moved to the velodyne through calib_imu_to_velo,
    reproduces the generator's world_T_velodyne (both relative to frame 0)."""
    for name in (DRIVE, OTHER_DATE_DRIVE):
        drive = KittiRawDrive(synthetic_kitti, name)
        ours = drive.poses("velodyne", relative=True)
        gt = relative_to_first(_gt_poses(synthetic_kitti, name))
        assert ours.shape == gt.shape == (drive.n_frames, 4, 4)
        # translation: oxts lat/lon are written to 1e-12 deg (~1e-7 m); measured 1e-6 m
        np.testing.assert_allclose(ours[:, :3, 3], gt[:, :3, 3], rtol=0, atol=1e-4)
        np.testing.assert_allclose(ours[:, :3, :3], gt[:, :3, :3], rtol=0, atol=1e-6)
        assert np.linalg.norm(gt[-1, :3, 3]) > 5.0  # the ego really moved
        imu = drive.poses("imu", relative=False)
        assert abs(imu[0, 2, 3] - drive.oxts(0).alt) < 1e-9


# ----------------------------------------------------------------------------------------------
# Bad input


def test_unknown_drive_lists_available(synthetic_kitti):
    with pytest.raises(
        DataError, match=r"unknown drive '2011_09_26_drive_0099_sync'.*2011_09_26_drive_0001_sync"
    ):
        find_drive(synthetic_kitti, "2011_09_26_drive_0099_sync")
    with pytest.raises(DataError, match="not a KITTI raw drive name"):
        find_drive(synthetic_kitti, "drive_1")


def test_missing_root_and_stream(synthetic_kitti, tmp_path):
    with pytest.raises(DataError, match=r"nowhere: KITTI raw root does not exist"):
        list_drives(tmp_path / "nowhere")
    root = _mini_root(synthetic_kitti, tmp_path / "raw", DRIVE, ("image_02",), 4)
    with pytest.raises(DataError, match=rf"{DRIVE}/velodyne_points: missing stream folder"):
        KittiRawDrive(root, DRIVE, streams=("image_02", "velodyne_points"))
    drive = KittiRawDrive(root, DRIVE)
    assert drive.streams == ("image_02",) and drive.n_frames == 4
    with pytest.raises(DataError, match="velodyne_points: stream 'velodyne_points' was not opened"):
        drive.read_velodyne(0)


def test_frame_count_mismatch_between_streams(synthetic_kitti, tmp_path):
    root = _mini_root(synthetic_kitti, tmp_path / "raw", DRIVE, ("image_02", "velodyne_points"), 5)
    bins = root / DRIVE[:10] / DRIVE / "velodyne_points"
    (bins / "data" / "0000000004.bin").unlink()
    (bins / "timestamps.txt").write_text(
        "".join((bins / "timestamps.txt").read_text().splitlines(True)[:4])
    )
    with pytest.raises(
        DataError,
        match=rf"{DRIVE}: streams hold different numbers of frames \(image_02: 5, velodyne_points: 4\)",
    ):
        KittiRawDrive(root, DRIVE)
    (root / DRIVE[:10] / DRIVE / "image_02" / "data" / "0000000002.png").unlink()
    with pytest.raises(
        DataError, match=r"image_02/data: frames are not numbered 0\.\.3: missing \[2\]"
    ):
        KittiRawDrive(root, DRIVE, streams=("image_02",))


def test_timestamps_count_mismatch(synthetic_kitti, tmp_path):
    root = _mini_root(synthetic_kitti, tmp_path / "raw", DRIVE, ("image_02",), 5)
    ts = root / DRIVE[:10] / DRIVE / "image_02" / "timestamps.txt"
    ts.write_text("".join(ts.read_text().splitlines(True)[:3]))
    with pytest.raises(DataError, match=r"image_02/timestamps\.txt: 3 timestamps but 5 frames"):
        KittiRawDrive(root, DRIVE)


def test_truncated_and_non_finite_velodyne(synthetic_kitti, tmp_path):
    src = synthetic_kitti / DRIVE[:10] / DRIVE / "velodyne_points" / "data" / "0000000000.bin"
    raw = src.read_bytes()
    bad = tmp_path / "0000000000.bin"
    bad.write_bytes(raw[:-6])
    with pytest.raises(
        DataError, match=rf"0000000000\.bin: {len(raw) - 6} bytes is not a multiple of 16"
    ):
        read_velodyne_bin(bad)
    pts = np.frombuffer(raw, dtype=np.float32).reshape(-1, 4).copy()
    pts[7, 1] = np.nan
    pts.tofile(bad)
    with pytest.raises(DataError, match=r"0000000000\.bin: 1 of \d+ points hold NaN"):
        read_velodyne_bin(bad)
    np.testing.assert_array_equal(
        read_velodyne_bin(src), np.fromfile(src, dtype=np.float32).reshape(-1, 4)
    )


def test_corrupt_and_truncated_png(synthetic_kitti, tmp_path):
    src = synthetic_kitti / DRIVE[:10] / DRIVE / "image_02" / "data" / "0000000000.png"
    raw = src.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"truncated\.png: cannot decode image"):
        read_png(truncated)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png at all" * 100)
    with pytest.raises(DataError, match=r"corrupt\.png: cannot decode image"):
        read_png(corrupt)
    with pytest.raises(DataError, match=r"absent\.png: image not found"):
        read_png(tmp_path / "absent.png")


# ----------------------------------------------------------------------------------------------
# KITTI odometry (a synthetic drive rewritten in the odometry layout)


def _odometry_from_raw(
    raw_root: Path, dst: Path, drive_name: str, n: int
) -> tuple[Path, np.ndarray]:
    drive = KittiRawDrive(raw_root, drive_name)
    seq = dst / "sequences" / "00"
    (seq / "velodyne").mkdir(parents=True)
    (seq / "image_2").mkdir()
    for i in range(n):
        shutil.copy(drive.frame_path("velodyne_points", i), seq / "velodyne" / f"{i:06d}.bin")
        shutil.copy(drive.frame_path("image_02", i), seq / "image_2" / f"{i:06d}.png")
    tr = drive.calib.T_velo_to_rect  # velodyne -> rectified camera 0, as odometry's Tr
    lines = [
        f"P{i}: " + " ".join(f"{v:.12e}" for v in drive.calib.P_rect(f"0{i}").ravel())
        for i in range(4)
    ]
    lines.append("Tr: " + " ".join(f"{v:.12e}" for v in tr[:3].ravel()))
    (seq / "calib.txt").write_text("\n".join(lines) + "\n")
    (seq / "times.txt").write_text("".join(f"{0.1 * i:.6e}\n" for i in range(n)))
    world_T_velo = _gt_poses(raw_root, drive_name)[:n]
    cam = relative_to_first(world_T_velo @ np.linalg.inv(tr))
    (dst / "poses").mkdir()
    (dst / "poses" / "00.txt").write_text(
        "".join(" ".join(f"{v:.12e}" for v in p[:3].ravel()) + "\n" for p in cam)
    )
    return dst, world_T_velo


def test_odometry_sequence(synthetic_kitti, tmp_path):
    root, world_T_velo = _odometry_from_raw(synthetic_kitti, tmp_path / "odometry", DRIVE, 6)
    seq = KittiOdometrySequence(root, 0)
    assert seq.name == "00" and seq.n_frames == 6 and seq.streams == ("image_2", "velodyne")
    raw = KittiRawDrive(synthetic_kitti, DRIVE)
    np.testing.assert_array_equal(seq.read_velodyne(3), raw.read_velodyne(3))
    np.testing.assert_array_equal(seq.read_image(2), raw.read_image("image_02", 2))
    np.testing.assert_allclose(seq.P(2), raw.calib.P_rect_02, atol=1e-9)
    np.testing.assert_allclose(seq.times(), 0.1 * np.arange(6), atol=1e-9)
    # camera-0 poses @ Tr = velodyne poses: equal to the ground truth relative to frame 0
    np.testing.assert_allclose(
        relative_to_first(seq.velodyne_poses()), relative_to_first(world_T_velo), atol=1e-6
    )
    assert ODOMETRY_SPLITS == {
        "train": ("00", "01", "02", "03", "04", "05"),
        "val": ("06", "07"),
        "test": ("08", "09", "10"),
    }


def test_odometry_bad_input(synthetic_kitti, tmp_path):
    root, _ = _odometry_from_raw(synthetic_kitti, tmp_path / "odometry", DRIVE, 4)
    with pytest.raises(DataError, match=r"sequences: unknown sequence '08'; available: 00"):
        KittiOdometrySequence(root, "08")
    (root / "sequences" / "00" / "velodyne" / "000003.bin").unlink()
    with pytest.raises(DataError, match=r"00/velodyne: 3 frames but times\.txt has 4 lines"):
        KittiOdometrySequence(root, "00")
    (root / "poses" / "00.txt").unlink()
    seq = KittiOdometrySequence(root, "00", streams=("image_2",))
    assert not seq.has_poses
    with pytest.raises(DataError, match=r"poses/00\.txt: no ground-truth poses"):
        seq.poses()
