"""Writes the synthetic drives in the exact KITTI raw layout, plus ground truth beside them.

    <root>/<date>/calib_cam_to_cam.txt, calib_velo_to_cam.txt, calib_imu_to_velo.txt
    <root>/<date>/<date>_drive_<NNNN>_sync/image_0{0..3}/{data/%010d.png, timestamps.txt}
    <root>/<date>/<date>_drive_<NNNN>_sync/oxts/{data/%010d.txt, dataformat.txt, timestamps.txt}
    <root>/<date>/<date>_drive_<NNNN>_sync/velodyne_points/{data/%010d.bin, timestamps*.txt}
    <root>/ground_truth/<drive>/{poses.txt, flow/%010d.npz, range/%010d.npz}
    <root>/SYNTHETIC.json   (written last: its presence marks a complete dataset)

Everything is a deterministic function of (size, seed): per-drive and per-frame NumPy generators
are seeded from [seed, drive key, stream, frame], so a truncated regeneration of a drive
reproduces its first frames byte for byte.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from wavecast.data.synthetic.camera import camera_rays, optical_flow, render
from wavecast.data.synthetic.lidar import (
    SPHERICAL_FOV_DOWN_DEG,
    SPHERICAL_FOV_UP_DEG,
    Scanner,
    spherical_range,
)
from wavecast.data.synthetic.rig import CALIBRATIONS, Rig, calib_texts, written_size
from wavecast.data.synthetic.scene import GROUND_Z, Scene, make_street

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
MANIFEST = "SYNTHETIC.json"
INCOMPLETE_MARKER = "SYNTHETIC.incomplete"
FRAME_PERIOD = 0.1
SPHERICAL_SIZE = (64, 512)
EARTH_RADIUS = 6378137.0
GRAVITY = 9.81


@dataclass(frozen=True)
class DriveSpec:
    date: str
    number: int
    split: str
    key: int  # seeds this drive's random streams; fixed per drive, never a list position

    @property
    def name(self) -> str:
        return f"{self.date}_drive_{self.number:04d}_sync"


@dataclass(frozen=True)
class SizeSpec:
    scale: float  # written image size / full KITTI rectified size
    n_azimuth: int
    n_frames: dict[str, int]  # drive name -> frames


DRIVES = (
    DriveSpec("2011_09_26", 1, "train", 1),
    DriveSpec("2011_09_26", 2, "val", 2),
    DriveSpec("2011_09_26", 5, "test", 5),
    DriveSpec("2011_09_28", 1, "train", 101),
    # Extra training drives of the larger sizes (the small size writes only the four above).
    DriveSpec("2011_09_26", 9, "train", 9),
    DriveSpec("2011_09_26", 11, "train", 11),
    DriveSpec("2011_09_26", 13, "train", 13),
    DriveSpec("2011_09_28", 2, "train", 102),
)
_SMALL_DRIVES = DRIVES[:4]
_EXTRA_TRAIN = DRIVES[4:]
SIZES = {
    "small": SizeSpec(0.25, 1024, {d.name: 20 for d in _SMALL_DRIVES}),
    # The small size's val / test drives unchanged (same scenes, same frames: a drive's scene
    # depends on its key and length only), and 6 training drives of 60 frames: enough distinct
    # frames that a video VAE learns the scene rather than memorising 40 frames.
    "medium": SizeSpec(
        0.25,
        1024,
        {
            **{d.name: 60 for d in _SMALL_DRIVES + _EXTRA_TRAIN if d.split == "train"},
            "2011_09_26_drive_0002_sync": 20,
            "2011_09_26_drive_0005_sync": 20,
        },
    ),
    "demo": SizeSpec(
        0.5,
        2048,
        {
            "2011_09_26_drive_0001_sync": 80,
            "2011_09_26_drive_0002_sync": 40,
            "2011_09_26_drive_0005_sync": 40,
            "2011_09_28_drive_0001_sync": 60,
        },
    ),
}


def size_splits(size: str) -> dict[str, list[str]]:
    """split -> names of the drives that dataset size writes."""
    names = SIZES[size].n_frames
    return {
        split: [d.name for d in DRIVES if d.split == split and d.name in names]
        for split in ("train", "val", "test")
    }


def size_drives(size: str) -> list[DriveSpec]:
    """The drives that dataset size writes, in DRIVES order."""
    return [d for d in DRIVES if d.name in SIZES[size].n_frames]


#: split -> drive names of the default ("small") size.
SYNTHETIC_DRIVES: dict[str, list[str]] = size_splits("small")

OXTS_FIELDS = (
    ("lat", "latitude of the OXTS unit (deg)"),
    ("lon", "longitude of the OXTS unit (deg)"),
    ("alt", "altitude of the OXTS unit (m)"),
    ("roll", "roll (rad): 0 = level, positive = left side up, in [-pi, pi]"),
    ("pitch", "pitch (rad): 0 = level, positive = front down, in [-pi/2, pi/2]"),
    ("yaw", "heading (rad): 0 = east, positive = counter-clockwise, in [-pi, pi]"),
    ("vn", "velocity towards north (m/s)"),
    ("ve", "velocity towards east (m/s)"),
    ("vf", "forward velocity, parallel to the earth's surface (m/s)"),
    ("vl", "leftward velocity, parallel to the earth's surface (m/s)"),
    ("vu", "upward velocity, normal to the earth's surface (m/s)"),
    (
        "ax",
        "specific force along the unit's x axis, towards the vehicle front (m/s^2, gravity included)",
    ),
    (
        "ay",
        "specific force along the unit's y axis, towards the vehicle left (m/s^2, gravity included)",
    ),
    (
        "az",
        "specific force along the unit's z axis, towards the vehicle top (m/s^2, gravity included)",
    ),
    ("af", "forward specific force, parallel to the earth's surface (m/s^2)"),
    ("al", "leftward specific force, parallel to the earth's surface (m/s^2)"),
    ("au", "upward specific force, normal to the earth's surface (m/s^2, about +9.81 at rest)"),
    ("wx", "angular rate about the unit's x axis (rad/s)"),
    ("wy", "angular rate about the unit's y axis (rad/s)"),
    ("wz", "angular rate about the unit's z axis (rad/s)"),
    ("wf", "angular rate about the forward axis (rad/s)"),
    ("wl", "angular rate about the leftward axis (rad/s)"),
    ("wu", "angular rate about the upward axis (rad/s)"),
    ("pos_accuracy", "position accuracy, north/east (m)"),
    ("vel_accuracy", "velocity accuracy, north/east (m/s)"),
    ("navstat", "navigation status (integer)"),
    ("numsats", "number of satellites tracked by the primary GPS receiver"),
    ("posmode", "position mode of the primary GPS receiver (integer)"),
    ("velmode", "velocity mode of the primary GPS receiver (integer)"),
    ("orimode", "orientation mode of the primary GPS receiver (integer)"),
)
DATAFORMAT_TEXT = "".join(f"{name}: {text}\n" for name, text in OXTS_FIELDS)

GROUND_TRUTH_DOC = {
    "poses.txt": (
        "ground_truth/<drive>/poses.txt: one line per frame, 12 floats, row-major 3x4 world_T_velodyne "
        "(maps velodyne points to the world frame). World = street frame: x along the street, y left, "
        "z up, origin at the velodyne centre at the first frame's time; the road is the plane "
        f"z = {GROUND_Z}. Same poses the oxts files encode (through calib_imu_to_velo)."
    ),
    "flow": (
        "ground_truth/<drive>/flow/%010d.npz, frames 0..N-2: 'flow' [H, W, 2] float32 (dx right, dy down) in "
        "image_02 pixels from frame t to t+1: each pixel centre's 3D point (sky: its direction) moved with "
        "its object and projected into image_02 at t+1, minus the pixel; 0 where the point is behind the "
        "camera at t+1. 'valid' [H, W] bool: the projection lies in [0, W-1] x [0, H-1] and the point is "
        "not occluded at t+1 (exact ray cast)."
    ),
    "range": (
        "ground_truth/<drive>/range/%010d.npz: 'unfolded' [64, n_azimuth] float32 clean (noise- and drop-free) "
        "range per beam (row 0 = top beam) and azimuth column in the scanner's order, 0 = no return; "
        "'spherical' [64, 512] float32 clean range cast along the spherical projection's cell centres "
        "(fov_up +3 deg, fov_down -25 deg, yaw = pi*(2*(u+0.5)/W - 1), pitch = (1-(v+0.5)/H)*fov - |fov_down|, "
        "x = r cos(p) cos(yaw), y = -r cos(p) sin(yaw), z = r sin(p)), -1 = no return."
    ),
}


# ----------------------------------------------------------------------------------------------
# Public entry point


def generate_synthetic_kitti(
    root: str | Path, size: str = "small", seed: int = 0, overwrite: bool = False
) -> Path:
    """Generate (or reuse) the synthetic KITTI raw dataset under `root`; returns root.

    An existing complete dataset with the same size and seed is reused unless `overwrite`.
    A root that holds KITTI drives with our names but no manifest or incomplete-marker of ours is
    refused, so real data is never overwritten.
    """
    if size not in SIZES:
        raise ValueError(
            f"generate_synthetic_kitti: size must be one of {sorted(SIZES)}, got {size!r}"
        )
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"generate_synthetic_kitti: seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    root = Path(root)
    manifest_path = root / MANIFEST
    marker = root / INCOMPLETE_MARKER
    if manifest_path.exists() and not overwrite:
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(
                f"{manifest_path}: unreadable manifest ({err}); pass overwrite=True"
            ) from err
        if (old.get("size"), old.get("seed"), old.get("generator_version")) == (
            size,
            seed,
            GENERATOR_VERSION,
        ):
            return root
        log.info("%s holds size=%s seed=%s: regenerating", root, old.get("size"), old.get("seed"))
    ours = manifest_path.exists() or marker.exists()
    if not ours and any((root / d.date / d.name).exists() for d in DRIVES):
        raise ValueError(
            f"{root}: holds KITTI drives with the synthetic drives' names but no {MANIFEST}; refusing to "
            "overwrite data the generator did not write"
        )
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text("generation in progress or interrupted\n")
    _remove_outputs(root)

    spec = SIZES[size]
    scanner = Scanner(n_azimuth=spec.n_azimuth)
    drives = {}
    for date in sorted({d.date for d in size_drives(size)}):
        write_calibration(root, date, spec.scale)
    for drive in size_drives(size):
        drives[drive.name] = write_drive(root, drive, spec, seed, scanner)

    manifest = {
        "generator": "wavecast.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "frame_rate_hz": 1.0 / FRAME_PERIOD,
        "splits": size_splits(size),
        "drives": drives,
        "lidar": scanner.manifest(),
        "spherical": {
            "height": SPHERICAL_SIZE[0],
            "width": SPHERICAL_SIZE[1],
            "fov_up_deg": SPHERICAL_FOV_UP_DEG,
            "fov_down_deg": SPHERICAL_FOV_DOWN_DEG,
        },
        "ground_truth": GROUND_TRUTH_DOC,
        "notes": (
            "All streams of a frame share one instant (the velodyne timestamp); images are rendered at "
            "that instant, scans are instantaneous (timestamps_start/end only bracket it). Images are "
            "rendered at the reduced size the calibration (S_rect / P_rect) describes. oxts values are the "
            "analytic ego motion at the frame time (Mercator with scale = cos(lat0))."
        ),
    }
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, manifest_path)
    marker.unlink()
    return root


def _remove_outputs(root: Path) -> None:
    """Delete what a previous (possibly interrupted) generation wrote, and nothing else."""
    (root / MANIFEST).unlink(missing_ok=True)
    for drive in DRIVES:
        shutil.rmtree(root / drive.date / drive.name, ignore_errors=True)
        shutil.rmtree(root / "ground_truth" / drive.name, ignore_errors=True)
        for name in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt", "calib_imu_to_velo.txt"):
            (root / drive.date / name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Calibration and drives


def write_calibration(root: Path, date: str, scale: float) -> dict[str, str]:
    texts = calib_texts(CALIBRATIONS[date], scale)
    (root / date).mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (root / date / name).write_text(text)
    return texts


def write_drive(
    root: Path,
    drive: DriveSpec,
    spec: SizeSpec,
    seed: int,
    scanner: Scanner,
    n_frames: int | None = None,
) -> dict:
    """Write one drive (and its ground truth); returns its manifest entry.

    `n_frames` truncates the drive (tests): the scene and every frame's random stream do not
    depend on it, so the frames written are the first frames of the full drive.
    """
    n_nominal = spec.n_frames[drive.name]
    n = n_nominal if n_frames is None else min(int(n_frames), n_nominal)
    texts = calib_texts(CALIBRATIONS[drive.date], spec.scale)
    rig = Rig.from_texts(texts)
    rng = np.random.default_rng([seed, drive.key, 0])
    times = frame_times(seed, drive.key, n_nominal)
    scene = make_street(rng, float(times[-1]) + FRAME_PERIOD)
    start_ns = _start_of_drive_ns(rng)
    geo = _geo_origin(rng)

    base = root / drive.date / drive.name
    gt = root / "ground_truth" / drive.name
    for sub in ("image_00", "image_01", "image_02", "image_03", "oxts", "velodyne_points"):
        (base / sub / "data").mkdir(parents=True, exist_ok=True)
    (gt / "flow").mkdir(parents=True, exist_ok=True)
    (gt / "range").mkdir(parents=True, exist_ok=True)

    poses = []
    for i in range(n):
        tau = float(times[i])
        frame_rng = np.random.default_rng([seed, drive.key, 1, i])
        prims = scene.primitives_at(tau)
        pose = scene.ego.world_T_velo(tau)
        poses.append(pose)
        name = f"{i:010d}"
        for cam in range(4):
            rays = camera_rays(rig, cam, pose)
            img = render(scene, prims, rays)
            # image_00/01 are the grayscale pair, image_02/03 colour (OpenCV writes BGR).
            pixels = img.to_uint8(gray=True) if cam < 2 else img.to_uint8()[..., ::-1]
            _write_png(base / f"image_0{cam}" / "data" / f"{name}.png", pixels)
            if cam == 2:
                view2, rays2 = img, rays
        points, clean = scanner.scan(prims, scene.textures, pose, frame_rng)
        points.tofile(base / "velodyne_points" / "data" / f"{name}.bin")
        sph = spherical_range(prims, pose, *SPHERICAL_SIZE, max_range=scanner.max_range)
        save_npz(gt / "range" / f"{name}.npz", unfolded=clean, spherical=sph)
        if i + 1 < n:
            tau1 = float(times[i + 1])
            pose1 = scene.ego.world_T_velo(tau1)
            rays2_next = camera_rays(rig, 2, pose1)
            flow, valid = optical_flow(
                scene, view2, rays2, scene.primitives_at(tau1), rays2_next, tau1 - tau
            )
            save_npz(gt / "flow" / f"{name}.npz", stored=("flow",), flow=flow, valid=valid)
        record = oxts_record(scene, rig, tau, geo, frame_rng)
        (base / "oxts" / "data" / f"{name}.txt").write_text(format_oxts(record) + "\n")

    _write_timestamps(base, start_ns, times[:n], seed, drive.key)
    (base / "oxts" / "dataformat.txt").write_text(DATAFORMAT_TEXT)
    (gt / "poses.txt").write_text(
        "".join(" ".join(f"{v:.12e}" for v in p[:3].ravel()) + "\n" for p in poses)
    )
    width, height = written_size(CALIBRATIONS[drive.date], spec.scale)
    p_rect_02 = rig.P_rect[2]
    return {
        "date": drive.date,
        "split": drive.split,
        "n_frames": n,
        "image_size": {f"image_0{c}": [width, height] for c in range(4)},
        "P_rect_02": [[float(v) for v in row] for row in p_rect_02],
        "frame_rate_hz": 1.0 / FRAME_PERIOD,
        "ego_speed_mps": round(float(np.linalg.norm(scene.ego.velocity(0.0))), 4),
        "n_moving_objects": scene.n_moving,
        "n_objects": len(scene.kind),
    }


def frame_times(seed: int, key: int, n: int) -> np.ndarray:
    """Seconds since the first frame [n]: 10 Hz with sub-millisecond jitter (first frame at 0)."""
    jitter = [
        0.0
        if i == 0
        else float(np.clip(np.random.default_rng([seed, key, 2, i]).normal(0, 2.5e-4), -8e-4, 8e-4))
        for i in range(n)
    ]
    return np.arange(n) * FRAME_PERIOD + np.array(jitter)


def _start_of_drive_ns(rng: np.random.Generator) -> int:
    """Nanoseconds since midnight of the drive's first frame (a daytime recording)."""
    return int(rng.integers(10 * 3600, 17 * 3600)) * 10**9 + int(rng.integers(0, 10**9))


def _format_time(date: str, ns: int) -> str:
    sec, frac = divmod(ns, 10**9)
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{date.replace('_', '-')} {h:02d}:{m:02d}:{s:02d}.{frac:09d}"


def _write_timestamps(base: Path, start_ns: int, times: np.ndarray, seed: int, key: int) -> None:
    date = base.parent.name
    stamps = [start_ns + int(round(t * 1e9)) for t in times]
    text = "".join(_format_time(date, s) + "\n" for s in stamps)
    for sub in ("image_00", "image_01", "image_02", "image_03", "oxts", "velodyne_points"):
        (base / sub / "timestamps.txt").write_text(text)
    # The sweep brackets the frame instant; its rotation period wanders slightly around 0.1 s.
    half = [
        0.5 * np.random.default_rng([seed, key, 3, i]).uniform(0.0995, 0.1005)
        for i in range(len(times))
    ]
    start = "".join(
        _format_time(date, s - int(round(h * 1e9))) + "\n" for s, h in zip(stamps, half)
    )
    end = "".join(_format_time(date, s + int(round(h * 1e9))) + "\n" for s, h in zip(stamps, half))
    (base / "velodyne_points" / "timestamps_start.txt").write_text(start)
    (base / "velodyne_points" / "timestamps_end.txt").write_text(end)


# ----------------------------------------------------------------------------------------------
# oxts: poses -> GPS/IMU packets (the inverse of KITTI's oxts -> pose conversion)


@dataclass(frozen=True)
class _Geo:
    lat0: float  # deg, latitude of the IMU at the first frame
    lon0: float
    alt0: float
    heading: float  # rad, east-north angle of the street frame's x axis


def _geo_origin(rng: np.random.Generator) -> _Geo:
    # Around Karlsruhe; rounded so the printed first latitude (which sets the Mercator scale) is exact.
    return _Geo(
        lat0=round(float(rng.uniform(48.98, 49.04)), 9),
        lon0=round(float(rng.uniform(8.38, 8.48)), 9),
        alt0=round(float(rng.uniform(110.0, 120.0)), 4),
        heading=float(rng.uniform(-np.pi, np.pi)),
    )


def mercator_from_latlon(
    lat: np.ndarray, lon: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """KITTI's Mercator projection: (lat, lon) in degrees -> (x east, y north) in metres."""
    mx = scale * lon * np.pi * EARTH_RADIUS / 180.0
    my = scale * EARTH_RADIUS * np.log(np.tan((90.0 + lat) * np.pi / 360.0))
    return mx, my


def latlon_from_mercator(
    mx: np.ndarray, my: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of mercator_from_latlon."""
    lon = mx * 180.0 / (scale * np.pi * EARTH_RADIUS)
    lat = 360.0 / np.pi * np.arctan(np.exp(my / (scale * EARTH_RADIUS))) - 90.0
    return lat, lon


def rpy_from_rotation(rot: np.ndarray) -> tuple[float, float, float]:
    """(roll, pitch, yaw) with rot = Rz(yaw) @ Ry(pitch) @ Rx(roll) (the oxts convention)."""
    pitch = float(np.arcsin(np.clip(-rot[2, 0], -1.0, 1.0)))
    roll = float(np.arctan2(rot[2, 1], rot[2, 2]))
    yaw = float(np.arctan2(rot[1, 0], rot[0, 0]))
    return roll, pitch, yaw


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def oxts_record(
    scene: Scene, rig: Rig, t: float, geo: _Geo, rng: np.random.Generator
) -> list[float]:
    """The 30 oxts values at time t, consistent with world_T_velodyne and calib_imu_to_velo.

    The first frame's IMU sits at (lat0, lon0, alt0), whose latitude sets the Mercator scale
    cos(lat0) exactly as the oxts -> pose conversion recomputes it from the first packet.
    """
    merc_R_world = _rot_z(geo.heading)

    def imu_world(tt: float) -> np.ndarray:
        return (scene.ego.world_T_velo(tt) @ rig.velo_T_imu)[:3, 3]

    world_T_imu = scene.ego.world_T_velo(t) @ rig.velo_T_imu
    scale = float(np.cos(geo.lat0 * np.pi / 180.0))
    mx0, my0 = mercator_from_latlon(geo.lat0, geo.lon0, scale)
    # The street origin sits where the first frame's IMU lands on (lat0, lon0, alt0).
    imu0 = (scene.ego.world_T_velo(0.0) @ rig.velo_T_imu)[:3, 3]
    merc_origin = np.array([mx0, my0, geo.alt0]) - merc_R_world @ imu0
    pos = merc_R_world @ world_T_imu[:3, 3] + merc_origin
    lat, lon = latlon_from_mercator(pos[0], pos[1], scale)
    rot = merc_R_world @ world_T_imu[:3, :3]
    roll, pitch, yaw = rpy_from_rotation(rot)

    # IMU kinematics by central differences of the analytic trajectory (exact to ~1e-8).
    h = 1e-3
    p_m, p_0, p_p = imu_world(t - h), imu_world(t), imu_world(t + h)
    vel = merc_R_world @ ((p_p - p_m) / (2 * h))
    acc = merc_R_world @ ((p_p - 2 * p_0 + p_m) / (h * h))
    yaw_rate = float((scene.ego.yaw(t + h) - scene.ego.yaw(t - h)) / (2 * h))
    omega = np.array([0.0, 0.0, yaw_rate])
    force = acc + np.array([0.0, 0.0, GRAVITY])
    level = _rot_z(yaw)
    v_flu = level.T @ vel
    f_body, f_flu = rot.T @ force, level.T @ force
    w_body, w_flu = rot.T @ omega, level.T @ omega
    values = [
        float(lat), float(lon), float(pos[2]), roll, pitch, yaw,
        float(vel[1]), float(vel[0]), *v_flu.tolist(),
        *f_body.tolist(), *f_flu.tolist(), *w_body.tolist(), *w_flu.tolist(),
        round(float(rng.uniform(0.02, 0.12)), 6), round(float(rng.uniform(0.01, 0.05)), 6),
        4, int(rng.integers(7, 12)), 4, 4, 6,
    ]  # fmt: skip
    return values


def format_oxts(values: list[float]) -> str:
    """One oxts line: lat/lon with 1e-12 deg resolution, integers for the status fields."""
    out = [f"{values[0]:.12f}", f"{values[1]:.12f}"]
    out += [f"{v:.12g}" for v in values[2:25]]
    out += [str(int(v)) for v in values[25:]]
    return " ".join(out)


# ----------------------------------------------------------------------------------------------
# Files


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"could not write {path}")


def save_npz(path: Path, stored: tuple[str, ...] = (), **arrays: np.ndarray) -> None:
    """Like np.savez_compressed but byte-reproducible; members named in `stored` are not deflated.

    NumPy stamps each member with the current time; fixed ZipInfo dates keep files identical.
    (Float flow fields shrink by under 10% at several ms per frame, so they are stored.)
    """
    with zipfile.ZipFile(path, "w") as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            method = zipfile.ZIP_STORED if key in stored else zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compress_type=method, compresslevel=1)
