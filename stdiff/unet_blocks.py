"""Building blocks of :class:`~stdiff.unet_motion.UNet2DMotionCond`.

ResNet block with SPADE motion modulation after its first conv, spatial self-attention through
``F.scaled_dot_product_attention``, and the diffusers-style down / mid / up blocks. Parameter
names follow the published UNet2DMotionCond (legacy diffusers names) so checkpoints map 1:1.
Downsample2D / Upsample2D are diffusers' own (same numerics and keys). The ResNet block and
the attention are written here: diffusers' ResnetBlock2D has no slot for the SPADE layer, and
its current Attention uses other parameter names (to_q/to_k/to_v/to_out) than the checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.downsampling import Downsample2D
from diffusers.models.upsampling import Upsample2D
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from stdiff.lean_norm import LOW_PRECISION, group_norm, group_norm_silu
from stdiff.spade import SPADE

#: ``processor(attention_block, q, k, v, (height, width)) -> out``; q, k, v, out
#: ``[B, heads, H*W, head_dim]``. Replaces the plain SDPA of an :class:`AttentionBlock`.
AttnProcessor = Callable[["AttentionBlock", Tensor, Tensor, Tensor, tuple[int, int]], Tensor]

#: Below this many tokens, training attention with heads narrower than 64 runs in float32.
FP32_ATTENTION_MAX_TOKENS = 1024


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """SDPA of ``q, k, v [B, heads, L, d]``; in float32 when training with heads narrower than 64
    over fewer than 1024 tokens under autocast: there the CPU bf16 flash-attention forward +
    backward is slower than float32's (2x slower at 128 tokens, level at 512), while at 2048
    tokens bf16 is 1.25x faster (batch 3, 2 heads of 32, 2 threads)."""
    narrow = q.shape[-1] < 64 and q.shape[-2] < FP32_ATTENTION_MAX_TOKENS
    if q.dtype in LOW_PRECISION and narrow and torch.is_grad_enabled():
        with torch.autocast(q.device.type, enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    return F.scaled_dot_product_attention(q, k, v)


def _run(module: nn.Module, use_checkpoint: bool, *args: Any) -> Tensor:
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)


class ResnetBlock2D(nn.Module):
    """``x [B, C_in, H, W] -> [B, C_out, H, W]``, conditioned on time and motion.

    GroupNorm, SiLU, conv1, **SPADE(m)**, + time projection, GroupNorm, SiLU, dropout, conv2,
    + shortcut (1x1 conv when C_in != C_out), / output_scale_factor. ``temb`` is the already
    activated time embedding ``SiLU(emb) [B, T]``; ``m [B, M, h, w]`` any size (resized).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        m_channels: int,
        groups: int = 32,
        eps: float = 1e-5,
        dropout: float = 0.0,
        output_scale_factor: float = 1.0,
    ) -> None:
        super().__init__()
        self.motion_cond_layer = SPADE(m_channels, out_channels)
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )
        self.output_scale_factor = output_scale_factor

    def forward(self, x: Tensor, temb: Tensor, m: Tensor) -> Tensor:
        h = self.conv1(group_norm_silu(self.norm1, x))
        h = self.motion_cond_layer(h, m)
        h = h + self.time_emb_proj(temb)[:, :, None, None]
        h = self.conv2(self.dropout(group_norm_silu(self.norm2, h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = skip + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class AttentionBlock(nn.Module):
    """Spatial self-attention ``[B, C, H, W] -> [B, C, H, W]`` over the H*W tokens.

    GroupNorm, q/k/v linears, ``heads = C // head_dim`` heads (``head_dim`` channels per head;
    one head when None), softmax(q k^T / sqrt(head_dim)) v through SDPA (no N x N score matrix
    with the fused kernels), proj_attn, + residual, / rescale_output_factor. On channels-last
    activations the token layout ``[B, H*W, C]`` is a free view.
    """

    def __init__(
        self,
        channels: int,
        head_dim: int | None = None,
        groups: int = 32,
        eps: float = 1e-5,
        rescale_output_factor: float = 1.0,
    ) -> None:
        super().__init__()
        if head_dim is not None and channels % head_dim:
            raise ValueError(
                f"AttentionBlock: channels {channels} not divisible by attention_head_dim {head_dim}"
            )
        self.channels = channels
        self.num_heads = channels // head_dim if head_dim is not None else 1
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)
        self.proj_attn = nn.Linear(channels, channels)
        self.rescale_output_factor = rescale_output_factor
        self.processor: AttnProcessor | None = None

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        tokens = group_norm(self.group_norm, x).flatten(2).transpose(1, 2)  # [B, L, C]
        # One GEMM for q, k and v (the three linears keep their own checkpoint names).
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        qkv = F.linear(tokens, weight, bias).unflatten(-1, (3, self.num_heads, -1))
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, L, d]
        if self.processor is None:
            out = attention(q, k, v)
        else:
            out = self.processor(self, q, k, v, (height, width))
        out = self.proj_attn(out.transpose(1, 2).flatten(2))  # [B, L, C]
        out = out.transpose(1, 2).unflatten(2, (height, width)) + x
        if self.rescale_output_factor != 1.0:
            out = out / self.rescale_output_factor
        return out


class _Block(nn.Module):
    """Shared plumbing: resnets (+ attentions) with optional gradient checkpointing."""

    resnets: nn.ModuleList
    attentions: nn.ModuleList

    def __init__(self) -> None:
        super().__init__()
        self.gradient_checkpointing = False

    def _layer(self, i: int, x: Tensor, temb: Tensor, m: Tensor) -> Tensor:
        ckpt = self.gradient_checkpointing
        x = _run(self.resnets[i], ckpt, x, temb, m)
        if len(self.attentions):
            x = _run(self.attentions[i], ckpt, x)
        return x


def _resnets_and_attentions(
    channels_in: list[int],
    out_channels: int,
    temb_channels: int,
    m_channels: int,
    groups: int,
    eps: float,
    dropout: float,
    output_scale_factor: float,
    attention: bool,
    head_dim: int | None,
) -> tuple[nn.ModuleList, nn.ModuleList]:
    resnets = nn.ModuleList(
        ResnetBlock2D(
            c, out_channels, temb_channels, m_channels, groups, eps, dropout, output_scale_factor
        )
        for c in channels_in
    )
    attentions = nn.ModuleList(
        AttentionBlock(out_channels, head_dim, groups, eps, output_scale_factor)
        for _ in (channels_in if attention else [])
    )
    return resnets, attentions


class DownBlock2D(_Block):
    """``num_layers`` ResNet blocks (each followed by attention in the Attn variant), then a
    stride-2 conv (not on the last level). Returns ``(x, skips)``; every layer's output and the
    downsampled output are skips."""

    has_attention = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        m_channels: int,
        num_layers: int = 2,
        groups: int = 32,
        eps: float = 1e-5,
        dropout: float = 0.0,
        output_scale_factor: float = 1.0,
        attention_head_dim: int | None = None,
        add_downsample: bool = True,
        downsample_padding: int = 1,
    ) -> None:
        super().__init__()
        chans = [in_channels] + [out_channels] * (num_layers - 1)
        self.resnets, self.attentions = _resnets_and_attentions(
            chans,
            out_channels,
            temb_channels,
            m_channels,
            groups,
            eps,
            dropout,
            output_scale_factor,
            self.has_attention,
            attention_head_dim,
        )
        self.downsamplers = (
            nn.ModuleList(
                [
                    Downsample2D(
                        out_channels,
                        use_conv=True,
                        out_channels=out_channels,
                        padding=downsample_padding,
                        name="op",
                    )
                ]
            )
            if add_downsample
            else None
        )

    def forward(self, x: Tensor, temb: Tensor, m: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        skips: tuple[Tensor, ...] = ()
        for i in range(len(self.resnets)):
            x = self._layer(i, x, temb, m)
            skips += (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips += (x,)
        return x, skips


class AttnDownBlock2D(DownBlock2D):
    """:class:`DownBlock2D` with self-attention after every ResNet block."""

    has_attention = True


class UpBlock2D(_Block):
    """``num_layers`` ResNet blocks on ``cat([x, skip])`` (current first, skips popped last in
    first out; each followed by attention in the Attn variant), then nearest x2 + conv3x3
    (not on the last level; ``upsample_size`` forces the size of the next skip)."""

    has_attention = False

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        temb_channels: int,
        m_channels: int,
        num_layers: int = 3,
        groups: int = 32,
        eps: float = 1e-5,
        dropout: float = 0.0,
        output_scale_factor: float = 1.0,
        attention_head_dim: int | None = None,
        add_upsample: bool = True,
    ) -> None:
        super().__init__()
        chans = []
        for i in range(num_layers):
            skip = in_channels if i == num_layers - 1 else out_channels
            chans.append((prev_output_channel if i == 0 else out_channels) + skip)
        self.resnets, self.attentions = _resnets_and_attentions(
            chans,
            out_channels,
            temb_channels,
            m_channels,
            groups,
            eps,
            dropout,
            output_scale_factor,
            self.has_attention,
            attention_head_dim,
        )
        self.upsamplers = (
            nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
            if add_upsample
            else None
        )

    def forward(
        self,
        x: Tensor,
        skips: tuple[Tensor, ...],
        temb: Tensor,
        m: Tensor,
        upsample_size: tuple[int, int] | None = None,
    ) -> Tensor:
        for i in range(len(self.resnets)):
            x = torch.cat([x, skips[-1 - i]], dim=1)
            x = self._layer(i, x, temb, m)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class AttnUpBlock2D(UpBlock2D):
    """:class:`UpBlock2D` with self-attention after every ResNet block."""

    has_attention = True


class UNetMidBlock2D(_Block):
    """ResNet, attention, ResNet at the lowest resolution."""

    def __init__(
        self,
        channels: int,
        temb_channels: int,
        m_channels: int,
        groups: int = 32,
        eps: float = 1e-5,
        dropout: float = 0.0,
        output_scale_factor: float = 1.0,
        attention_head_dim: int | None = None,
        add_attention: bool = True,
    ) -> None:
        super().__init__()
        self.resnets, _ = _resnets_and_attentions(
            [channels, channels],
            channels,
            temb_channels,
            m_channels,
            groups,
            eps,
            dropout,
            output_scale_factor,
            False,
            None,
        )
        self.attentions = nn.ModuleList(
            [AttentionBlock(channels, attention_head_dim, groups, eps, output_scale_factor)]
            if add_attention
            else []
        )

    def forward(self, x: Tensor, temb: Tensor, m: Tensor) -> Tensor:
        ckpt = self.gradient_checkpointing
        x = _run(self.resnets[0], ckpt, x, temb, m)
        if len(self.attentions):
            x = _run(self.attentions[0], ckpt, x)
        return _run(self.resnets[1], ckpt, x, temb, m)
