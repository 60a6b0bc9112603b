"""Normalisation and ResNet blocks of WF-VAE (2D per frame and causal 3D) and the mid block.

All blocks take ``[B, C, T, H, W]``. 3D blocks thread the optional :class:`ChunkCache` through
their causal convs; 2D blocks are stateless (they act on every frame alone).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from wfvae.attention import FrameAttention
from wfvae.causal_conv import CausalConv3d, ChunkCache, FrameConv2d
from wfvae.norm import NormType, make_norm, silu


class _Checkpointable(nn.Module):
    """Runs ``_forward`` under activation checkpointing when enabled and not streaming."""

    gradient_checkpointing: bool = False

    def forward(self, x: Tensor, cache: ChunkCache | None = None) -> Tensor:
        if self.gradient_checkpointing and cache is None and torch.is_grad_enabled():
            return checkpoint(self._forward, x, None, use_reentrant=False)
        return self._forward(x, cache)

    def _forward(self, x: Tensor, cache: ChunkCache | None) -> Tensor:
        raise NotImplementedError


class ResnetBlock2D(_Checkpointable):
    """Pre-activation ResNet block applied per frame: norm, SiLU, conv3x3, norm, SiLU, dropout,
    conv3x3, plus a 1x1 shortcut when the width changes. ``[B, Cin, T, H, W] -> [B, Cout, ...]``.
    Every frame is processed alone, GroupNorm statistics included (as in the published code).
    """

    def __init__(
        self, in_channels: int, out_channels: int, dropout: float, norm_type: NormType
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = make_norm(in_channels, norm_type, per_frame=True)
        self.conv1 = FrameConv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = make_norm(out_channels, norm_type, per_frame=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = FrameConv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = (
            FrameConv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def _forward(self, x: Tensor, cache: ChunkCache | None) -> Tensor:
        h = self.conv1(silu(self.norm1(x)))
        h = self.conv2(self.dropout(silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return h.add_(skip)


class ResnetBlock3D(_Checkpointable):
    """Causal 3D version of :class:`ResnetBlock2D` (3x3x3 causal convs, 1x1x1 shortcut)."""

    def __init__(
        self, in_channels: int, out_channels: int, dropout: float, norm_type: NormType
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = make_norm(in_channels, norm_type)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = make_norm(out_channels, norm_type)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = (
            CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def _forward(self, x: Tensor, cache: ChunkCache | None) -> Tensor:
        h = self.conv1(self.norm1(x), cache, silu_input=True)
        h = self.norm2(h)
        if self.dropout.p > 0 and self.training:
            h = self.conv2(self.dropout(silu(h)), cache)
        else:
            h = self.conv2(h, cache, silu_input=True)
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x, cache)
        return h.add_(skip)


class ResnetStack3D(nn.ModuleList):
    """A sequence of :class:`ResnetBlock3D` with widths ``channels[0] -> ... -> channels[-1]``,
    threading the chunk cache."""

    def __init__(self, channels: list[int], dropout: float, norm_type: NormType) -> None:
        super().__init__(
            ResnetBlock3D(cin, cout, dropout, norm_type)
            for cin, cout in zip(channels[:-1], channels[1:])
        )

    def forward(self, x: Tensor, cache: ChunkCache | None = None) -> Tensor:
        for block in self:
            x = block(x, cache)
        return x


class MidBlock(nn.Module):
    """ResNet3D ``in -> hidden``, optional per-frame attention, ResNet3D ``hidden -> out``."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        use_attention: bool,
        dropout: float,
        norm_type: NormType,
    ) -> None:
        super().__init__()
        self.res1 = ResnetBlock3D(in_channels, hidden_channels, dropout, norm_type)
        self.attn = FrameAttention(hidden_channels, norm_type) if use_attention else None
        self.res2 = ResnetBlock3D(hidden_channels, out_channels, dropout, norm_type)

    def forward(self, x: Tensor, cache: ChunkCache | None = None) -> Tensor:
        x = self.res1(x, cache)
        if self.attn is not None:
            x = self.attn(x, cache)
        return self.res2(x, cache)
