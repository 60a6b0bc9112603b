"""The 64-beam spinning LiDAR (HDL-64E-like) and the clean range ground truth.

Beam elevations follow the HDL-64E's two laser blocks: 32 upper beams from +2.0 deg to -8.33 deg
(1/3 deg apart) and 32 lower beams from -8.83 deg to -24.8 deg (about 0.52 deg apart). A scan is
taken at one instant (no rolling shutter) from the velodyne origin. Points are stored ring by
ring from the top beam, each ring counter-clockwise from +x (azimuth 2 pi j / n_azimuth,
increasing from +x towards +y); dropped rays are simply left out, as in the real files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wavecast.data.synthetic.appearance import Textures, lidar_reflectance
from wavecast.data.synthetic.raycast import NO_HIT, Primitives, ScanGrid, cast
from wavecast.data.synthetic.surface import surface_at

HDL64E_ELEVATION_DEG = np.round(
    np.concatenate([np.linspace(2.0, -8.333, 32), np.linspace(-8.833, -24.8, 32)]), 3
)
SPHERICAL_FOV_UP_DEG, SPHERICAL_FOV_DOWN_DEG = 3.0, -25.0


@dataclass(frozen=True)
class Scanner:
    """Sensor model: grid, range noise and ray drop.

    Range noise is Gaussian with std `noise_std` (m), clipped at `noise_clip` sigma. A ray is
    dropped at random with probability `random_drop`, and at grazing incidence with a
    probability rising linearly from 0 at `grazing_start_deg` to 1 at `grazing_end_deg`
    (angle between the ray and the surface normal). Returns beyond `max_range` are lost.
    """

    n_azimuth: int = 1024
    noise_std: float = 0.02
    noise_clip: float = 3.0
    random_drop: float = 0.02
    grazing_start_deg: float = 84.0
    grazing_end_deg: float = 89.5
    max_range: float = 120.0

    @property
    def elevation(self) -> np.ndarray:
        return np.deg2rad(HDL64E_ELEVATION_DEG)

    def grid(self, world_T_velo: np.ndarray) -> ScanGrid:
        return ScanGrid(
            world_T_velo[:3, 3],
            world_T_velo[:3, :3],
            self.elevation,
            0.0,
            2 * np.pi / self.n_azimuth,
            self.n_azimuth,
        )

    def manifest(self) -> dict:
        return {
            "n_beams": len(HDL64E_ELEVATION_DEG),
            "elevation_deg": [float(e) for e in HDL64E_ELEVATION_DEG],
            "n_azimuth": self.n_azimuth,
            "azimuth": "column j at 2*pi*j/n_azimuth rad, from +x towards +y (counter-clockwise)",
            "range_noise_std_m": self.noise_std,
            "range_noise_clip_sigma": self.noise_clip,
            "random_drop_rate": self.random_drop,
            "grazing_drop_deg": [self.grazing_start_deg, self.grazing_end_deg],
            "grazing_drop": "drop probability rises linearly from 0 to 1 between these incidence angles",
            "max_range_m": self.max_range,
            "scan": "instantaneous at the velodyne timestamp (no rolling shutter), from the velodyne origin",
            "reflectance": "clip((0.08 + 0.8 * luma(mean surface colour, lane markings included)) * (0.3 + 0.7 * |cos incidence|), 0, 1), rounded to 0.01",
        }

    def scan(
        self,
        prims: Primitives,
        textures: Textures,
        world_T_velo: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One sweep -> points [N, 4] float32 (x, y, z, reflectance), clean range [64, n_az] float32.

        The clean range is noise- and drop-free, 0 where a ray has no return.
        """
        grid = self.grid(world_T_velo)
        dist, obj = cast(prims, grid, self.max_range)
        hit = obj != NO_HIT
        clean = np.where(hit, dist, 0.0)

        n_rays = dist.size
        noise = (
            np.clip(rng.standard_normal(n_rays), -self.noise_clip, self.noise_clip) * self.noise_std
        )
        u_drop = rng.random(n_rays)

        flat_hit = hit.ravel()
        dirs = grid.dirs.reshape(-1, 3)[flat_hit]
        t = dist.ravel()[flat_hit]
        points_w = grid.origin + t[:, None] * dirs
        albedo, normals = surface_at(
            prims, textures, obj.ravel()[flat_hit], points_w, dirs, detail=False
        )
        cos = np.abs(np.sum(normals * dirs, axis=-1))
        incidence = np.rad2deg(np.arccos(np.clip(cos, 0.0, 1.0)))
        p_graze = np.clip(
            (incidence - self.grazing_start_deg) / (self.grazing_end_deg - self.grazing_start_deg),
            0.0,
            1.0,
        )
        p_drop = 1.0 - (1.0 - self.random_drop) * (1.0 - p_graze)
        keep = u_drop[flat_hit] >= p_drop
        r = t + noise[flat_hit]
        keep &= r > 0

        local = grid.local_dirs.reshape(-1, 3)[flat_hit]
        pts = np.empty((int(keep.sum()), 4), dtype=np.float32)
        pts[:, :3] = local[keep] * r[keep, None]
        pts[:, 3] = np.round(lidar_reflectance(albedo[keep], cos[keep]), 2)
        return pts, clean.astype(np.float32)


def spherical_range(
    prims: Primitives,
    world_T_velo: np.ndarray,
    height: int = 64,
    width: int = 512,
    max_range: float = 120.0,
) -> np.ndarray:
    """Clean range [height, width] float32 along the spherical projection's cell centres (-1: none).

    fov_up +3 deg, fov_down -25 deg; yaw = pi (2 (u + 0.5) / W - 1),
    pitch = (1 - (v + 0.5) / H) fov - |fov_down|, direction (cos p cos yaw, -cos p sin yaw, sin p).
    """
    fov = np.deg2rad(SPHERICAL_FOV_UP_DEG - SPHERICAL_FOV_DOWN_DEG)
    pitch = (1.0 - (np.arange(height) + 0.5) / height) * fov - np.deg2rad(
        abs(SPHERICAL_FOV_DOWN_DEG)
    )
    # Azimuth (from +x towards +y) is -yaw, so columns run clockwise from just below +pi.
    az0 = np.pi - np.pi / width
    grid = ScanGrid(
        world_T_velo[:3, 3], world_T_velo[:3, :3], pitch, az0, -2 * np.pi / width, width
    )
    dist, obj = cast(prims, grid, max_range)
    return np.where(obj != NO_HIT, dist, -1.0).astype(np.float32)
