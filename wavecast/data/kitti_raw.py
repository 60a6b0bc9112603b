"""KITTI raw (synced + rectified) drives: images, velodyne scans, oxts poses, calibration.

Layout (data.md)::

    <root>/<date>/calib_cam_to_cam.txt, calib_velo_to_cam.txt, calib_imu_to_velo.txt
    <root>/<date>/<date>_drive_<NNNN>_sync/
        image_00 .. image_03/{data/%010d.png, timestamps.txt}
        oxts/{data/%010d.txt, dataformat.txt, timestamps.txt}
        velodyne_points/{data/%010d.bin, timestamps.txt, timestamps_start.txt, timestamps_end.txt}

Drives are addressed by name (``2011_09_26_drive_0001_sync``); `list_drives` only reports what
exists, it never defines a split. Every problem with the files raises `DataError` naming the
file or folder at fault.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from wavecast.data.calib import CalibFile, read_calib_file
from wavecast.data.errors import DataError

CAMERAS = ("image_00", "image_01", "image_02", "image_03")
STREAMS = (*CAMERAS, "oxts", "velodyne_points")
_EXTENSION = {**dict.fromkeys(CAMERAS, ".png"), "oxts": ".txt", "velodyne_points": ".bin"}
DRIVE_PATTERN = re.compile(r"^(\d{4}_\d{2}_\d{2})_drive_(\d{4})_sync$")
_FRAME_PATTERN = re.compile(r"^(\d{10})$")
EARTH_RADIUS = 6378137.0  # m, the value of KITTI's devkit (WGS84 equatorial radius)

OXTS_FIELDS = (
    "lat", "lon", "alt", "roll", "pitch", "yaw", "vn", "ve", "vf", "vl", "vu",
    "ax", "ay", "az", "af", "al", "au", "wx", "wy", "wz", "wf", "wl", "wu",
    "pos_accuracy", "vel_accuracy", "navstat", "numsats", "posmode", "velmode", "orimode",
)  # fmt: skip


class DriveRef(NamedTuple):
    """One drive folder: date (``2011_09_26``), name (``2011_09_26_drive_0001_sync``), path."""

    date: str
    name: str
    path: Path


class OxtsPacket(NamedTuple):
    """One oxts line (30 values, KITTI's dataformat.txt order; angles in rad, lat/lon in deg)."""

    lat: float
    lon: float
    alt: float
    roll: float
    pitch: float
    yaw: float
    vn: float
    ve: float
    vf: float
    vl: float
    vu: float
    ax: float
    ay: float
    az: float
    af: float
    al: float
    au: float
    wx: float
    wy: float
    wz: float
    wf: float
    wl: float
    wu: float
    pos_accuracy: float
    vel_accuracy: float
    navstat: int
    numsats: int
    posmode: int
    velmode: int
    orimode: int


# ----------------------------------------------------------------------------------------------
# Single files


def read_velodyne_bin(path: str | Path) -> np.ndarray:
    """A velodyne scan [N, 4] float32 (x forward, y left, z up, reflectance) from a .bin file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError("velodyne scan not found", path) from None
    except OSError as err:
        raise DataError(f"cannot read velodyne scan ({err})", path) from err
    if len(raw) % 16:
        raise DataError(
            f"{len(raw)} bytes is not a multiple of 16 (4 float32 per point): truncated scan", path
        )
    points = np.frombuffer(raw, dtype="<f4").reshape(-1, 4).copy()
    if not np.all(np.isfinite(points)):
        bad = int((~np.isfinite(points)).any(axis=1).sum())
        raise DataError(f"{bad} of {len(points)} points hold NaN/inf values", path)
    return points


def read_png(path: str | Path) -> np.ndarray:
    """An 8-bit PNG as uint8 [H, W, 3] RGB or [H, W, 1] grey; DataError when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError("image not found", path)
    # imdecode on the bytes (not imread) so a truncated file cannot be half-decoded silently:
    # libpng fails on a missing IEND/IDAT and OpenCV then returns None.
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DataError(f"cannot decode image ({data.size} bytes): corrupt or truncated", path)
    if image.dtype != np.uint8:
        raise DataError(f"expected an 8-bit image, got {image.dtype}", path)
    if image.ndim == 2:
        return image[..., None]
    if image.shape[2] == 4:
        image = image[..., :3]
    return np.ascontiguousarray(image[..., ::-1])


def png_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of a PNG from its IHDR header, without decoding the pixels."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as err:
        raise DataError(f"cannot read image ({err})", path) from err
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise DataError("not a PNG file (bad signature or header)", path)
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return height, width


def read_timestamps(path: str | Path) -> np.ndarray:
    """KITTI timestamps (``2011-09-26 13:02:25.964389445``) -> datetime64[ns] [N]."""
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines()]
    except FileNotFoundError:
        raise DataError("timestamps file not found", path) from None
    out = []
    for lineno, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            out.append(np.datetime64(line.replace(" ", "T"), "ns"))
        except ValueError:
            raise DataError(f"line {lineno}: not a timestamp: {line!r}", path) from None
    return np.array(out, dtype="datetime64[ns]")


def _count_lines(path: Path) -> int:
    try:
        return sum(1 for ln in path.read_text().splitlines() if ln.strip())
    except FileNotFoundError:
        raise DataError("timestamps file not found", path) from None


# ----------------------------------------------------------------------------------------------
# Poses


def rotation_from_rpy(roll: np.ndarray, pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Rz(yaw) @ Ry(pitch) @ Rx(roll) [N, 3, 3] (the oxts angle convention)."""
    cr, sr, cp, sp = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(yaw), np.sin(yaw)
    rot = np.empty((len(roll), 3, 3))
    rot[:, 0] = np.stack([cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr], axis=-1)
    rot[:, 1] = np.stack([sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr], axis=-1)
    rot[:, 2] = np.stack([-sp, cp * sr, cp * cr], axis=-1)
    return rot


def poses_from_oxts(oxts: np.ndarray) -> np.ndarray:
    """world_T_imu [N, 4, 4] from oxts [N, >= 6] (lat, lon, alt, roll, pitch, yaw).

    KITTI devkit's conversion: Mercator with scale cos(lat of the first packet), x east, y north,
    z altitude; rotation Rz(yaw) Ry(pitch) Rx(roll). Float64 throughout (Mercator metres are
    ~1e6 m, where float32 would lose centimetres).
    """
    oxts = np.asarray(oxts, dtype=np.float64)
    lat, lon, alt = oxts[:, 0], oxts[:, 1], oxts[:, 2]
    scale = np.cos(lat[0] * np.pi / 180.0)
    poses = np.tile(np.eye(4), (len(oxts), 1, 1))
    poses[:, 0, 3] = scale * lon * np.pi * EARTH_RADIUS / 180.0
    poses[:, 1, 3] = scale * EARTH_RADIUS * np.log(np.tan((90.0 + lat) * np.pi / 360.0))
    poses[:, 2, 3] = alt
    poses[:, :3, :3] = rotation_from_rpy(oxts[:, 3], oxts[:, 4], oxts[:, 5])
    return poses


def relative_to_first(poses: np.ndarray) -> np.ndarray:
    """Express poses [N, 4, 4] in the frame of the first: inv(P_0) @ P_i (first = identity)."""
    return np.linalg.inv(poses[0]) @ poses


# ----------------------------------------------------------------------------------------------
# Calibration


@dataclass(frozen=True)
class RawCalibration:
    """Calibration of one recording date (all matrices float64).

    P_rect_0i [3, 4]: rectified camera i projection (pixels of the written images);
    R_rect_00 [4, 4]: rectifying rotation of camera 0, padded to homogeneous;
    T_velo_to_cam [4, 4]: velodyne -> (unrectified) camera 0; T_imu_to_velo [4, 4];
    S_rect: camera name -> rectified (height, width). The parsed files stay in `files`.
    """

    P_rect_00: np.ndarray
    P_rect_01: np.ndarray
    P_rect_02: np.ndarray
    P_rect_03: np.ndarray
    R_rect_00: np.ndarray
    T_velo_to_cam: np.ndarray
    T_imu_to_velo: np.ndarray
    S_rect: dict[str, tuple[int, int]]
    files: dict[str, CalibFile]

    @classmethod
    def from_folder(cls, date_dir: str | Path) -> RawCalibration:
        date_dir = Path(date_dir)
        cam = read_calib_file(date_dir / "calib_cam_to_cam.txt")
        velo = read_calib_file(date_dir / "calib_velo_to_cam.txt")
        imu = read_calib_file(date_dir / "calib_imu_to_velo.txt")
        r_rect = np.eye(4)
        r_rect[:3, :3] = cam.matrix("R_rect_00", (3, 3))
        sizes = {}
        for i, name in enumerate(CAMERAS):
            if f"S_rect_0{i}" in cam:
                w, h = cam.matrix(f"S_rect_0{i}", (2,))
                sizes[name] = (int(round(h)), int(round(w)))
        return cls(
            P_rect_00=cam.matrix("P_rect_00", (3, 4)),
            P_rect_01=cam.matrix("P_rect_01", (3, 4)),
            P_rect_02=cam.matrix("P_rect_02", (3, 4)),
            P_rect_03=cam.matrix("P_rect_03", (3, 4)),
            R_rect_00=r_rect,
            T_velo_to_cam=velo.rigid("R", "T"),
            T_imu_to_velo=imu.rigid("R", "T"),
            S_rect=sizes,
            files={"cam_to_cam": cam, "velo_to_cam": velo, "imu_to_velo": imu},
        )

    def P_rect(self, camera: str) -> np.ndarray:
        """[3, 4] projection of `camera` (``image_02`` or ``02``)."""
        idx = _camera_index(camera)
        return getattr(self, f"P_rect_0{idx}")

    @property
    def T_velo_to_rect(self) -> np.ndarray:
        """[4, 4] velodyne -> rectified camera-0 frame (R_rect_00 @ T_velo_to_cam)."""
        return self.R_rect_00 @ self.T_velo_to_cam

    def velo_to_image(self, camera: str = "image_02") -> np.ndarray:
        """[3, 4] velodyne point (homogeneous) -> `camera` pixel (homogeneous)."""
        return self.P_rect(camera) @ self.T_velo_to_rect


def _camera_index(camera: str) -> int:
    name = camera if camera.startswith("image_") else f"image_{camera}"
    if name not in CAMERAS:
        raise ValueError(f"camera must be one of {CAMERAS}, got {camera!r}")
    return CAMERAS.index(name)


# ----------------------------------------------------------------------------------------------
# Drives


def normalize_drive_name(name: str) -> str:
    """Accept ``2011_09_26_drive_0005`` as well as the folder name ``..._sync``."""
    name = str(name).strip().rstrip("/")
    return name if name.endswith("_sync") else f"{name}_sync"


def list_drives(root: str | Path) -> list[DriveRef]:
    """All ``<date>/<date>_drive_NNNN_sync`` folders under `root` (sorted by name)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("KITTI raw root does not exist or is not a folder", root)
    drives = []
    for date_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for drive_dir in sorted(p for p in date_dir.iterdir() if p.is_dir()):
            m = DRIVE_PATTERN.match(drive_dir.name)
            if m and m.group(1) == date_dir.name:
                drives.append(DriveRef(date_dir.name, drive_dir.name, drive_dir))
    return drives


def find_drive(root: str | Path, name: str) -> DriveRef:
    """The drive called `name` under `root`; DataError listing the available ones otherwise."""
    root = Path(root)
    name = normalize_drive_name(name)
    m = DRIVE_PATTERN.match(name)
    if m is None:
        raise DataError(
            f"{name!r} is not a KITTI raw drive name (YYYY_MM_DD_drive_NNNN_sync)", root
        )
    path = root / m.group(1) / name
    if path.is_dir():
        return DriveRef(m.group(1), name, path)
    available = [d.name for d in list_drives(root)]
    raise DataError(
        f"unknown drive {name!r}; available drives: {', '.join(available) or '(none)'}", root
    )


def _frame_files(stream_dir: Path, ext: str) -> int:
    """Number of frames in `stream_dir/data`, checking the names run 0..N-1 without gaps."""
    data_dir = stream_dir / "data"
    if not data_dir.is_dir():
        raise DataError("missing data folder", data_dir)
    indices = []
    for p in data_dir.iterdir():
        if p.suffix == ext and _FRAME_PATTERN.match(p.stem):
            indices.append(int(p.stem))
    if not indices:
        raise DataError(f"no %010d{ext} frames", data_dir)
    indices.sort()
    if indices[-1] != len(indices) - 1:
        missing = sorted(set(range(indices[-1] + 1)) - set(indices))
        raise DataError(
            f"frames are not numbered 0..{len(indices) - 1}: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}",
            data_dir,
        )
    return len(indices)


class KittiRawDrive:
    """One synced + rectified KITTI raw drive.

    Args:
        root: the KITTI raw root (holding ``<date>/`` folders).
        drive_name: ``2011_09_26_drive_0001_sync`` (the ``_sync`` suffix may be left out).
        streams: the streams this reader needs (e.g. ``("image_02",)``); each must exist with
            ``data/`` and ``timestamps.txt`` and all must have the same frame count. None:
            every standard stream that is present (at least one).

    Raises DataError (naming the path) on a missing drive, stream or folder, gaps in the frame
    numbers, or frame counts that disagree between streams or with timestamps.txt.
    """

    def __init__(
        self, root: str | Path, drive_name: str, streams: tuple[str, ...] | list[str] | None = None
    ) -> None:
        self.root = Path(root)
        ref = find_drive(self.root, drive_name)
        self.date, self.name, self.path = ref.date, ref.name, ref.path
        if streams is None:
            streams = tuple(s for s in STREAMS if (self.path / s).is_dir())
            if not streams:
                raise DataError(f"no KITTI stream folders (expected some of {STREAMS})", self.path)
        unknown = [s for s in streams if s not in STREAMS]
        if unknown:
            raise ValueError(f"unknown KITTI raw streams {unknown}; known: {STREAMS}")
        self.streams = tuple(streams)
        counts = {}
        for stream in self.streams:
            stream_dir = self.path / stream
            if not stream_dir.is_dir():
                raise DataError(f"missing stream folder {stream!r}", stream_dir)
            n = _frame_files(stream_dir, _EXTENSION[stream])
            n_stamps = _count_lines(stream_dir / "timestamps.txt")
            if n_stamps != n:
                raise DataError(
                    f"{n_stamps} timestamps but {n} frames in data/", stream_dir / "timestamps.txt"
                )
            counts[stream] = n
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{s}: {n}" for s, n in counts.items())
            raise DataError(f"streams hold different numbers of frames ({detail})", self.path)
        self.n_frames = next(iter(counts.values()))

    def __len__(self) -> int:
        return self.n_frames

    def __repr__(self) -> str:
        return f"KittiRawDrive({self.name!r}, n_frames={self.n_frames}, streams={self.streams})"

    # -- paths ------------------------------------------------------------------------------

    def frame_path(self, stream: str, idx: int) -> Path:
        if stream not in self.streams:
            raise DataError(
                f"stream {stream!r} was not opened (opened: {self.streams})", self.path / stream
            )
        if not 0 <= idx < self.n_frames:
            raise IndexError(f"{self.name}: frame {idx} out of range [0, {self.n_frames})")
        return self.path / stream / "data" / f"{idx:010d}{_EXTENSION[stream]}"

    # -- streams ----------------------------------------------------------------------------

    def image_size(self, camera: str = "image_02") -> tuple[int, int]:
        """(height, width) of `camera`'s images (read from the first PNG's header)."""
        return png_size(self.frame_path(CAMERAS[_camera_index(camera)], 0))

    def read_image(self, camera: str, idx: int) -> np.ndarray:
        """uint8 [H, W, 3] RGB (image_02/03) or [H, W, 1] grey (image_00/01)."""
        return read_png(self.frame_path(CAMERAS[_camera_index(camera)], idx))

    def read_velodyne(self, idx: int) -> np.ndarray:
        """float32 [N, 4] (x, y, z, reflectance) in the velodyne frame, ring-major order."""
        return read_velodyne_bin(self.frame_path("velodyne_points", idx))

    def timestamps(self, stream: str, which: str = "") -> np.ndarray:
        """datetime64[ns] [N] of `stream`; `which` = "start" / "end" for the velodyne sweep."""
        name = f"timestamps_{which}.txt" if which else "timestamps.txt"
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r}; known: {STREAMS}")
        return read_timestamps(self.path / stream / name)

    def oxts(self, idx: int) -> OxtsPacket:
        """The GPS/IMU packet of frame `idx`."""
        path = self.frame_path("oxts", idx)
        try:
            tokens = path.read_text().split()
        except OSError as err:
            raise DataError(f"cannot read oxts packet ({err})", path) from err
        if len(tokens) != len(OXTS_FIELDS):
            raise DataError(f"expected {len(OXTS_FIELDS)} values, got {len(tokens)}", path)
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            raise DataError("non-numeric oxts value", path) from None
        if not np.all(np.isfinite(values[:6])):
            raise DataError("non-finite position / orientation", path)
        return OxtsPacket(*values[:25], *(int(v) for v in values[25:]))

    def oxts_array(self) -> np.ndarray:
        """float64 [N, 30] of all packets."""
        return np.array([self.oxts(i) for i in range(self.n_frames)], dtype=np.float64)

    @functools.cached_property
    def calib(self) -> RawCalibration:
        """The date's calibration (read on first use)."""
        return RawCalibration.from_folder(self.root / self.date)

    def poses(self, sensor: str = "imu", relative: bool = True) -> np.ndarray:
        """World poses [N, 4, 4] float64 of the IMU (world_T_imu) or the velodyne (world_T_velo).

        From oxts with KITTI's Mercator conversion (`poses_from_oxts`); the velodyne pose is
        world_T_imu @ inv(T_imu_to_velo). `relative`: expressed in the first frame's pose
        (the devkit's convention; first pose = identity); else absolute Mercator metres.
        """
        world_T_imu = poses_from_oxts(self.oxts_array())
        if sensor == "imu":
            poses = world_T_imu
        elif sensor in ("velodyne", "velodyne_points"):
            poses = world_T_imu @ np.linalg.inv(self.calib.T_imu_to_velo)
        else:
            raise ValueError(f"sensor must be 'imu' or 'velodyne', got {sensor!r}")
        return relative_to_first(poses) if relative else poses
