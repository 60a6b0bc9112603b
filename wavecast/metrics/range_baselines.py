"""Trivial LiDAR forecasts that a range-image forecaster must beat.

- :func:`copy_last`: the last observed scan, repeated for every predicted step.
- :func:`constant_velocity`: the last observed scan as a point cloud, moved by the ego-motion
  extrapolated at constant velocity from the observed sensor poses, re-projected onto the
  range image (the closest point wins each cell; cells nothing lands in stay empty).

Both work in metres (``[..., H, W]``, empty cells <= 0, the range-image convention) and know
nothing about any model: callers score them with the same metric code as the model's samples.
Poses are ``world_T_sensor`` ``[4, 4]`` (maps sensor points into a fixed world frame), as
`KittiRawDrive.poses(sensor="velodyne")` and `KittiOdometrySequence.velodyne_poses` return.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from wavecast.data.range_projection import RangeProjection


def copy_last(observed: Tensor, n_pred: int) -> Tensor:
    """``observed [B, To, ...]`` -> ``[B, n_pred, ...]``: the last observed frame repeated."""
    if observed.dim() < 2 or observed.shape[1] < 1:
        raise ValueError(
            f"copy_last: observed must be [B, To>=1, ...], got {tuple(observed.shape)}"
        )
    last = observed[:, -1:]
    return last.expand(-1, int(n_pred), *last.shape[2:]).clone()


def constant_velocity_motion(poses_obs: np.ndarray, n_pred: int) -> np.ndarray:
    """Transforms that take points from the last observed sensor frame into each future one.

    ``poses_obs [To, 4, 4]`` (world_T_sensor, To >= 2) -> ``[n_pred, 4, 4]``. The last observed
    step ``D = inv(P[-2]) @ P[-1]`` (the motion between the last two observed frames, in the
    sensor frame) is assumed to repeat, so the pose k steps ahead is ``P[-1] @ D^k`` and a point
    ``x`` of the last scan is at ``inv(D)^k @ x`` in that frame.
    """
    poses = np.asarray(poses_obs, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or poses.shape[0] < 2:
        raise ValueError(
            f"constant_velocity_motion: poses must be [To>=2, 4, 4], got {poses.shape}"
        )
    step = np.linalg.inv(np.linalg.inv(poses[-2]) @ poses[-1])
    out = np.empty((int(n_pred), 4, 4))
    acc = np.eye(4)
    for k in range(int(n_pred)):
        acc = step @ acc
        out[k] = acc
    return out


def reproject_range(
    range_m: np.ndarray, transform: np.ndarray, projection: RangeProjection
) -> np.ndarray:
    """Range image ``[H, W]`` (metres, <= 0 empty) -> the same scene seen after ``transform``
    ``[4, 4]`` (new-sensor_T_old-sensor), ``[H, W]`` metres with -1 where nothing lands.

    Points are taken at the cell centres: re-projecting an unmoved scan then returns every cell
    to itself (a corner lies on a cell boundary, where float rounding picks either side).
    """
    if projection.method != "spherical":
        raise ValueError(
            "reproject_range: needs the spherical projection (the unfolding one reads the row "
            "from the scan's storage order, which a moved cloud does not have)"
        )
    pts = projection.unproject(np.asarray(range_m), cell_center=True).astype(np.float64)
    moved = pts @ transform[:3, :3].T + transform[:3, 3]
    return projection.project(moved).range


def constant_velocity(
    last_range_m: Tensor, poses_obs: Tensor, n_pred: int, projection: RangeProjection
) -> Tensor:
    """Constant-velocity forecast of the last scans ``[B, H, W]`` (metres) with the observed
    poses ``[B, To, 4, 4]`` -> ``[B, n_pred, H, W]`` metres (-1 empty). A sequence whose poses
    are not finite (no poses available) gets NaN frames."""
    if last_range_m.dim() != 3 or poses_obs.dim() != 4 or poses_obs.shape[-2:] != (4, 4):
        raise ValueError(
            f"constant_velocity: need last_range_m [B, H, W] and poses_obs [B, To, 4, 4], got "
            f"{tuple(last_range_m.shape)} and {tuple(poses_obs.shape)}"
        )
    ranges = last_range_m.detach().float().cpu().numpy()
    poses = poses_obs.detach().double().cpu().numpy()
    b, h, w = ranges.shape
    out = np.full((b, int(n_pred), h, w), np.nan, dtype=np.float32)
    for i in range(b):
        if not np.isfinite(poses[i]).all():
            continue
        for k, t in enumerate(constant_velocity_motion(poses[i], n_pred)):
            out[i, k] = reproject_range(ranges[i], t, projection)
    return torch.from_numpy(out).to(last_range_m.device)
