"""WF-VAE encoder with the wavelet energy-flow (inflow) pathways.

``x [B, 3, 4n+1, H, W]`` ->
``W1 = Haar3D(x)`` ``[B, 24, 2n+1, H/2, W/2]`` -> conv 24->bc, ResNet2D x N, 2D down (H/4)
-> concat ``flow_w2(W2)``, ``W2 = Haar2D(W1[:, :3])`` ``[B, 12, 2n+1, H/4, W/4]``
-> conv -> 2bc, ResNet3D x N, causal space-time down (H/8, n+1 frames)
-> concat ``flow_w3(W3)``, ``W3 = Haar3D(W2[:, :3])`` ``[B, 24, n+1, H/8, W/8]``
-> mid [ResNet3D -> 4bc, attention, ResNet3D] -> LayerNorm, SiLU, causal conv -> 2L moments.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wfvae.blocks import MidBlock, ResnetBlock2D, ResnetStack3D
from wfvae.causal_conv import CausalConv3d, ChunkCache, FrameConv2d
from wfvae.haar import HaarScale, HaarWavelet2D, HaarWavelet3D
from wfvae.norm import NormType, make_norm
from wfvae.sampling import Downsample2D, SpaceTimeDownsample3D


class Encoder(nn.Module):
    """``[B, 3, T, H, W] -> (moments [B, 2L, (T-1)/4+1, H/8, W/8], W2, W3)``."""

    def __init__(
        self,
        latent_dim: int,
        base_channels: int,
        num_resblocks: int,
        energy_flow_hidden_size: int,
        use_attention: bool,
        dropout: float,
        norm_type: NormType,
        haar_scale: HaarScale,
    ) -> None:
        super().__init__()
        bc, efs = base_channels, energy_flow_hidden_size
        self.haar_in = HaarWavelet3D(3, haar_scale)
        self.haar_w2 = HaarWavelet2D(3)
        self.haar_w3 = HaarWavelet3D(3, haar_scale)

        self.conv_in = FrameConv2d(24, bc, 3, padding=1)
        self.blocks_l1 = nn.ModuleList(
            ResnetBlock2D(bc, bc, dropout, norm_type) for _ in range(num_resblocks)
        )
        self.down_l1 = Downsample2D(bc, bc)
        self.flow_w2 = FrameConv2d(12, efs, 3, padding=1)

        self.conv_l2 = FrameConv2d(bc + efs, 2 * bc, 3, padding=1)
        self.blocks_l2 = ResnetStack3D([2 * bc] * (num_resblocks + 1), dropout, norm_type)
        self.down_l2 = SpaceTimeDownsample3D(2 * bc, 2 * bc)
        self.flow_w3 = FrameConv2d(24, efs, 3, padding=1)

        self.mid = MidBlock(2 * bc + efs, 4 * bc, 4 * bc, use_attention, dropout, norm_type)
        self.norm_out = make_norm(4 * bc, norm_type)
        self.conv_out = CausalConv3d(4 * bc, 2 * latent_dim, 3, padding=1)

    def forward(self, x: Tensor, cache: ChunkCache | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``(moments, w2, w3)``; ``cache`` streams a chunk (see ``WFVAE.encode``)."""
        w1 = self.haar_in(x, cache)
        w2 = self.haar_w2(w1[:, :3])
        w3 = self.haar_w3(w2[:, :3], cache)

        h = self.conv_in(w1)
        for block in self.blocks_l1:
            h = block(h)
        h = torch.cat([self.down_l1(h), self.flow_w2(w2)], dim=1)

        h = self.blocks_l2(self.conv_l2(h), cache)
        h = torch.cat([self.down_l2(h, cache), self.flow_w3(w3)], dim=1)

        h = self.mid(h, cache)
        h = self.conv_out(self.norm_out(h), cache, silu_input=True)
        return h, w2, w3
