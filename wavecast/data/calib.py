"""KITTI calibration files: ``key: values`` lines.

Used by calib_cam_to_cam.txt, calib_velo_to_cam.txt, calib_imu_to_velo.txt (raw) and by the
odometry benchmark's calib.txt (``P0: ...``, ``Tr: ...``). Numeric values become float64 arrays;
a value whose first token is not a number (``calib_time: 09-Jan-2012 13:57:47``) stays a string.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from wavecast.data.errors import DataError


class CalibFile(Mapping[str, "np.ndarray | str"]):
    """The parsed entries of one calibration file, with shape-checked accessors.

    `entries[key]` is a float64 array [K] (or a string); `matrix(key, (3, 4))` reshapes and names
    the file and key when the entry is missing or has the wrong number of values.
    """

    def __init__(self, path: str | Path, entries: dict[str, np.ndarray | str]) -> None:
        self.path = Path(path)
        self._entries = entries

    def __getitem__(self, key: str) -> np.ndarray | str:
        try:
            return self._entries[key]
        except KeyError:
            raise DataError(
                f"no calibration entry {key!r} (has: {', '.join(self._entries)})", self.path
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def matrix(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        """Entry `key` reshaped to `shape` (float64); DataError naming file and key otherwise."""
        value = self[key]
        n = int(np.prod(shape))
        if isinstance(value, str) or value.size != n:
            got = "text" if isinstance(value, str) else f"{value.size} values"
            raise DataError(f"entry {key!r} should hold {n} numbers {shape}, got {got}", self.path)
        return value.reshape(shape).copy()

    def rigid(self, rotation_key: str = "R", translation_key: str = "T") -> np.ndarray:
        """[4, 4] homogeneous transform from a rotation [3, 3] and a translation [3] entry."""
        out = np.eye(4)
        out[:3, :3] = self.matrix(rotation_key, (3, 3))
        out[:3, 3] = self.matrix(translation_key, (3,))
        return out

    def __repr__(self) -> str:
        return f"CalibFile({str(self.path)!r}, keys={list(self._entries)})"


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def parse_calib_text(text: str, path: str | Path = "<calib>") -> CalibFile:
    """Parse ``key: values`` lines; errors name `path` and the 1-based line number."""
    entries: dict[str, np.ndarray | str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or not key:
            raise DataError(f"line {lineno}: expected 'key: values', got {line.strip()!r}", path)
        if key in entries:
            raise DataError(f"line {lineno}: duplicate key {key!r}", path)
        tokens = value.split()
        if tokens and _is_number(tokens[0]):
            try:
                arr = np.array([float(t) for t in tokens], dtype=np.float64)
            except ValueError:
                raise DataError(
                    f"line {lineno}: key {key!r} mixes numbers and text: {value.strip()!r}", path
                ) from None
            if not np.all(np.isfinite(arr)):
                raise DataError(f"line {lineno}: key {key!r} holds non-finite values", path)
            entries[key] = arr
        else:
            entries[key] = value.strip()
    return CalibFile(path, entries)


def read_calib_file(path: str | Path) -> CalibFile:
    """Read and parse one calibration file (DataError when missing or unreadable)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError("calibration file not found", path) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read calibration file ({err})", path) from err
    return parse_calib_text(text, path)
