"""Normalisation and activation used throughout WF-VAE.

Normalisation must act per position (over channels) for chunked inference to be lossless,
which is why LayerNorm is the released choice; GroupNorm is kept for reference configs only.
As in the published code, GroupNorm in the per-frame 2D blocks takes its statistics per frame
(:class:`FrameGroupNorm`), everywhere else over the whole clip.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NormType = Literal["layernorm", "groupnorm"]


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dim at every position of ``[B, C, (T,) H, W]`` (eps 1e-6).

    On channels-last activations the permute to ``[..., C]`` is a free view, so this runs without
    the two transpose copies a ``rearrange`` round trip costs on channels-first tensors.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 5:
            perm, inv = (0, 2, 3, 4, 1), (0, 4, 1, 2, 3)
        elif x.dim() == 4:
            perm, inv = (0, 2, 3, 1), (0, 3, 1, 2)
        else:
            raise ValueError(f"ChannelLayerNorm expects 4D or 5D input, got {tuple(x.shape)}")
        y = F.layer_norm(x.permute(perm), (self.channels,), self.weight, self.bias, self.eps)
        return y.permute(inv)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}"


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame: ``[B, C, T, H, W]`` is normalised as ``B*T`` images.

    The published 2D ResNet block folds time into the batch before its norm, so each frame is
    normalised alone there; a plain GroupNorm on the 5D tensor would pool all frames. 4D input
    (images) is a plain GroupNorm. Same parameters (and state-dict keys) as ``nn.GroupNorm``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            return super().forward(x)
        b, c, t, h, w = x.shape
        # A free view on channels-last activations (a copy otherwise).
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        y = F.group_norm(frames, self.num_groups, self.weight, self.bias, self.eps)
        return y.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


def make_norm(channels: int, norm_type: NormType, per_frame: bool = False) -> nn.Module:
    """Per-position LayerNorm (streamable) or the reference's GroupNorm(32, eps 1e-6).

    ``per_frame``: GroupNorm statistics per frame (for the 2D blocks) instead of over the clip;
    LayerNorm is per position either way.
    """
    if norm_type == "layernorm":
        return ChannelLayerNorm(channels)
    if norm_type == "groupnorm":
        if per_frame:
            return FrameGroupNorm(32, channels, eps=1e-6, affine=True)
        # Normalises over time as well: full-clip inference only (chunking would change it).
        return nn.GroupNorm(32, channels, eps=1e-6, affine=True)
    raise ValueError(f"norm_type must be 'layernorm' or 'groupnorm', got {norm_type!r}")


def silu(x: Tensor) -> Tensor:
    """SiLU, in place when no graph is being recorded (saves one activation-sized buffer)."""
    return F.silu(x, inplace=not (torch.is_grad_enabled() and x.requires_grad))
