"""Camera rendering (per-pixel ray casting) and the optical-flow / occlusion ground truth.

Cameras are the four rectified KITTI cameras (00/01 grayscale, 02/03 colour) placed by the
written calibration: camera i sees rectified-camera-0 points X through P_rect_0i = [K | p], so its
centre is -K^-1 p in that frame. A pixel (u = column, v = row) looks along K^-1 [u, v, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wavecast.data.synthetic.appearance import luminance, shade, sky_colour
from wavecast.data.synthetic.raycast import (
    NO_HIT,
    PinholeRays,
    Primitives,
    ScatteredCameraRays,
    cast,
)
from wavecast.data.synthetic.rig import Rig
from wavecast.data.synthetic.scene import Scene
from wavecast.data.synthetic.surface import surface_at


def camera_rays(rig: Rig, cam: int, world_T_velo: np.ndarray) -> PinholeRays:
    """Pixel rays [H, W] of camera `cam` (0..3) for the velodyne pose world_T_velo [4, 4]."""
    world_T_rect = world_T_velo @ np.linalg.inv(rig.rect_T_velo)
    p = rig.P_rect[cam]
    k = p[:, :3]
    centre_rect = -np.linalg.solve(k, p[:, 3])
    origin = world_T_rect[:3, :3] @ centre_rect + world_T_rect[:3, 3]
    width, height = rig.size
    return PinholeRays(origin, world_T_rect[:3, :3], k, width, height)


@dataclass
class Rendering:
    """One camera image and what each pixel sees.

    rgb [H, W, 3] float in [0, 1]; distance [H, W] along the pixel ray (inf: sky);
    obj [H, W] object index (NO_HIT: sky); points [H, W, 3] world hit points (nan: sky).
    """

    rgb: np.ndarray
    distance: np.ndarray
    obj: np.ndarray
    points: np.ndarray

    def to_uint8(self, gray: bool = False) -> np.ndarray:
        img = luminance(self.rgb) if gray else self.rgb
        return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render(scene: Scene, prims: Primitives, rays: PinholeRays) -> Rendering:
    """Ray-cast one camera image of the scene state `prims`."""
    dist, obj = cast(prims, rays)
    h, w = dist.shape
    flat_d = rays.dirs.reshape(-1, 3)
    flat_t = dist.ravel()
    flat_o = obj.ravel()
    hit = flat_o != NO_HIT
    rgb = np.empty((h * w, 3))
    points = np.full((h * w, 3), np.nan)
    points[hit] = rays.origin + flat_t[hit, None] * flat_d[hit]
    rgb[~hit] = sky_colour(flat_d[~hit])
    if hit.any():
        # Pixel footprint on the surface (metres): the pre-filter width of the textures.
        pixel_angle = 1.0 / rays.K[0, 0]
        albedo, normals = surface_at(
            prims, scene.textures, flat_o[hit], points[hit], flat_d[hit], flat_t[hit] * pixel_angle
        )
        rgb[hit] = albedo * shade(normals)[:, None]
    return Rendering(rgb.reshape(h, w, 3), dist, obj, points.reshape(h, w, 3))


def optical_flow(
    scene: Scene,
    frame: Rendering,
    rays_t0: PinholeRays,
    prims_t1: Primitives,
    rays_t1: PinholeRays,
    dt: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth flow [H, W, 2] (dx right, dy down, pixels) and valid [H, W] from t0 to t1.

    Each pixel's 3D point moves with its object (static ones stay; sky points are directions and
    move only by the camera rotation) and is projected into the camera at t1. valid: the point
    lands inside [0, W-1] x [0, H-1] (where bilinear sampling is defined) and the first hit of a
    ray cast from the t1 camera towards it is the point itself (not occluded).
    flow is the projection wherever the point is in front of the t1 camera, 0 where it is not.
    """
    h, w = frame.distance.shape
    obj = frame.obj.ravel()
    hit = obj != NO_HIT
    pts = frame.points.reshape(-1, 3).copy()
    pts[hit] += scene.velocity[obj[hit]] * dt
    dirs0 = rays_t0.dirs.reshape(-1, 3)
    uv = np.empty((h * w, 2))
    depth = np.empty(h * w)
    uv[hit], depth[hit] = rays_t1.project(pts[hit])
    uv[~hit], depth[~hit] = rays_t1.project(dirs0[~hit], directions=True)
    front = depth > 1e-6
    u, v = uv[:, 0], uv[:, 1]
    inside = front & (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)

    # Visibility at t1: cast from the t1 camera centre towards each candidate point.
    idx = np.nonzero(inside)[0]
    target = np.where(hit[idx, None], pts[idx] - rays_t1.origin, dirs0[idx])
    dist = np.linalg.norm(target, axis=-1)
    vis_dirs = target / dist[:, None]
    t_vis, _ = cast(prims_t1, ScatteredCameraRays(rays_t1, vis_dirs, uv[idx]))
    tol = 1e-3 + 1e-4 * dist
    visible = np.where(hit[idx], t_vis >= dist - tol, np.isinf(t_vis))
    valid = np.zeros(h * w, dtype=bool)
    valid[idx[visible]] = True

    grid_u, grid_v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    flow = np.zeros((h, w, 2), dtype=np.float32)
    flow_front = np.stack([u - grid_u.ravel(), v - grid_v.ravel()], axis=-1)
    flow.reshape(-1, 2)[front] = flow_front[front]
    return flow, valid.reshape(h, w)
