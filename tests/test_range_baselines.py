"""The trivial LiDAR forecasts (wavecast.metrics.range_baselines) against independent answers:
hand-built poses, and the synthetic KITTI's own ground truth (clean range images ray-cast by
the generator along the spherical cells, and its ego poses)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wavecast.data.range_projection import RangeProjection
from wavecast.metrics.range_baselines import (
    constant_velocity,
    constant_velocity_motion,
    copy_last,
    reproject_range,
)

TEST_DRIVE = "2011_09_26_drive_0005_sync"


def _pose(yaw: float, x: float, y: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    p = np.eye(4)
    p[:2, :2] = [[c, -s], [s, c]]
    p[:2, 3] = [x, y]
    return p


def test_copy_last_repeats_the_last_observed_frame():
    vo = torch.randn(2, 3, 1, 4, 8)
    out = copy_last(vo, 4)
    assert out.shape == (2, 4, 1, 4, 8)
    for k in range(4):
        assert torch.equal(out[:, k], vo[:, 2])


def test_constant_velocity_motion_on_a_circular_drive():
    # A car on a circle of radius 20 m at 1 m per frame: constant speed and yaw rate, so the
    # extrapolated poses are exactly the next poses of the circle.
    rate = 1.0 / 20.0
    poses = [_pose(rate * i, 20 * np.sin(rate * i), 20 * (1 - np.cos(rate * i))) for i in range(6)]
    motion = constant_velocity_motion(np.stack(poses[:3]), 3)
    for k in range(3):
        want = np.linalg.inv(poses[3 + k]) @ poses[2]
        np.testing.assert_allclose(motion[k], want, atol=1e-9)


def test_reprojection_without_motion_returns_the_image():
    proj = RangeProjection(32, 128, max_range=None)
    rng = np.random.default_rng(0)
    image = rng.uniform(2.0, 60.0, size=(32, 128)).astype(np.float32)
    image[rng.random((32, 128)) < 0.1] = -1.0
    out = reproject_range(image, np.eye(4), proj)
    np.testing.assert_allclose(out, image, rtol=1e-5)


def _ground_truth(root, frame: int) -> tuple[np.ndarray, np.ndarray]:
    gt = root / "ground_truth" / TEST_DRIVE
    clean = np.load(gt / "range" / f"{frame:010d}.npz")["spherical"]
    rows = np.loadtxt(gt / "poses.txt").reshape(-1, 3, 4)
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3] = rows
    return clean, poses


def test_constant_velocity_matches_the_next_clean_scan(synthetic_kitti):
    # The generator's clean 64 x 512 range image of frame t, moved with the ego-motion that
    # the poses of t-2, t-1, t extrapolate, against its clean image of t+1 and t+2: the scene
    # is static apart from a few moving objects, so most cells must agree to centimetres
    # (median), and the mean error must be far below that of copying frame t.
    t = 5
    clean_t, poses = _ground_truth(synthetic_kitti, t)
    proj = RangeProjection(64, 512, max_range=None)
    out = constant_velocity(
        torch.from_numpy(clean_t)[None], torch.from_numpy(poses[t - 2 : t + 1])[None], 2, proj
    )[0].numpy()
    for k in (1, 2):
        want, _ = _ground_truth(synthetic_kitti, t + k)
        both = (out[k - 1] > 0) & (want > 0)
        assert both.mean() > 0.6  # holes: cells the moved cloud leaves empty (81 %, 68 %)
        err = np.abs(out[k - 1] - want)[both]
        copy_err = np.abs(clean_t - want)[both]
        assert np.median(err) < 0.05, np.median(err)
        # The mean carries the re-sampling error of edges and grazing ground (a moved cell
        # centre lands anywhere in its new cell): measured 0.43 m against 0.99 m for copying.
        assert np.mean(err) < 0.5 * np.mean(copy_err), (np.mean(err), np.mean(copy_err))


def test_constant_velocity_without_poses_is_nan():
    proj = RangeProjection(8, 16)
    poses = torch.full((1, 3, 4, 4), float("nan"), dtype=torch.float64)
    out = constant_velocity(torch.full((1, 8, 16), 5.0), poses, 2, proj)
    assert out.shape == (1, 2, 8, 16) and torch.isnan(out).all()


def test_unfolding_projection_is_refused():
    with pytest.raises(ValueError, match="spherical"):
        reproject_range(np.ones((4, 8)), np.eye(4), RangeProjection(4, 8, method="unfolding"))
