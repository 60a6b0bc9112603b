"""Synthetic KITTI raw: layout, determinism, LiDAR storage order, and ground truth vs the streams.

The checks parse the written files themselves (no dependency on the data readers) and compare
them with closed-form facts (ground plane height, KITTI's Mercator oxts->pose conversion) or
with the ground truth the generator writes beside the streams.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from wavecast.data.synthetic import SYNTHETIC_DRIVES, generate_synthetic_kitti
from wavecast.data.synthetic.lidar import Scanner
from wavecast.data.synthetic.writer import (
    DRIVES,
    SIZES,
    size_splits,
    write_calibration,
    write_drive,
)

SEED = 3
CAMS = ("image_00", "image_01", "image_02", "image_03")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{9}$")


@pytest.fixture(scope="session")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_kitti(tmp_path_factory.mktemp("synthetic_kitti"), "small", seed=SEED)


@pytest.fixture(scope="session")
def manifest(root: Path) -> dict:
    return json.loads((root / "SYNTHETIC.json").read_text())


def _drive_dir(root: Path, manifest: dict, name: str) -> Path:
    return root / manifest["drives"][name]["date"] / name


def _calib(path: Path) -> dict[str, np.ndarray]:
    out = {}
    for line in path.read_text().splitlines():
        key, value = line.split(":", 1)
        try:
            out[key] = np.array([float(v) for v in value.split()])
        except ValueError:
            out[key] = value.strip()
    return out


def _rigid(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = r.reshape(3, 3)
    out[:3, 3] = t
    return out


def _poses(path: Path) -> np.ndarray:
    rows = np.loadtxt(path, ndmin=2).reshape(-1, 3, 4)
    out = np.tile(np.eye(4), (len(rows), 1, 1))
    out[:, :3] = rows
    return out


# ----------------------------------------------------------------------------------------------
# Layout


def test_layout_complete(root: Path, manifest: dict) -> None:
    assert manifest["size"] == "small" and manifest["seed"] == SEED
    assert set(manifest["drives"]) == {n for names in SYNTHETIC_DRIVES.values() for n in names}
    assert manifest["splits"] == SYNTHETIC_DRIVES
    assert SYNTHETIC_DRIVES["val"] == ["2011_09_26_drive_0002_sync"]
    assert SYNTHETIC_DRIVES["test"] == ["2011_09_26_drive_0005_sync"]
    sizes = set()
    for name, info in manifest["drives"].items():
        n = info["n_frames"]
        assert n >= 20
        assert name in SYNTHETIC_DRIVES[info["split"]]
        date_dir = root / info["date"]
        calib = _calib(date_dir / "calib_cam_to_cam.txt")
        assert "calib_time" in calib
        for i in range(4):
            for key in ("S", "K", "D", "R", "T", "S_rect", "R_rect", "P_rect"):
                assert f"{key}_0{i}" in calib, f"{key}_0{i} missing"
        for fname, keys in (
            ("calib_velo_to_cam.txt", ("R", "T")),
            ("calib_imu_to_velo.txt", ("R", "T")),
        ):
            c = _calib(date_dir / fname)
            assert "calib_time" in c and all(len(c[k]) == {"R": 9, "T": 3}[k] for k in keys)
        np.testing.assert_allclose(
            calib["P_rect_02"].reshape(3, 4), np.array(info["P_rect_02"]), rtol=0, atol=0
        )

        base = date_dir / name
        w, h = info["image_size"]["image_02"]
        assert tuple(calib["S_rect_02"]) == (w, h)
        sizes.add((w, h))
        for cam in CAMS:
            files = sorted((base / cam / "data").glob("*.png"))
            assert [f.name for f in files] == [f"{i:010d}.png" for i in range(n)]
            img = cv2.imread(str(files[0]), cv2.IMREAD_UNCHANGED)
            assert img.shape[:2] == (h, w)
            assert img.ndim == (3 if cam in ("image_02", "image_03") else 2)
        assert len(list((base / "velodyne_points" / "data").glob("*.bin"))) == n
        assert len(list((base / "oxts" / "data").glob("*.txt"))) == n
        stamp_files = [base / c / "timestamps.txt" for c in (*CAMS, "oxts", "velodyne_points")]
        stamp_files += [base / "velodyne_points" / f"timestamps_{k}.txt" for k in ("start", "end")]
        for f in stamp_files:
            lines = f.read_text().splitlines()
            assert len(lines) == n and all(TIMESTAMP.match(s) for s in lines), f
        secs = np.array(
            [
                _seconds(s)
                for s in (base / "velodyne_points" / "timestamps.txt").read_text().split("\n")
                if s
            ]
        )
        assert np.all(np.abs(np.diff(secs) - 0.1) < 2e-3)
        start = [
            _seconds(s)
            for s in (base / "velodyne_points" / "timestamps_start.txt").read_text().split("\n")
            if s
        ]
        assert np.all(np.array(start) < secs)
        fields = (base / "oxts" / "dataformat.txt").read_text().splitlines()
        assert (
            len(fields) == 30 and fields[0].startswith("lat:") and fields[-1].startswith("orimode:")
        )
        assert len((base / "oxts" / "data" / "0000000000.txt").read_text().split()) == 30

        gt = root / "ground_truth" / name
        assert _poses(gt / "poses.txt").shape == (n, 4, 4)
        assert sorted(p.name for p in (gt / "flow").glob("*.npz")) == [
            f"{i:010d}.npz" for i in range(n - 1)
        ]
        assert len(list((gt / "range").glob("*.npz"))) == n
        flow = np.load(gt / "flow" / "0000000000.npz")
        assert flow["flow"].shape == (h, w, 2) and flow["flow"].dtype == np.float32
        assert flow["valid"].shape == (h, w) and flow["valid"].dtype == bool
        rng = np.load(gt / "range" / "0000000000.npz")
        assert rng["unfolded"].shape == (64, manifest["lidar"]["n_azimuth"])
        assert rng["spherical"].shape == (64, 512)
    assert len(sizes) == 2, "the second date must have its own image size"


def _seconds(stamp: str) -> float:
    hms = stamp.split(" ")[1]
    h, m, s = hms.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_reuse_and_refusal(root: Path, tmp_path: Path) -> None:
    mtime = (root / "SYNTHETIC.json").stat().st_mtime_ns
    assert generate_synthetic_kitti(root, "small", seed=SEED) == root
    assert (root / "SYNTHETIC.json").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="size"):
        generate_synthetic_kitti(tmp_path, "huge")
    # A folder with KITTI drives of the same names but no manifest is not ours: never overwritten.
    (tmp_path / "2011_09_26" / "2011_09_26_drive_0001_sync").mkdir(parents=True)
    with pytest.raises(ValueError, match="refusing"):
        generate_synthetic_kitti(tmp_path, "small")


# ----------------------------------------------------------------------------------------------
# Determinism


def _frame_files(root: Path, drive, n: int) -> list[Path]:
    base = Path(drive.date) / drive.name
    files = [
        Path(drive.date) / f
        for f in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt", "calib_imu_to_velo.txt")
    ]
    for i in range(n):
        files += [base / c / "data" / f"{i:010d}.png" for c in CAMS]
        files += [
            base / "velodyne_points" / "data" / f"{i:010d}.bin",
            base / "oxts" / "data" / f"{i:010d}.txt",
        ]
        files += [Path("ground_truth") / drive.name / "range" / f"{i:010d}.npz"]
        if i < n - 1:
            files += [Path("ground_truth") / drive.name / "flow" / f"{i:010d}.npz"]
    return files


def test_deterministic(root: Path, tmp_path: Path) -> None:
    drive = next(d for d in DRIVES if d.name == "2011_09_26_drive_0005_sync")
    spec = SIZES["small"]
    n = 3
    for seed, sub in ((SEED, "same"), (SEED + 1, "other")):
        write_calibration(tmp_path / sub, drive.date, spec.scale)
        write_drive(
            tmp_path / sub, drive, spec, seed, Scanner(n_azimuth=spec.n_azimuth), n_frames=n
        )
    files = _frame_files(root, drive, n)
    assert len(files) == 3 + n * 7 + (n - 1)
    for f in files:
        assert (tmp_path / "same" / f).read_bytes() == (root / f).read_bytes(), f
    differ = [
        f
        for f in files
        if f.suffix in (".bin", ".png")
        and (tmp_path / "other" / f).read_bytes() != (root / f).read_bytes()
    ]
    assert len(differ) == n * 5


def test_medium_size_keeps_the_small_held_out_drives(root: Path, tmp_path: Path) -> None:
    """The medium size adds training drives; its val / test drives are the small size's, frame
    for frame (results on the two sizes are measured on the same held-out clips)."""
    splits = size_splits("medium")
    assert splits["val"] == SYNTHETIC_DRIVES["val"]
    assert splits["test"] == SYNTHETIC_DRIVES["test"]
    assert set(SYNTHETIC_DRIVES["train"]) < set(splits["train"])
    assert len(splits["train"]) == 6
    assert not set(splits["train"]) & set(splits["val"] + splits["test"])
    spec = SIZES["medium"]
    assert all(spec.n_frames[d] == 60 for d in splits["train"])
    drive = next(d for d in DRIVES if d.name == "2011_09_26_drive_0005_sync")
    write_calibration(tmp_path, drive.date, spec.scale)
    write_drive(tmp_path, drive, spec, SEED, Scanner(n_azimuth=spec.n_azimuth), n_frames=2)
    for f in _frame_files(root, drive, 2):
        assert (tmp_path / f).read_bytes() == (root / f).read_bytes(), f


# ----------------------------------------------------------------------------------------------
# LiDAR


def _read_bin(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    assert len(raw) % 16 == 0, path
    return np.frombuffer(raw, dtype=np.float32).reshape(-1, 4)


def _beam_and_column(
    points: np.ndarray, elevation_deg: np.ndarray, n_az: int
) -> tuple[np.ndarray, ...]:
    xyz = points[:, :3].astype(np.float64)
    elev = np.degrees(np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1])))
    beam = np.argmin(np.abs(elev[:, None] - elevation_deg[None]), axis=1)
    az = np.mod(np.arctan2(xyz[:, 1], xyz[:, 0]), 2 * np.pi)
    return elev, beam, az, np.round(az / (2 * np.pi / n_az)).astype(int) % n_az


@pytest.mark.parametrize("frame", [0, 7])
def test_lidar_ring_order_and_clean_range(root: Path, manifest: dict, frame: int) -> None:
    lidar = manifest["lidar"]
    elevation = np.array(lidar["elevation_deg"])
    assert len(elevation) == 64 and np.all(np.diff(elevation) < 0)
    assert 1.5 <= elevation[0] <= 2.5 and -25.5 <= elevation[-1] <= -24.0
    sigma = lidar["range_noise_std_m"]
    for name in manifest["drives"]:
        base = _drive_dir(root, manifest, name)
        pts = _read_bin(base / "velodyne_points" / "data" / f"{frame:010d}.bin")
        assert 30000 < len(pts) <= 64 * lidar["n_azimuth"]
        assert np.all((pts[:, 3] >= 0) & (pts[:, 3] <= 1))
        elev, beam, az, col = _beam_and_column(pts, elevation, lidar["n_azimuth"])
        # Every point lies on one of the beams (range noise does not change the direction).
        assert np.max(np.abs(elev - elevation[beam])) < 1e-3
        # Ring by ring from the top beam, each ring counter-clockwise from +x.
        assert np.all(np.diff(beam) >= 0)
        same_ring = np.diff(beam) == 0
        assert np.all(np.diff(az)[same_ring] > 0)
        assert np.max(np.abs(az - col * 2 * np.pi / lidar["n_azimuth"])[col > 0]) < 1e-4

        clean = np.load(root / "ground_truth" / name / "range" / f"{frame:010d}.npz")["unfolded"]
        r = np.linalg.norm(pts[:, :3].astype(np.float64), axis=1)
        truth = clean[beam, col]
        assert np.all(truth > 0), "a point was written for a ray with no clean return"
        assert np.max(np.abs(r - truth)) <= 3 * sigma + 1e-3
        assert np.std(r - truth) == pytest.approx(sigma, rel=0.2)
        # Drops only remove points: most returning rays are kept.
        kept = len(pts) / np.count_nonzero(clean)
        assert 0.7 < kept < 1.0


def test_ground_plane_height(root: Path, manifest: dict) -> None:
    """Nothing is below the road (z = -1.73 m in the velodyne frame) and the road is seen there."""
    lidar = manifest["lidar"]
    elevation = np.radians(lidar["elevation_deg"])
    for name in manifest["drives"]:
        rng = np.load(root / "ground_truth" / name / "range" / "0000000004.npz")
        z = rng["unfolded"] * np.sin(elevation)[:, None]
        assert z.min() >= -1.73 - 1e-4
        low = rng["unfolded"][-8:]  # steep beams: mostly road
        assert np.mean(np.abs(low * np.sin(elevation[-8:])[:, None] + 1.73) < 1e-4) > 0.3
        sph = rng["spherical"]
        fov_up, fov_down = np.radians(3.0), np.radians(-25.0)
        pitch = (1 - (np.arange(64) + 0.5) / 64) * (fov_up - fov_down) - abs(fov_down)
        z_s = np.where(sph > 0, sph * np.sin(pitch)[:, None], 0.0)
        assert z_s.min() >= -1.73 - 1e-4
        assert np.mean(np.abs(z_s[-8:] + 1.73) < 1e-4) > 0.3
        assert np.any(sph == -1), "expected sky (no return) cells"


# ----------------------------------------------------------------------------------------------
# Camera flow ground truth


def _warp_errors(root: Path, manifest: dict, name: str, t: int) -> tuple[float, float, np.ndarray]:
    base = _drive_dir(root, manifest, name)
    img0 = cv2.imread(str(base / "image_02" / "data" / f"{t:010d}.png")).astype(np.float32)
    img1 = cv2.imread(str(base / "image_02" / "data" / f"{t + 1:010d}.png")).astype(np.float32)
    gt = np.load(root / "ground_truth" / name / "flow" / f"{t:010d}.npz")
    flow, valid = gt["flow"], gt["valid"]
    h, w = valid.shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    warped = cv2.remap(img1, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR)
    # Away from edges: object boundaries (flow jumps) and sharp texture edges in frame t.
    jump = np.zeros((h, w), bool)
    dx = np.abs(np.diff(flow, axis=1)).max(-1) > 0.5
    dy = np.abs(np.diff(flow, axis=0)).max(-1) > 0.5
    jump[:, 1:] |= dx
    jump[:, :-1] |= dx
    jump[1:] |= dy
    jump[:-1] |= dy
    kernel = np.ones((3, 3), np.uint8)
    jump = cv2.dilate(jump.astype(np.uint8), kernel).astype(bool)
    gray = img0.mean(-1)
    edge = (cv2.dilate(gray, kernel) - cv2.erode(gray, kernel)) > 25
    mask = valid & ~jump & ~edge
    assert mask.mean() > 0.3
    warp_err = float(np.abs(warped - img0).mean(-1)[mask].mean())
    zero_err = float(np.abs(img1 - img0).mean(-1)[mask].mean())
    return warp_err, zero_err, flow


def test_flow_warps_next_frame_onto_current(root: Path, manifest: dict) -> None:
    for name in manifest["drives"]:
        for t in (0, 9, 17):
            warp_err, zero_err, flow = _warp_errors(root, manifest, name, t)
            assert warp_err < 1.0, (name, t, warp_err)
            assert zero_err > 3 * warp_err, (name, t, warp_err, zero_err)
            assert np.abs(flow).max() > 2.0


def test_flow_matches_calibration_and_poses(root: Path, manifest: dict) -> None:
    """Road pixels: back-project onto z = -1.73 (velodyne), move by the ego poses, re-project."""
    for name, info in manifest["drives"].items():
        date = info["date"]
        cam = _calib(root / date / "calib_cam_to_cam.txt")
        velo = _calib(root / date / "calib_velo_to_cam.txt")
        p2 = cam["P_rect_02"].reshape(3, 4)
        r_rect = np.eye(4)
        r_rect[:3, :3] = cam["R_rect_00"].reshape(3, 3)
        rect_T_velo = r_rect @ _rigid(velo["R"], velo["T"])
        poses = _poses(root / "ground_truth" / name / "poses.txt")
        t = 5
        flow = np.load(root / "ground_truth" / name / "flow" / f"{t:010d}.npz")
        h, w = flow["valid"].shape
        # Ray of each pixel of image_02 in the velodyne frame, intersected with the road plane.
        k = p2[:, :3]
        centre = _to_h(-np.linalg.solve(k, p2[:, 3]))
        velo_T_rect = np.linalg.inv(rect_T_velo)
        u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        dirs = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(k).T @ velo_T_rect[:3, :3].T
        origin = (velo_T_rect @ centre)[:3]
        lam = (-1.73 - origin[2]) / dirs[..., 2]
        ground = origin + lam[..., None] * dirs
        # Move into the velodyne frame of frame t+1 and project with P_rect_02.
        rel = np.linalg.inv(poses[t + 1]) @ poses[t]
        pts = _to_h(ground) @ (p2 @ rect_T_velo @ rel).T
        expected = pts[..., :2] / pts[..., 2:3] - np.stack([u, v], -1)
        road = (lam > 0) & (v > 0.66 * h) & flow["valid"]
        close = np.all(np.abs(expected - flow["flow"]) < 0.02, axis=-1) & road
        assert close.sum() > 0.3 * road.sum(), name


def _to_h(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones(x.shape[:-1] + (1,))], axis=-1)


# ----------------------------------------------------------------------------------------------
# oxts


def _oxts_to_poses(packets: np.ndarray) -> np.ndarray:
    """KITTI's conversion: Mercator with scale = cos(lat0), R = Rz(yaw) Ry(pitch) Rx(roll)."""
    er = 6378137.0
    scale = np.cos(packets[0, 0] * np.pi / 180.0)
    out = []
    for lat, lon, alt, roll, pitch, yaw in packets[:, :6]:
        t = [
            scale * lon * np.pi * er / 180.0,
            scale * er * np.log(np.tan((90.0 + lat) * np.pi / 360.0)),
            alt,
        ]
        cx, sx, cy, sy, cz, sz = (
            np.cos(roll),
            np.sin(roll),
            np.cos(pitch),
            np.sin(pitch),
            np.cos(yaw),
            np.sin(yaw),
        )
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        out.append(_rigid(rz @ ry @ rx, np.array(t)))
    return np.array(out)


def test_oxts_consistent_with_poses(root: Path, manifest: dict) -> None:
    for name, info in manifest["drives"].items():
        base = _drive_dir(root, manifest, name)
        files = sorted((base / "oxts" / "data").glob("*.txt"))
        packets = np.array([[float(v) for v in f.read_text().split()] for f in files])
        imu = _calib(root / info["date"] / "calib_imu_to_velo.txt")
        velo_T_imu = _rigid(imu["R"], imu["T"])
        world_T_imu = _oxts_to_poses(packets)
        from_oxts = np.linalg.inv(world_T_imu[0]) @ world_T_imu
        from_oxts = velo_T_imu @ from_oxts @ np.linalg.inv(velo_T_imu)
        poses = _poses(root / "ground_truth" / name / "poses.txt")
        truth = np.linalg.inv(poses[0]) @ poses
        np.testing.assert_allclose(from_oxts[:, :3, 3], truth[:, :3, 3], atol=1e-4)
        np.testing.assert_allclose(from_oxts[:, :3, :3], truth[:, :3, :3], atol=1e-6)
        # Speeds: 5-12 m/s; the forward velocity field agrees with the pose differences.
        step = np.linalg.norm(np.diff(truth[:, :3, 3], axis=0), axis=1)
        speed = np.hypot(packets[:, 6], packets[:, 7])
        assert np.all((speed > 4.9) & (speed < 12.1))
        np.testing.assert_allclose(step / 0.1, speed[:-1], rtol=0.03)
        assert np.all(np.abs(packets[:, 8] - speed) < 0.05)  # vf
        assert np.all(np.abs(packets[:, 16] - 9.81) < 0.5)  # au includes gravity
