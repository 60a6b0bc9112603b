"""SPADE motion modulation of the UNet's ResNet blocks (``motion_cond_layer``).

``out = instance_norm(h) * (1 + gamma(m)) + beta(m)`` with ``gamma, beta`` from
Conv3x3 -> ReLU -> Conv3x3 applied to the motion feature ``m`` resized (nearest) to ``h``'s
size; hidden width ``(m_channels + channels) // 2`` (as in SPADE / STDiff).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stdiff.lean_norm import LOW_PRECISION, instance_norm_modulate


def resize_motion(m: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest resize of ``m [B, M, h, w]`` to ``size`` (source index ``floor(dst * in / out)``)."""
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m, size=size, mode="nearest")


#: Instances of at least this many pixels are normalised by the group-norm kernel.
GROUP_NORM_MIN_PIXELS = 256


def _group_norm_kernel(h: Tensor) -> bool:
    """Whether ``h [B, C, H, W]``'s instances are large enough for the group-norm kernel."""
    return h.shape[-2] * h.shape[-1] >= GROUP_NORM_MIN_PIXELS


def instance_norm(h: Tensor, eps: float) -> Tensor:
    """Instance norm of ``h [B, C, H, W]`` without affine (biased variance), float32 for
    low-precision input (the CPU bf16 kernels are slower and round the statistics).

    ``F.instance_norm`` runs batch norm on a ``[1, B*C, H, W]`` copy (a layout change for
    channels-last input) and is several times slower than the group-norm kernel with one
    group per channel, which computes the same statistics natively in either layout. The two
    round differently, which matters only for instances of a few pixels: there the (near-)
    cancellation in ``h - mean`` amplifies it (the tiny model's 1 x 2 lowest level moves by
    1e-4), so small instances keep the reference's op.
    """
    if h.dtype in LOW_PRECISION:
        h = h.float()
    if _group_norm_kernel(h):
        return F.group_norm(h, h.shape[1], eps=eps)
    return F.instance_norm(h, eps=eps)


class SPADE(nn.Module):
    """``(h [B, C, H, W], m [B, M, h', w']) -> [B, C, H, W]``.

    ``mlp_gamma`` and ``mlp_beta`` (separate checkpoint entries) run as one conv with their
    weights concatenated (one pass over the hidden activation instead of two), with the ``1 +``
    of the scale folded into gamma's bias.

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
        weight = torch.cat((self.mlp_gamma.weight, self.mlp_beta.weight))
        bias = torch.cat((self.mlp_gamma.bias + 1, self.mlp_beta.bias))
        scale, shift = F.conv2d(actv, weight, bias, padding=1).chunk(2, dim=1)
        if self.cache is not None:
            self.cache["mod"] = (scale, shift)
        return scale, shift

    def forward(self, h: Tensor, m: Tensor) -> Tensor:
        scale, shift = self.modulation(m, (h.shape[-2], h.shape[-1]))
        if _group_norm_kernel(h):
            # One autograd node keeping h, not its float32 copy and the normalised h.
            return instance_norm_modulate(h, scale, shift, self.eps)
        normalized = instance_norm(h, self.eps)
        return torch.addcmul(shift, normalized, scale)  # promotes bf16 modulation to float32
