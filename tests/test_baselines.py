"""Trivial video baselines against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from wavecast.metrics import psnr
from wavecast.metrics.baselines import bilinear_down_up, mean_frame


def test_mean_frame_of_two_alternating_frames() -> None:
    a = torch.full((1, 3, 1, 8, 8), 0.5)
    b = torch.full((1, 3, 1, 8, 8), -0.5)
    video = torch.cat([a, b, a, b], dim=2)
    out = mean_frame(video)
    assert out.shape == video.shape
    torch.testing.assert_close(out, torch.zeros_like(video))
    # Every frame is 0.25 away in [0, 1] units: PSNR = 10 log10(1 / 0.25^2).
    torch.testing.assert_close(
        psnr(out, video), torch.full((1, 4), 10 * math.log10(16.0)), rtol=0, atol=1e-4
    )


def test_bilinear_down_up_keeps_linear_ramps_inside_the_frame() -> None:
    # Area means of a linear ramp sit at the block centres, where bilinear upsampling (half-pixel
    # centres) reads them back: the ramp is exact away from the outer half block.
    h, w, f = 32, 48, 8
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    ramp = (0.01 * xx - 0.02 * yy).expand(2, 3, 3, h, w).contiguous()
    out = bilinear_down_up(ramp, f)
    inner = (slice(None),) * 3 + (slice(f, h - f), slice(f, w - f))
    torch.testing.assert_close(out[inner], ramp[inner], rtol=0, atol=1e-5)


def test_bilinear_down_up_loses_detail_finer_than_the_factor() -> None:
    # A checkerboard of 1-pixel squares averages to its mean in every 8 x 8 block.
    h, w = 16, 24
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    board = ((yy + xx) % 2).float().mul(2).sub(1).expand(1, 3, 2, h, w)
    torch.testing.assert_close(bilinear_down_up(board), torch.zeros_like(board))


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="not divisible by 8"):
        bilinear_down_up(torch.zeros(1, 3, 2, 12, 16))
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        mean_frame(torch.zeros(3, 8, 8))
