"""SPADE motion modulation of the UNet's ResNet blocks (``motion_cond_layer``).

``out = instance_norm(h) * (1 + gamma(m)) + beta(m)`` with ``gamma, beta`` from
Conv3x3 -> ReLU -> Conv3x3 applied to the motion feature ``m`` resized (nearest) to ``h``'s
size; hidden width ``(m_channels + channels) // 2`` (as in SPADE / STDiff).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def resize_motion(m: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest resize of ``m [B, M, h, w]`` to ``size`` (source index ``floor(dst * in / out)``)."""
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m, size=size, mode="nearest")


class SPADE(nn.Module):
    """``(h [B, C, H, W], m [B, M, h', w']) -> [B, C, H, W]``.

    ``cache`` (a dict, set by :meth:`UNet2DMotionCond.cached_motion` during sampling) keeps
    ``(1 + gamma, beta)`` so that a motion feature fixed over all denoising steps of a frame is
    turned into modulation once instead of once per step.
    """

    def __init__(self, m_channels: int, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        hidden = (m_channels + channels) // 2
        self.channels = channels
        self.eps = eps
        self.mlp_shared = nn.Sequential(nn.Conv2d(m_channels, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, channels, 3, padding=1)
        self.cache: dict[str, tuple[Tensor, Tensor]] | None = None

    def modulation(self, m: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """``(1 + gamma, beta)``, each ``[B, C, *size]``."""
        if self.cache is not None and "mod" in self.cache:
            return self.cache["mod"]
        actv = self.mlp_shared(resize_motion(m, size))
        mod = (1 + self.mlp_gamma(actv), self.mlp_beta(actv))
        if self.cache is not None:
            self.cache["mod"] = mod
        return mod

    def forward(self, h: Tensor, m: Tensor) -> Tensor:
        scale, shift = self.modulation(m, (h.shape[-2], h.shape[-1]))
        # Instance norm (no affine, biased variance), the reference's op. GroupNorm(C groups)
        # has the same statistics but rounds differently, which the 2-pixel instances of the
        # tiny model's lowest level amplify to 1e-4 (measured; 1e-5 with instance_norm).
        normalized = F.instance_norm(h, eps=self.eps)
        return torch.addcmul(shift, normalized, scale)
