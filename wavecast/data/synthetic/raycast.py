"""Vectorised ray casting against the analytic primitives of the synthetic street.

The scene at one instant is a set of primitives: one horizontal plane (the ground), yawed boxes
(facades, pavements, cars) and vertical cylinders (poles, pedestrians). A ray set shares one
origin (a sensor at one instant) and knows which block of its rays can hit a primitive
("culling"): a rectangle of pixels for a pinhole camera, a band of beams x azimuth columns for a
spinning scanner. Only that block is intersected, so a frame costs about
(number of rays x depth complexity) instead of (number of rays x number of primitives).

A hand-written caster rather than a ray-tracing library: the geometry is a few dozen analytic
shapes, NumPy is enough, and there is no extra dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PLANE, BOX, CYLINDER = 0, 1, 2
NO_HIT = -1
# Corner index pairs of the 12 box edges (corners ordered as in Primitives: x, y, z signs).
_EDGES = np.array(
    [[0, 4], [1, 5], [2, 6], [3, 7], [0, 2], [1, 3], [4, 6], [5, 7], [0, 1], [2, 3], [4, 5], [6, 7]]
)


@dataclass
class Primitives:
    """Scene geometry at one instant in the world frame (x along the street, z up).

    kind [K] (PLANE / BOX / CYLINDER), center [K, 3], yaw [K] (rotation about z of the local frame),
    half [K, 3] half extents in the local frame (cylinder: radius, radius, half height; plane:
    unused, its height is center z and it faces +z).
    """

    kind: np.ndarray
    center: np.ndarray
    yaw: np.ndarray
    half: np.ndarray

    def __post_init__(self) -> None:
        k = len(self.kind)
        if self.center.shape != (k, 3) or self.half.shape != (k, 3) or self.yaw.shape != (k,):
            raise ValueError(
                f"Primitives: center {self.center.shape}, half {self.half.shape}, yaw "
                f"{self.yaw.shape} do not match kind [{k}]"
            )
        self.cos = np.cos(self.yaw)
        self.sin = np.sin(self.yaw)
        # The 8 corners [K, 8, 3] of each primitive's bounding box in the world frame (culling).
        signs = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1], indexing="ij")).reshape(3, 8).T
        local = signs[None] * self.half[:, None]  # [K, 8, 3]
        c, s = self.cos[:, None], self.sin[:, None]
        self.corners = self.center[:, None] + np.stack(
            [
                c * local[..., 0] - s * local[..., 1],
                s * local[..., 0] + c * local[..., 1],
                local[..., 2],
            ],
            axis=-1,
        )

    def to_local(self, k: int, point: np.ndarray) -> np.ndarray:
        """A world point [3] in the local frame of primitive k [3]."""
        p = point - self.center[k]
        c, s = self.cos[k], self.sin[k]
        return np.array([c * p[0] + s * p[1], -s * p[0] + c * p[1], p[2]])

    def intersect(self, k: int, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Distance along each ray [...] to the first hit of primitive k (inf: no hit).

        origin [3], dirs [..., 3] (unit vectors, so the distance is the range).
        """
        kind = self.kind[k]
        dz = dirs[..., 2]
        if kind == PLANE:
            return _intersect_plane(self.center[k, 2], origin, dz)
        o = self.to_local(k, origin)
        if self.yaw[k] == 0.0:
            dx, dy = dirs[..., 0], dirs[..., 1]
        else:
            c, s = self.cos[k], self.sin[k]
            dx = c * dirs[..., 0] + s * dirs[..., 1]
            dy = -s * dirs[..., 0] + c * dirs[..., 1]
        if kind == BOX:
            return _intersect_box(self.half[k], o, (dx, dy, dz))
        if kind == CYLINDER:
            return _intersect_cylinder(self.half[k, 0], self.half[k, 2], o, (dx, dy, dz))
        raise ValueError(f"unknown primitive kind {kind} at index {k}")


def _intersect_plane(z: float, origin: np.ndarray, dz: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (z - origin[2]) / dz
    return np.where(t > 0, t, np.inf)


def _intersect_box(half: np.ndarray, o: np.ndarray, d: tuple[np.ndarray, ...]) -> np.ndarray:
    # Slab method, one axis at a time (reductions over a length-3 last axis are slow in NumPy);
    # a zero direction component gives +-inf bounds that fmin/fmax handle.
    t_near = t_far = None
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(3):
            inv = 1.0 / d[i]
            a = (-half[i] - o[i]) * inv
            b = (half[i] - o[i]) * inv
            lo, hi = np.fmin(a, b), np.fmax(a, b)
            t_near = lo if t_near is None else np.fmax(t_near, lo)
            t_far = hi if t_far is None else np.fmin(t_far, hi)
    hit = (t_near <= t_far) & (t_near > 0)
    return np.where(hit, t_near, np.inf)


def _intersect_cylinder(
    r: float, hz: float, o: np.ndarray, d: tuple[np.ndarray, ...]
) -> np.ndarray:
    dx, dy, dz = d
    a = dx * dx + dy * dy
    b = o[0] * dx + o[1] * dy
    c = o[0] ** 2 + o[1] ** 2 - r * r
    disc = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        side_ok = (disc >= 0) & (a > 0) & (t_side > 0) & (np.abs(o[2] + t_side * dz) <= hz)
        t = np.where(side_ok, t_side, np.inf)
        for zc in (hz, -hz):
            t_cap = (zc - o[2]) / dz
            x = o[0] + t_cap * dx
            y = o[1] + t_cap * dy
            cap_ok = (t_cap > 0) & (x * x + y * y <= r * r)
            t = np.where(cap_ok & (t_cap < t), t_cap, t)
    return t


def cast(
    prims: Primitives, rays: RaySet, max_range: float = np.inf
) -> tuple[np.ndarray, np.ndarray]:
    """First hit of every ray: distance [...] (inf: none) and primitive index [...] (NO_HIT)."""
    shape = rays.dirs.shape[:-1]
    t = np.full(shape, np.inf)
    obj = np.full(shape, NO_HIT, dtype=np.int32)
    for k, blk in rays.blocks(prims, max_range):
        tk = prims.intersect(k, rays.origin, rays.dirs[blk])
        if isinstance(blk[0], np.ndarray):  # scattered rays: fancy indexing copies
            closer = tk < t[blk]
            t[blk] = np.where(closer, tk, t[blk])
            obj[blk] = np.where(closer, k, obj[blk])
        else:  # slices are views: update in place
            t_view, obj_view = t[blk], obj[blk]
            closer = tk < t_view
            np.copyto(t_view, tk, where=closer)
            obj_view[closer] = k
    far = t > max_range
    t[far] = np.inf
    obj[far] = NO_HIT
    return t, obj


class RaySet:
    """Rays from one origin [3] with unit directions dirs [..., 3] (world frame)."""

    origin: np.ndarray
    dirs: np.ndarray

    def blocks(self, prims: Primitives, max_range: float) -> list[tuple[int, tuple]]:
        """(primitive k, index expression into dirs) pairs covering every ray that can hit k.

        Bounds are computed for all primitives at once (a per-primitive NumPy call costs more
        than the arithmetic); the base class tests every ray against every primitive.
        """
        return [(k, (Ellipsis,)) for k in range(len(prims.kind))]


class ScanGrid(RaySet):
    """Rays of a level spinning scanner: dirs [n_rows, n_cols, 3].

    Rows are beams at `elevation` [n_rows] (radians, strictly decreasing: top beam first),
    columns are azimuths az0 + j * az_step (radians, from +x towards +y in the sensor frame,
    uniform; az_step may be negative). `world_R_sensor` [3, 3] must keep z up (yaw only).
    """

    def __init__(
        self,
        origin: np.ndarray,
        world_R_sensor: np.ndarray,
        elevation: np.ndarray,
        az0: float,
        az_step: float,
        n_cols: int,
    ) -> None:
        if np.any(np.diff(elevation) >= 0):
            raise ValueError("ScanGrid: elevation must be strictly decreasing (top beam first)")
        if abs(world_R_sensor[2, 2] - 1.0) > 1e-9:
            raise ValueError("ScanGrid: the scanner must be level (world_R_sensor yaw only)")
        self.origin = np.asarray(origin, dtype=np.float64)
        self.R = world_R_sensor
        self.elevation = elevation
        self.az0, self.az_step, self.n_cols = az0, az_step, n_cols
        az = az0 + az_step * np.arange(n_cols)
        ce = np.cos(elevation)[:, None]
        local = np.empty((len(elevation), n_cols, 3))
        local[..., 0] = ce * np.cos(az)[None]
        local[..., 1] = ce * np.sin(az)[None]
        local[..., 2] = np.sin(elevation)[:, None]
        self.local_dirs = local
        self.dirs = local @ world_R_sensor.T
        self._row_margin = np.max(-np.diff(elevation)) if len(elevation) > 1 else 0.0

    def blocks(self, prims: Primitives, max_range: float) -> list[tuple[int, tuple]]:
        o = self.origin
        # Horizontal distance from the sensor to each footprint (box: clamp in the local frame).
        d = o[:2] - prims.center[:, :2]
        lx = prims.cos * d[:, 0] + prims.sin * d[:, 1]
        ly = -prims.sin * d[:, 0] + prims.cos * d[:, 1]
        hx, hy, hz = prims.half[:, 0], prims.half[:, 1], prims.half[:, 2]
        d_box = np.hypot(lx - np.clip(lx, -hx, hx), ly - np.clip(ly, -hy, hy))
        d_cyl = np.maximum(0.0, np.hypot(lx, ly) - hx)
        d_min = np.where(prims.kind == CYLINDER, d_cyl, d_box)
        corners = (prims.corners - o) @ self.R  # [K, 8, 3] sensor frame
        d_max = np.max(np.hypot(corners[..., 0], corners[..., 1]), axis=1)
        z_lo = prims.center[:, 2] - hz - o[2]
        z_hi = prims.center[:, 2] + hz - o[2]
        # Elevation bounds of a convex solid seen from outside its footprint (conservative).
        el_hi = np.arctan2(z_hi, np.where(z_hi > 0, d_min, d_max)) + self._row_margin
        el_lo = np.arctan2(z_lo, np.where(z_lo < 0, d_min, d_max)) - self._row_margin
        neg_el = -self.elevation  # increasing
        row0 = np.searchsorted(neg_el, -el_hi, side="left")
        row1 = np.searchsorted(neg_el, -el_lo, side="right")
        # Azimuth interval from the corners, relative to the direction of the centre.
        c = (prims.center - o) @ self.R
        ref = np.arctan2(c[:, 1], c[:, 0])
        rel = np.arctan2(corners[..., 1], corners[..., 0]) - ref[:, None]
        rel = (rel + np.pi) % (2 * np.pi) - np.pi
        r_lo, r_hi = rel.min(axis=1), rel.max(axis=1)
        c_mid = (ref + 0.5 * (r_lo + r_hi) - self.az0) / self.az_step
        hw = 0.5 * (r_hi - r_lo) / abs(self.az_step) + 1.5
        n = self.n_cols
        out: list[tuple[int, tuple]] = []
        for k in range(len(prims.kind)):
            if prims.kind[k] == PLANE:
                out.append((k, (Ellipsis,)))
                continue
            if d_min[k] > max_range:
                continue
            if d_min[k] < 0.05:  # the sensor is above or inside the footprint
                out.append((k, (slice(None), slice(None))))
                continue
            rows = slice(int(row0[k]), int(row1[k]))
            if rows.start >= rows.stop:
                continue
            if 2 * hw[k] + 1 >= n:
                out.append((k, (rows, slice(None))))
                continue
            lo = int(np.floor(c_mid[k] - hw[k]))
            width = int(np.ceil(c_mid[k] + hw[k])) + 1 - lo
            lo %= n
            if lo + width <= n:
                out.append((k, (rows, slice(lo, lo + width))))
            else:
                out.append((k, (rows, slice(lo, n))))
                out.append((k, (rows, slice(0, lo + width - n))))
        return out


class PinholeRays(RaySet):
    """Rays of a pinhole camera: one per pixel centre (u = column, v = row), dirs [H, W, 3].

    `K` [3, 3] intrinsics, `world_R_cam` [3, 3] (columns: camera x right, y down, z forward in
    the world frame), `origin` [3] the optical centre in the world frame.
    """

    near = 0.05

    def __init__(
        self, origin: np.ndarray, world_R_cam: np.ndarray, K: np.ndarray, width: int, height: int
    ) -> None:
        self.origin = np.asarray(origin, dtype=np.float64)
        self.K, self.width, self.height = K, width, height
        self.R = world_R_cam
        # Calibration files round rotations to 7 digits: invert rather than transpose, so that
        # projecting a ray's points lands exactly on its pixel.
        self.R_inv = np.linalg.inv(world_R_cam)
        # Unit length up to the 1e-7 rounding of the calibration rotations.
        self.dirs = pixel_directions(K, width, height) @ world_R_cam.T

    def project(
        self, points: np.ndarray, directions: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """World points [..., 3] (or directions) -> pixel coordinates [..., 2] and depth [...]."""
        p = points if directions else points - self.origin
        cam = p @ self.R_inv.T
        uvw = cam @ self.K.T
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = uvw[..., :2] / uvw[..., 2:3]
        return uv, cam[..., 2]

    def pixel_rects(self, prims: Primitives) -> tuple[np.ndarray, np.ndarray]:
        """Image bounding rectangles [K, 4] (u0, u1, v0, v1) of all primitives, and visible [K].

        Each bounding box is clipped to the near plane (corners in front plus the points where
        its edges cross the plane), so long boxes beside the camera do not cover the whole
        image. visible is False for boxes wholly behind the camera.
        """
        cam = (prims.corners - self.origin) @ self.R_inv.T  # [K, 8, 3]
        near = self.near
        a, b = cam[:, _EDGES[:, 0]], cam[:, _EDGES[:, 1]]  # [K, 12, 3]
        za, zb = a[..., 2], b[..., 2]
        cross = (za > near) != (zb > near)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(cross, (near - za) / (zb - za), 0.0)
        pts = np.concatenate([cam, a + w[..., None] * (b - a)], axis=1)  # [K, 20, 3]
        use = np.concatenate([cam[..., 2] > near, cross], axis=1)
        uvw = pts @ self.K.T
        with np.errstate(divide="ignore", invalid="ignore"):
            u = uvw[..., 0] / uvw[..., 2]
            v = uvw[..., 1] / uvw[..., 2]
        rect = np.stack(
            [
                np.where(use, u, np.inf).min(1) - 1,
                np.where(use, u, -np.inf).max(1) + 1,
                np.where(use, v, np.inf).min(1) - 1,
                np.where(use, v, -np.inf).max(1) + 1,
            ],
            axis=1,
        )
        return rect, use.any(axis=1)

    def blocks(self, prims: Primitives, max_range: float) -> list[tuple[int, tuple]]:
        rect, visible = self.pixel_rects(prims)
        u0 = np.floor(np.clip(rect[:, 0], 0, self.width)).astype(int)
        u1 = np.ceil(np.clip(rect[:, 1], -1, self.width - 1)).astype(int) + 1
        v0 = np.floor(np.clip(rect[:, 2], 0, self.height)).astype(int)
        v1 = np.ceil(np.clip(rect[:, 3], -1, self.height - 1)).astype(int) + 1
        keep = visible & (u0 < u1) & (v0 < v1)
        out: list[tuple[int, tuple]] = []
        for k in range(len(prims.kind)):
            if prims.kind[k] == PLANE:
                out.append((k, (Ellipsis,)))
            elif keep[k]:
                out.append((k, (slice(v0[k], v1[k]), slice(u0[k], u1[k]))))
        return out


def pixel_directions(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Unit K^-1 [u, v, 1] for every pixel centre [H, W, 3] (cached: cameras repeat every frame)."""
    key = (K.tobytes(), width, height)
    if key not in _PIXEL_DIRS:
        u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
        pix = np.stack([u, v, np.ones_like(u)], axis=-1)
        _PIXEL_DIRS.clear()  # one rig at a time; keeps the cache tiny
        dirs = pix @ np.linalg.inv(K).T
        _PIXEL_DIRS[key] = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
    return _PIXEL_DIRS[key]


_PIXEL_DIRS: dict[tuple, np.ndarray] = {}


class ScatteredCameraRays(RaySet):
    """Arbitrary rays [N] from a camera's centre, culled by their pixel coordinates uv [N, 2]."""

    def __init__(self, camera: PinholeRays, dirs: np.ndarray, uv: np.ndarray) -> None:
        self.camera = camera
        self.origin = camera.origin
        self.dirs = dirs
        self.uv = uv

    def blocks(self, prims: Primitives, max_range: float) -> list[tuple[int, tuple]]:
        rect, visible = self.camera.pixel_rects(prims)
        u, v = self.uv[:, 0], self.uv[:, 1]
        out: list[tuple[int, tuple]] = []
        for k in range(len(prims.kind)):
            if prims.kind[k] == PLANE:
                out.append((k, (Ellipsis,)))
            elif visible[k]:
                r = rect[k]
                idx = np.nonzero((u >= r[0]) & (u <= r[1]) & (v >= r[2]) & (v <= r[3]))[0]
                if len(idx):
                    out.append((k, (idx,)))
        return out
