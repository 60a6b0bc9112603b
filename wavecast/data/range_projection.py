"""LiDAR range images: point cloud <-> [H, W] range image, and range normalisation.

Two ways of choosing a point's cell (`RangeProjection(method=...)`):

* ``spherical`` (RangeNet++, LiDARGen, LiDM): with r = |p|, yaw = -atan2(y, x),
  pitch = asin(z / r), fov = fov_up - fov_down::

      u = floor(0.5 (yaw / pi + 1) W),  v = floor((1 - (pitch + |fov_down|) / fov) H), clamped.

  With the HDL-64E's real beam angles and this linear pitch map some rows stay empty and some
  beams share rows.
* ``unfolding`` (scan unfolding): the row is the laser ring recovered from the storage order of
  the .bin file. KITTI stores the scan ring by ring from the top beam, each ring counter-
  clockwise starting at +x, so the counter-clockwise azimuth atan2(y, x) mod 2 pi grows along a
  ring and jumps back (here: by more than `ring_break` rad) where the next ring starts. Rings
  are counted from the last one (bottom row H-1 = last ring), because the rings that can be
  missing altogether are the top ones looking at the sky. The column is the nearest firing
  azimuth, u = round(0.5 (yaw / pi + 1) W) mod W: a sensor firing at 2 pi j / W from +x would
  put every ray exactly on a cell boundary under `floor`, and float rounding would then send
  neighbouring rays into the same cell.

In both, when several points fall into one cell the closest one wins (the published "write
far-to-near" rule, done with a sort so that it holds whatever NumPy's scatter order is).
Points with r <= min_range or r > max_range are left out.

Inverse (`unproject`): yaw = pi (2u / W - 1), pitch = (1 - v / H) fov - |fov_down| (or the row's
beam elevation when `row_elevation_deg` is given), x = r cos(pitch) cos(yaw),
y = -r cos(pitch) sin(yaw), z = r sin(pitch). The default uses the cell's corner (u, v), not its
centre (u + 0.5, v + 0.5): the published metrics re-project this way, so the default keeps
parity with them; `cell_center=True` is the unbiased choice for the spherical method (a
point anywhere in the cell is at most half a cell from the centre, a whole cell from the corner).
For ``unfolding`` the corner column is the firing azimuth itself.

Normalisation (`normalize_range` / `denormalize_range`) maps metres to [-1, 1] with empty = -1:
``log2_81`` (log-depth, log2(r + 1) / log2(max_range + 1), = log2(81) at the default 80 m),
``log2_6`` (log2(r + 1) / 6, saturating at 63 m) and ``linear_80`` (r / max_range).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

METHODS = ("spherical", "unfolding")


@dataclass
class RangeImage:
    """One projected scan (all [H, W]; empty cells: range / reflectance -1, xyz 0, index -1).

    range float32 metres; reflectance float32 in [0, 1]; xyz float32 [H, W, 3] (velodyne frame);
    mask bool (cell holds a point); index int64 (row of the point in the input array);
    rings_found: number of rings the unfolding found in the scan (None for spherical).
    """

    range: np.ndarray
    reflectance: np.ndarray
    xyz: np.ndarray
    mask: np.ndarray
    index: np.ndarray
    rings_found: int | None = None


class RangeProjection:
    """Projects point clouds [N, 4] (x, y, z, reflectance) onto [height, width] range images.

    Args:
        height, width: image size (64 rows for the HDL-64E; width 512 / 1024 / 2048).
        fov_up, fov_down: vertical field of view in degrees (+3, -25 for KITTI).
        method: "spherical" or "unfolding" (see the module docstring).
        min_range, max_range: points with r <= min_range or r > max_range are dropped
            (max_range None: no upper limit).
        row_elevation_deg: optional [height] beam elevation of each row (top first), used by
            `unproject` for the unfolding method instead of the linear pitch map.
        ring_break: backward jump of the counter-clockwise azimuth (rad) that starts a new ring.
    """

    def __init__(
        self,
        height: int = 64,
        width: int = 512,
        fov_up: float = 3.0,
        fov_down: float = -25.0,
        method: str = "spherical",
        min_range: float = 1.45,
        max_range: float | None = 80.0,
        row_elevation_deg: list[float] | np.ndarray | None = None,
        ring_break: float = np.pi / 2,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"RangeProjection.method must be one of {METHODS}, got {method!r}")
        if height < 1 or width < 1:
            raise ValueError(
                f"RangeProjection: height and width must be >= 1, got {height}x{width}"
            )
        if not fov_up > fov_down:
            raise ValueError(
                f"RangeProjection: fov_up ({fov_up}) must exceed fov_down ({fov_down})"
            )
        if max_range is not None and not max_range > min_range:
            raise ValueError(
                f"RangeProjection: max_range ({max_range}) must exceed min_range ({min_range})"
            )
        self.height, self.width = int(height), int(width)
        self.fov_up, self.fov_down = float(fov_up), float(fov_down)
        self.method = method
        self.min_range = float(min_range)
        self.max_range = None if max_range is None else float(max_range)
        self.ring_break = float(ring_break)
        if row_elevation_deg is not None:
            row_elevation_deg = np.asarray(row_elevation_deg, dtype=np.float64)
            if row_elevation_deg.shape != (self.height,):
                raise ValueError(
                    f"RangeProjection.row_elevation_deg must have {self.height} values, "
                    f"got shape {row_elevation_deg.shape}"
                )
        self.row_elevation_deg = row_elevation_deg

    def __repr__(self) -> str:
        return (
            f"RangeProjection({self.height}x{self.width}, method={self.method!r}, "
            f"fov=({self.fov_up}, {self.fov_down}), range=({self.min_range}, {self.max_range}))"
        )

    @property
    def fov(self) -> float:
        """Vertical field of view in radians."""
        return np.deg2rad(self.fov_up - self.fov_down)

    @property
    def cell_size(self) -> tuple[float, float]:
        """(vertical, horizontal) angular size of one cell in radians."""
        return self.fov / self.height, 2 * np.pi / self.width

    # -- forward ----------------------------------------------------------------------------

    def _columns(self, x: np.ndarray, y: np.ndarray, nearest: bool) -> np.ndarray:
        yaw = -np.arctan2(y, x)
        u = 0.5 * (yaw / np.pi + 1.0) * self.width
        if nearest:
            return np.floor(u + 0.5).astype(np.int64) % self.width
        return np.clip(np.floor(u).astype(np.int64), 0, self.width - 1)

    def _spherical_rows(self, z: np.ndarray, r: np.ndarray) -> np.ndarray:
        pitch = np.arcsin(np.clip(z / np.maximum(r, 1e-12), -1.0, 1.0))
        v = (1.0 - (pitch + abs(np.deg2rad(self.fov_down))) / self.fov) * self.height
        return np.clip(np.floor(v).astype(np.int64), 0, self.height - 1)

    def ring_index(self, points: np.ndarray) -> np.ndarray:
        """Ring of each point [N] int64 from the storage order (0 = first ring in the file)."""
        az = np.mod(np.arctan2(points[:, 1], points[:, 0]), 2 * np.pi)
        breaks = (az[:-1] - az[1:]) > self.ring_break
        return np.concatenate([[0], np.cumsum(breaks)]).astype(np.int64)

    def cells(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int | None]:
        """(row [N], column [N], keep [N] bool, rings found) of each point, before collisions."""
        points = _check_points(points)
        x, y, z = (points[:, i].astype(np.float64) for i in range(3))
        r = np.sqrt(x * x + y * y + z * z)
        keep = np.isfinite(r) & (r > self.min_range)
        if self.max_range is not None:
            keep &= r <= self.max_range
        rings = None
        if self.method == "spherical":
            rows = self._spherical_rows(z, r)
            cols = self._columns(x, y, nearest=False)
        else:
            ring = self.ring_index(points) if len(points) else np.zeros(0, np.int64)
            rings = int(ring[-1]) + 1 if len(ring) else 0
            rows = ring - (rings - self.height)  # last ring -> bottom row
            keep &= rows >= 0
            rows = np.where(keep, rows, 0)
            cols = self._columns(x, y, nearest=True)
        return rows, cols, keep, rings

    def project(self, points: np.ndarray) -> RangeImage:
        """Points [N, >= 3] (x, y, z[, reflectance]) -> RangeImage [H, W]; closest point per cell."""
        points = _check_points(points)
        rows, cols, keep, rings = self.cells(points)
        h, w = self.height, self.width
        idx = np.flatnonzero(keep)
        r = np.linalg.norm(points[idx, :3].astype(np.float64), axis=1)
        cell = rows[idx] * w + cols[idx]
        order = np.lexsort((r, cell))  # by cell, then nearest first (stable: ties keep file order)
        first = np.ones(len(order), dtype=bool)
        first[1:] = cell[order][1:] != cell[order][:-1]
        win = order[first]
        flat_cell, src = cell[win], idx[win]

        out_range = np.full(h * w, -1.0, dtype=np.float32)
        out_refl = np.full(h * w, -1.0, dtype=np.float32)
        out_xyz = np.zeros((h * w, 3), dtype=np.float32)
        out_index = np.full(h * w, -1, dtype=np.int64)
        out_range[flat_cell] = r[win]
        if points.shape[1] > 3:
            out_refl[flat_cell] = points[src, 3]
        out_xyz[flat_cell] = points[src, :3]
        out_index[flat_cell] = src
        return RangeImage(
            range=out_range.reshape(h, w),
            reflectance=out_refl.reshape(h, w),
            xyz=out_xyz.reshape(h, w, 3),
            mask=(out_index >= 0).reshape(h, w),
            index=out_index.reshape(h, w),
            rings_found=rings,
        )

    # -- inverse ----------------------------------------------------------------------------

    def angles(self, cell_center: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(pitch [H], yaw [W]) in radians of each row / column (corner or centre)."""
        off = 0.5 if cell_center else 0.0
        u = np.arange(self.width) + off
        yaw = np.pi * (2.0 * u / self.width - 1.0)
        if self.method == "unfolding" and self.row_elevation_deg is not None:
            pitch = np.deg2rad(self.row_elevation_deg)
        else:
            v = np.arange(self.height) + off
            pitch = (1.0 - v / self.height) * self.fov - abs(np.deg2rad(self.fov_down))
        return pitch, yaw

    def directions(self, cell_center: bool = False) -> np.ndarray:
        """Unit ray direction of every cell [H, W, 3] float64."""
        pitch, yaw = self.angles(cell_center)
        cp = np.cos(pitch)[:, None]
        return np.stack(
            [
                cp * np.cos(yaw)[None, :],
                -cp * np.sin(yaw)[None, :],
                np.broadcast_to(np.sin(pitch)[:, None], (self.height, self.width)),
            ],
            axis=-1,
        )

    def unproject(
        self, range_image: np.ndarray, cell_center: bool = False, mask: np.ndarray | None = None
    ) -> np.ndarray:
        """Range image [H, W] (metres, <= 0 = empty) -> points [M, 3] float32 of the filled cells.

        Cells in row-major order; `mask` [H, W] overrides the "range > 0" test.
        """
        rng = np.asarray(range_image)
        if rng.shape != (self.height, self.width):
            raise ValueError(
                f"unproject: range image must be [{self.height}, {self.width}], got {list(rng.shape)}"
            )
        valid = rng > 0 if mask is None else np.asarray(mask, dtype=bool)
        dirs = self.directions(cell_center)
        return (dirs[valid] * rng[valid][:, None]).astype(np.float32)


def _check_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(
            f"points must be [N, >= 3] (x, y, z[, reflectance]), got {list(points.shape)}"
        )
    return points


# ----------------------------------------------------------------------------------------------
# Normalisation (NumPy arrays or torch tensors)

NORMALIZATIONS = ("log2_81", "log2_6", "linear_80")


def _xp(x):
    return torch if isinstance(x, torch.Tensor) else np


def _scale(method: str, max_range: float) -> float:
    """Denominator of the [0, 1] code: code = g(r) / scale."""
    if method == "log2_81":
        return float(np.log2(max_range + 1.0))
    if method == "log2_6":
        return 6.0
    if method == "linear_80":
        return float(max_range)
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {method!r}")


def check_normalization(method: str) -> None:
    """ValueError naming the choices when `method` is not a known normalisation."""
    _scale(method, 80.0)


def _encode(r, method: str, max_range: float):
    xp = _xp(r)
    g = xp.log2(r + 1.0) if method.startswith("log2") else r
    return g / _scale(method, max_range)


def _decode(code, method: str, max_range: float):
    xp = _xp(code)
    g = code * _scale(method, max_range)
    return xp.exp2(g) - 1.0 if method.startswith("log2") else g


def _clip(x, lo: float, hi: float):
    return x.clamp(lo, hi) if isinstance(x, torch.Tensor) else np.clip(x, lo, hi)


def normalize_range(
    range_m, method: str = "log2_81", min_range: float = 1.45, max_range: float = 80.0
):
    """Metres [...] -> (image in [-1, 1] [...], mask [...] bool); mask = r > min_range.

    Ranges are clipped to [min_range, max_range] and the [0, 1] code to [0, 1]; empty cells
    (r <= min_range, including the -1 of empty range-image cells) become -1.
    """
    _scale(method, max_range)
    xp = _xp(range_m)
    mask = range_m > min_range
    code = _clip(_encode(_clip(range_m, min_range, max_range), method, max_range), 0.0, 1.0)
    img = xp.where(mask, 2.0 * code - 1.0, -1.0 if xp is np else torch.full_like(code, -1.0))
    if xp is np:
        img = img.astype(np.float32)
    return img, mask


def empty_threshold(
    method: str = "log2_81", min_range: float = 1.45, max_range: float = 80.0
) -> float:
    """Image value below which a cell decodes as empty: half-way between -1 and the code of min_range."""
    code_min = float(np.clip(_encode(np.float64(min_range), method, max_range), 0.0, 1.0))
    return 0.5 * (-1.0 + (2.0 * code_min - 1.0))


def denormalize_range(
    image, method: str = "log2_81", min_range: float = 1.45, max_range: float = 80.0
):
    """Inverse of `normalize_range`: image [...] -> metres [...] with -1 for empty cells.

    A cell is empty when its value is below `empty_threshold` (so a network output slightly
    above -1 still reads as empty); filled cells decode to [min_range, max_range].
    """
    xp = _xp(image)
    valid = image > empty_threshold(method, min_range, max_range)
    code = _clip((image + 1.0) * 0.5, 0.0, 1.0)
    r = _clip(_decode(code, method, max_range), min_range, max_range)
    out = xp.where(valid, r, -1.0 if xp is np else torch.full_like(r, -1.0))
    if xp is np:
        out = out.astype(np.float32)
    return out


def normalize_log_depth(range_m, min_range: float = 1.45, max_range: float = 80.0):
    """Log-depth: log2(r + 1) / log2(max_range + 1) mapped to [-1, 1]; returns (image, mask)."""
    return normalize_range(range_m, "log2_81", min_range, max_range)


def denormalize_log_depth(image, min_range: float = 1.45, max_range: float = 80.0):
    """Exact inverse of `normalize_log_depth` on filled cells; empty cells -> -1."""
    return denormalize_range(image, "log2_81", min_range, max_range)
