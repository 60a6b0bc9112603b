"""Trivial answers a trained model must beat, scored by the same metric code as the model.

Video reconstruction (WF-VAE):

- `mean_frame`: every frame replaced by the clip's mean frame (a static scene, no motion);
- `bilinear_down_up`: every frame area-downsampled by `factor` and bilinearly upsampled back
  (keeps `factor**2` times fewer numbers per frame; WF-VAE 8x8x4 with 8-16 latent channels
  keeps 24-48x fewer numbers per clip).

LiDAR forecasting (STDiff) baselines live with the range evaluation (copy last scan, constant
velocity re-projection): see `stdiff.evaluation`.
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


def mean_frame(video: Tensor) -> Tensor:
    """The clip's mean frame repeated over time. `video` [B, C, T, H, W] -> same shape."""
    if video.dim() != 5:
        raise ValueError(f"mean_frame: expected [B, C, T, H, W], got {tuple(video.shape)}")
    return video.mean(dim=2, keepdim=True).expand_as(video)


def bilinear_down_up(video: Tensor, factor: int = 8) -> Tensor:
    """Per frame: area-downsample by `factor`, bilinear-upsample back. [B, C, T, H, W]."""
    if video.dim() != 5:
        raise ValueError(f"bilinear_down_up: expected [B, C, T, H, W], got {tuple(video.shape)}")
    b, _, _, h, w = video.shape
    if h % factor or w % factor:
        raise ValueError(f"bilinear_down_up: frame size {h}x{w} is not divisible by {factor}")
    frames = rearrange(video.float(), "b c t h w -> (b t) c h w")
    small = F.avg_pool2d(frames, factor)
    up = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return rearrange(up, "(b t) c h w -> b c t h w", b=b).to(video.dtype)


VIDEO_BASELINES = {"mean_frame": mean_frame, "bilinear_x8": bilinear_down_up}
