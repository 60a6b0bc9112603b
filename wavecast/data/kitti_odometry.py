"""KITTI odometry benchmark sequences: images, velodyne scans, calib.txt, times.txt, poses.

Layout (data.md)::

    <root>/sequences/NN/{image_2/%06d.png, velodyne/%06d.bin, calib.txt, times.txt}
    <root>/poses/NN.txt        (3x4 row-major per line, camera-0 poses; sequences 00-10 only)

The LiDAR forecasting protocol splits by sequence: train 00-05, val 06-07, test 08-10, with
5 past -> 5 future frames.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from wavecast.data.calib import CalibFile, read_calib_file
from wavecast.data.errors import DataError
from wavecast.data.kitti_raw import read_png, read_velodyne_bin

ODOMETRY_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("00", "01", "02", "03", "04", "05"),
    "val": ("06", "07"),
    "test": ("08", "09", "10"),
}
FORECAST_N_OBS, FORECAST_N_PRED = 5, 5
ODOMETRY_STREAMS = ("image_0", "image_1", "image_2", "image_3", "velodyne")
_EXTENSION = {
    "image_0": ".png",
    "image_1": ".png",
    "image_2": ".png",
    "image_3": ".png",
    "velodyne": ".bin",
}
_FRAME_PATTERN = re.compile(r"^\d{6}$")


def sequence_name(seq: str | int) -> str:
    """``3`` / ``"3"`` / ``"03"`` -> ``"03"``."""
    s = str(seq).strip()
    if not s.isdigit():
        raise DataError(f"{seq!r} is not an odometry sequence number (e.g. '00', '08')")
    return f"{int(s):02d}"


def list_sequences(root: str | Path) -> list[str]:
    """Sequence names present under `root`/sequences (sorted)."""
    seq_dir = Path(root) / "sequences"
    if not seq_dir.is_dir():
        raise DataError("no sequences/ folder: not a KITTI odometry root", seq_dir)
    return sorted(p.name for p in seq_dir.iterdir() if p.is_dir() and p.name.isdigit())


def read_poses_file(path: str | Path) -> np.ndarray:
    """3x4 row-major poses per line -> [N, 4, 4] float64."""
    path = Path(path)
    rows = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError("poses file not found", path) from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            vals = [float(v) for v in line.split()]
        except ValueError:
            raise DataError(f"line {lineno}: non-numeric pose value", path) from None
        if len(vals) != 12:
            raise DataError(f"line {lineno}: expected 12 values (3x4), got {len(vals)}", path)
        rows.append(vals)
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    if rows:
        poses[:, :3, :] = np.array(rows).reshape(-1, 3, 4)
    return poses


def _count_frames(folder: Path, ext: str) -> int:
    if not folder.is_dir():
        raise DataError("missing folder", folder)
    idx = sorted(
        int(p.stem) for p in folder.iterdir() if p.suffix == ext and _FRAME_PATTERN.match(p.stem)
    )
    if idx and idx[-1] != len(idx) - 1:
        missing = sorted(set(range(idx[-1] + 1)) - set(idx))
        raise DataError(f"frames are not numbered 0..{len(idx) - 1}: missing {missing[:5]}", folder)
    return len(idx)


class KittiOdometrySequence:
    """One odometry sequence.

    Args:
        root: the odometry root (holding ``sequences/`` and optionally ``poses/``).
        seq: sequence name or number (``"08"``, ``8``).
        streams: streams this reader needs among ``image_0..3``, ``velodyne``; each must hold as
            many frames as times.txt has lines. None: every stream present.
    """

    def __init__(
        self, root: str | Path, seq: str | int, streams: tuple[str, ...] | list[str] | None = None
    ) -> None:
        self.root = Path(root)
        self.name = sequence_name(seq)
        self.path = self.root / "sequences" / self.name
        if not self.path.is_dir():
            available = list_sequences(self.root)
            raise DataError(
                f"unknown sequence {self.name!r}; available: {', '.join(available) or '(none)'}",
                self.root / "sequences",
            )
        self.n_frames = len(self.times())
        if streams is None:
            streams = tuple(s for s in ODOMETRY_STREAMS if (self.path / s).is_dir())
        bad = [s for s in streams if s not in ODOMETRY_STREAMS]
        if bad:
            raise ValueError(f"unknown odometry streams {bad}; known: {ODOMETRY_STREAMS}")
        self.streams = tuple(streams)
        for stream in self.streams:
            n = _count_frames(self.path / stream, _EXTENSION[stream])
            if n != self.n_frames:
                raise DataError(
                    f"{n} frames but times.txt has {self.n_frames} lines", self.path / stream
                )

    def __len__(self) -> int:
        return self.n_frames

    def __repr__(self) -> str:
        return f"KittiOdometrySequence({self.name!r}, n_frames={self.n_frames}, streams={self.streams})"

    def frame_path(self, stream: str, idx: int) -> Path:
        if stream not in self.streams:
            raise DataError(
                f"stream {stream!r} not available (have {self.streams})", self.path / stream
            )
        if not 0 <= idx < self.n_frames:
            raise IndexError(f"sequence {self.name}: frame {idx} out of range [0, {self.n_frames})")
        return self.path / stream / f"{idx:06d}{_EXTENSION[stream]}"

    def times(self) -> np.ndarray:
        """Seconds since the sequence start [N] float64."""
        path = self.path / "times.txt"
        try:
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        except FileNotFoundError:
            raise DataError("times.txt not found", path) from None
        try:
            return np.array([float(ln) for ln in lines], dtype=np.float64)
        except ValueError:
            raise DataError("non-numeric time value", path) from None

    def read_image(self, idx: int, camera: str = "image_2") -> np.ndarray:
        """uint8 [H, W, 3] RGB (image_2/3) or [H, W, 1] grey (image_0/1)."""
        return read_png(self.frame_path(camera, idx))

    def read_velodyne(self, idx: int) -> np.ndarray:
        """float32 [N, 4] (x, y, z, reflectance), ring-major order."""
        return read_velodyne_bin(self.frame_path("velodyne", idx))

    @functools.cached_property
    def calib_file(self) -> CalibFile:
        return read_calib_file(self.path / "calib.txt")

    def P(self, camera: int) -> np.ndarray:
        """[3, 4] rectified projection of camera 0..3 (``P0`` .. ``P3``)."""
        return self.calib_file.matrix(f"P{int(camera)}", (3, 4))

    @property
    def T_velo_to_cam(self) -> np.ndarray:
        """[4, 4] velodyne -> (rectified) camera 0 (``Tr``)."""
        out = np.eye(4)
        out[:3] = self.calib_file.matrix("Tr", (3, 4))
        return out

    @property
    def poses_path(self) -> Path:
        return self.root / "poses" / f"{self.name}.txt"

    @property
    def has_poses(self) -> bool:
        return self.poses_path.is_file()

    def poses(self) -> np.ndarray:
        """Camera-0 poses [N, 4, 4] (world = first camera-0 frame); DataError when absent."""
        if not self.has_poses:
            raise DataError(
                "no ground-truth poses (published for sequences 00-10 only)", self.poses_path
            )
        poses = read_poses_file(self.poses_path)
        if len(poses) != self.n_frames:
            raise DataError(f"{len(poses)} poses for {self.n_frames} frames", self.poses_path)
        return poses

    def velodyne_poses(self) -> np.ndarray:
        """world_T_velodyne [N, 4, 4] = camera-0 pose @ Tr."""
        return self.poses() @ self.T_velo_to_cam
