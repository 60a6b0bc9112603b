"""UNet2DMotionCond: the diffusers-style denoising UNet whose every ResNet block is modulated
by the TDE motion feature (SPADE).

conv_in, down blocks (ResNets [+ attention], stride-2 conv except on the last level), mid
block (ResNet, attention, ResNet), mirrored up blocks (layers_per_block + 1 ResNets on
``cat([x, skip])``, nearest x2 + conv except on the last level), GroupNorm, SiLU, conv_out.
Sinusoidal timestep embedding ([cos, sin]) -> Linear, SiLU, Linear, added in every ResNet.
Size-agnostic: any H, W (non-square; the upsampler takes the size of the matching skip, so
sizes that are not multiples of 2**(levels-1) work too).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import Tensor, nn

from stdiff.lean_norm import group_norm_silu
from stdiff.spade import SPADE, resize_motion
from stdiff.unet_blocks import (
    AttentionBlock,
    AttnDownBlock2D,
    AttnProcessor,
    AttnUpBlock2D,
    DownBlock2D,
    UNetMidBlock2D,
    UpBlock2D,
)

_DOWN = {"DownBlock2D": DownBlock2D, "AttnDownBlock2D": AttnDownBlock2D}
_UP = {"UpBlock2D": UpBlock2D, "AttnUpBlock2D": AttnUpBlock2D}


class UNet2DMotionCond(nn.Module):
    """``(sample [B, C_in, H, W], timestep [B] | scalar, m_feat [B, M, h, w]) -> [B, C_out, H, W]``.

    ``attention_head_dim`` is the channel count *per head* (one entry per level, or one int;
    None = one head); the mid block uses the last entry, the up blocks the reversed list.
    ``sample_size`` is informative only (the default frame size of the sampler).
    """

    def __init__(
        self,
        sample_size: Sequence[int] | int | None = None,
        in_channels: int = 2,
        out_channels: int = 1,
        m_channels: int = 256,
        block_out_channels: Sequence[int] = (128, 256, 256, 512, 512),
        layers_per_block: int = 2,
        down_block_types: Sequence[str] = ("DownBlock2D",) + ("AttnDownBlock2D",) * 4,
        up_block_types: Sequence[str] = ("AttnUpBlock2D",) * 4 + ("UpBlock2D",),
        attention_head_dim: Sequence[int | None] | int | None = (None, 128, 128, 128, 128),
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        mid_block_scale_factor: float = 1.0,
        downsample_padding: int = 1,
        act_fn: str = "silu",
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        center_input_sample: bool = False,
        add_attention: bool = True,
        dropout: float = 0.0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        levels = len(block_out_channels)
        if len(down_block_types) != levels or len(up_block_types) != levels:
            raise ValueError(
                f"UNet2DMotionCond: down_block_types ({len(down_block_types)}), up_block_types "
                f"({len(up_block_types)}) and block_out_channels ({levels}) must have equal length"
            )
        bad = [t for t in down_block_types if t not in _DOWN] + [
            t for t in up_block_types if t not in _UP
        ]
        if bad:
            raise ValueError(
                f"UNet2DMotionCond: unsupported block types {bad}; known {sorted(_DOWN)} "
                f"and {sorted(_UP)}"
            )
        if act_fn != "silu":
            raise ValueError(f"UNet2DMotionCond: act_fn {act_fn!r} not supported (only 'silu')")
        if m_channels <= 0:
            raise ValueError(f"UNet2DMotionCond: m_channels must be > 0, got {m_channels}")
        if attention_head_dim is None or isinstance(attention_head_dim, int):
            attention_head_dim = [attention_head_dim] * levels
        if len(attention_head_dim) != levels:
            raise ValueError(
                f"UNet2DMotionCond: attention_head_dim needs {levels} entries, got "
                f"{list(attention_head_dim)}"
            )
        if isinstance(sample_size, int):
            sample_size = (sample_size, sample_size)
        self.sample_size = tuple(sample_size) if sample_size is not None else None
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.m_channels = m_channels
        self.center_input_sample = center_input_sample
        c0 = block_out_channels[0]
        temb = 4 * c0
        common = dict(
            temb_channels=temb,
            m_channels=m_channels,
            groups=norm_num_groups,
            eps=norm_eps,
            dropout=dropout,
        )

        self.conv_in = nn.Conv2d(in_channels, c0, 3, padding=1)
        self.time_proj = Timesteps(c0, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(c0, temb)

        self.down_blocks = nn.ModuleList()
        out_ch = c0
        for i, kind in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            self.down_blocks.append(
                _DOWN[kind](
                    in_ch,
                    out_ch,
                    num_layers=layers_per_block,
                    attention_head_dim=attention_head_dim[i],
                    add_downsample=i < levels - 1,
                    downsample_padding=downsample_padding,
                    **common,
                )
            )
        self.mid_block = UNetMidBlock2D(
            block_out_channels[-1],
            output_scale_factor=mid_block_scale_factor,
            attention_head_dim=attention_head_dim[-1],
            add_attention=add_attention,
            **common,
        )
        rev = list(reversed(block_out_channels))
        rev_heads = list(reversed(attention_head_dim))
        self.up_blocks = nn.ModuleList()
        out_ch = rev[0]
        for i, kind in enumerate(up_block_types):
            prev, out_ch = out_ch, rev[i]
            self.up_blocks.append(
                _UP[kind](
                    rev[min(i + 1, levels - 1)],
                    prev,
                    out_ch,
                    num_layers=layers_per_block + 1,
                    attention_head_dim=rev_heads[i],
                    add_upsample=i < levels - 1,
                    **common,
                )
            )
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, c0, eps=norm_eps)
        self.conv_out = nn.Conv2d(c0, out_channels, 3, padding=1)
        self._cached_m: Tensor | None = None
        self._caching = False
        self.set_gradient_checkpointing(gradient_checkpointing)

    # ------------------------------------------------------------------ options
    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute every ResNet / attention block in backward instead of storing activations."""
        self.gradient_checkpointing = enabled
        for block in [*self.down_blocks, self.mid_block, *self.up_blocks]:
            block.gradient_checkpointing = enabled

    def attention_blocks(self) -> list[tuple[str, AttentionBlock]]:
        """``(name, block)`` of every self-attention block, in forward order."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, AttentionBlock)]

    def set_attn_processor(
        self, processor: AttnProcessor | dict[str, AttnProcessor | None] | None
    ) -> dict[str, AttnProcessor | None]:
        """Set the attention processor of every attention block (one for all, or a dict by
        block name as :meth:`attention_blocks` names them; None = plain SDPA). Returns the
        previous processors as such a dict (pass it back to restore them)."""
        blocks = dict(self.attention_blocks())
        if isinstance(processor, dict):
            unknown = sorted(set(processor) - set(blocks))
            if unknown:
                raise ValueError(
                    f"UNet2DMotionCond.set_attn_processor: no attention block {unknown}"
                )
            chosen = processor
        else:
            chosen = dict.fromkeys(blocks, processor)
        before = {name: blocks[name].processor for name in chosen}
        for name, proc in chosen.items():
            blocks[name].processor = proc
        return before

    def _spades(self) -> Iterator[SPADE]:
        return (m for m in self.modules() if isinstance(m, SPADE))

    @contextmanager
    def cached_motion(self) -> Iterator[None]:
        """Inference only: inside, SPADE's ``(1 + gamma, beta)`` are computed on the first call
        and reused while the same ``m_feat`` tensor object is passed (a frame's denoising loop:
        the motion feature does not change over the steps). Recomputed when ``m_feat`` changes."""
        self._caching, self._cached_m = True, None
        for s in self._spades():
            s.cache = {}
        try:
            yield
        finally:
            self._caching, self._cached_m = False, None
            for s in self._spades():
                s.cache = None

    # ------------------------------------------------------------------ forward
    def forward(self, sample: Tensor, timestep: Tensor | float | int, m_feat: Tensor) -> Tensor:
        if sample.dim() != 4 or sample.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet2DMotionCond: sample must be [B, {self.in_channels}, H, W], got "
                f"{tuple(sample.shape)}"
            )
        b = sample.shape[0]
        if m_feat.dim() != 4 or m_feat.shape[0] != b or m_feat.shape[1] != self.m_channels:
            raise ValueError(
                f"UNet2DMotionCond: m_feat must be [{b}, {self.m_channels}, h, w], got "
                f"{tuple(m_feat.shape)}"
            )
        if self._caching:
            if torch.is_grad_enabled():
                raise RuntimeError("UNet2DMotionCond.cached_motion is for inference (no_grad) only")
            if self._cached_m is not m_feat:
                self._cached_m = m_feat
                for s in self._spades():
                    s.cache.clear()
        if self.center_input_sample:
            sample = 2 * sample - 1.0

        t = timestep
        if not torch.is_tensor(t):
            t = torch.tensor([t], dtype=torch.long, device=sample.device)
        t = t.reshape(-1).to(sample.device)
        if t.numel() == 1:
            t = t.expand(b)
        elif t.numel() != b:
            raise ValueError(f"UNet2DMotionCond: {t.numel()} timesteps for a batch of {b}")
        emb = self.time_embedding(self.time_proj(t).to(self.conv_in.weight.dtype))
        temb = F.silu(emb)  # every ResNet projects SiLU(emb); activate once

        # Resize the motion map once per resolution (outside any checkpointed block), cast
        # once to the autocast dtype (nearest resizing commutes with the cast) rather than in
        # each of the level's SPADE convs.
        if torch.is_autocast_enabled(m_feat.device.type):
            m_feat = m_feat.to(torch.get_autocast_dtype(m_feat.device.type))
        resized: dict[tuple[int, int], Tensor] = {}

        def motion_at(x: Tensor) -> Tensor:
            size = (x.shape[-2], x.shape[-1])
            if size not in resized:
                resized[size] = resize_motion(m_feat, size)
            return resized[size]

        x = self.conv_in(sample)
        skips: tuple[Tensor, ...] = (x,)
        for block in self.down_blocks:
            x, res = block(x, temb, motion_at(x))
            skips += res
        x = self.mid_block(x, temb, motion_at(x))
        for block in self.up_blocks:
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            size = (skips[-1].shape[-2], skips[-1].shape[-1]) if skips else None
            x = block(x, res, temb, motion_at(x), upsample_size=size)
        return self.conv_out(group_norm_silu(self.conv_norm_out, x))
