"""Down- and upsamplers of WF-VAE: 2D per frame and causal space-time (3D).

The space-time upsampler interpolates time trilinearly, which looks one input frame ahead.
In chunked mode it therefore holds back the last time-upsampled frame of each chunk until the
next chunk (or the final flush) provides its right neighbour, so chunked equals full exactly.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wfvae.causal_conv import CausalConv3d, ChunkCache, FrameConv2d

TimeInterpolation = Literal["trilinear", "nearest"]

# Every sampler takes ``(x, cache=None)`` so that levels can call them alike; the per-frame ones
# keep no state between chunks.


class Downsample2D(nn.Module):
    """Per frame: zero pad right/bottom by 1, 3x3 stride-2 conv. ``[B,C,T,H,W] -> [..,H/2,W/2]``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = FrameConv2d(in_channels, out_channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor, cache: ChunkCache | None = None) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class SpaceTimeDownsample3D(nn.Module):
    """Zero pad right/bottom by 1, causal 3x3x3 stride-2 conv (frame 0 repeated twice in front).

    ``[B, C, 2n+1, H, W] -> [B, C', n+1, H/2, W/2]``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor, cache: ChunkCache | None = None) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)), cache)


class Upsample2D(nn.Module):
    """Per frame: nearest x2, 3x3 conv. ``[B, C, T, H, W] -> [B, C', T, 2H, 2W]``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = FrameConv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor, cache: ChunkCache | None = None) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest"))


def _spatial_up(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="trilinear", align_corners=False)


class SpaceTimeUpsample3D(nn.Module):
    """Causal x2 space-time upsampling then a causal 3x3x3 conv.

    ``[B, C, T, H, W] -> [B, C', 1 + 2(T-1), 2H, 2W]``: frame 0 is only upsampled in space;
    frames ``1..T-1`` are upsampled x2 in time (``t_interpolation``, align_corners False, the
    ends clamped), then x2 in space (trilinear).
    """

    def __init__(
        self, in_channels: int, out_channels: int, t_interpolation: TimeInterpolation
    ) -> None:
        super().__init__()
        if t_interpolation not in ("trilinear", "nearest"):
            raise ValueError(
                f"t_interpolation must be 'trilinear' or 'nearest', got {t_interpolation!r}"
            )
        self.t_interpolation = t_interpolation
        self.conv = CausalConv3d(in_channels, out_channels, 3, padding=1)

    def _time_up(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=(2.0, 1.0, 1.0), mode=self.t_interpolation)

    def forward(self, x: Tensor, cache: ChunkCache | None = None) -> Tensor:
        if cache is None:
            parts = [_spatial_up(x[:, :, :1])]
            if x.shape[2] > 1:
                parts.append(_spatial_up(self._time_up(x[:, :, 1:])))
            return self.conv(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
        return self.conv(self._stream(x, cache), cache)

    def _stream(self, x: Tensor, cache: ChunkCache) -> Tensor:
        parts = []
        if cache.first_call(self):
            parts.append(_spatial_up(x[:, :, :1]))
            x = x[:, :, 1:]
        # ``held``: the last input frame of the previous chunk; its second output needs the
        # first frame of this chunk (trilinear), so it was not emitted yet.
        held = cache.get(self)
        seq = x if held is None else torch.cat([held, x], dim=2)
        if seq.shape[2] > 0:
            up = self._time_up(seq)
            start = 0 if held is None else 1  # held's first output went out last chunk
            stop = up.shape[2] if cache.final else up.shape[2] - 1
            if stop > start:
                parts.append(_spatial_up(up[:, :, start:stop]))
            if not cache.final:
                cache.set(self, seq[:, :, -1:].clone())
        if not parts:
            raise RuntimeError("SpaceTimeUpsample3D: empty chunk (chunk schedule bug)")
        return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
