"""WF-VAE decoder with the wavelet energy-flow (outflow) pathways.

``z [B, L, n+1, h, w]`` -> causal conv -> 4bc, mid block -> ``4bc + efs``:
the last efs channels -> ``flow_w3`` = ``W3_hat [B, 24, n+1, h, w]``; the rest -> up level 2
[ResNet3D x N, x2 space-time upsample, ResNet3D -> 4bc + efs]: the last efs -> ``flow_w2`` =
``W2_hat [B, 12, 2n+1, 2h, 2w]`` whose LL channels get ``+ IHaar3D(W3_hat)``; the rest -> up
level 1 [ResNet3D x N (-> 2bc), 2D upsample, ResNet3D] -> [ResNet3D -> bc, ResNet3D] ->
LayerNorm, SiLU, conv -> 24 whose LLL channels get ``+ IHaar2D(W2_hat)``; video = IHaar3D.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wfvae.blocks import MidBlock, ResnetBlock3D, ResnetStack3D
from wfvae.causal_conv import CausalConv3d, ChunkCache, FrameConv2d
from wfvae.haar import HaarScale, InverseHaarWavelet2D, InverseHaarWavelet3D
from wfvae.norm import NormType, make_norm, silu
from wfvae.sampling import SpaceTimeUpsample3D, TimeInterpolation, Upsample2D


class EnergyFlowOut(nn.Module):
    """ResNet3D x k at the flow width, then a per-frame conv to wavelet coefficients."""

    def __init__(
        self, channels: int, out_channels: int, num_blocks: int, dropout: float, norm_type: NormType
    ) -> None:
        super().__init__()
        self.blocks = ResnetStack3D([channels] * (num_blocks + 1), dropout, norm_type)
        self.conv = FrameConv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor, cache: ChunkCache | None = None) -> Tensor:
        return self.conv(self.blocks(x, cache))


class UpLevel(nn.Module):
    """ResNet3D stack, an upsampler, one ResNet3D to the output width."""

    def __init__(self, stack: ResnetStack3D, upsample: nn.Module, block_out: ResnetBlock3D) -> None:
        super().__init__()
        self.blocks = stack
        self.upsample = upsample
        self.block_out = block_out

    def forward(self, x: Tensor, cache: ChunkCache | None = None) -> Tensor:
        x = self.blocks(x, cache)
        x = self.upsample(x, cache)
        return self.block_out(x, cache)


class Decoder(nn.Module):
    """``z [B, L, t, h, w] -> (video [B, 3, 4(t-1)+1, 8h, 8w], W2_hat, W3_hat)``."""

    def __init__(
        self,
        latent_dim: int,
        base_channels: int,
        num_resblocks: int,
        energy_flow_hidden_size: int,
        use_attention: bool,
        dropout: float,
        norm_type: NormType,
        t_interpolation: TimeInterpolation,
        connect_res_layer_num: int,
        haar_scale: HaarScale,
    ) -> None:
        super().__init__()
        bc, efs, n = base_channels, energy_flow_hidden_size, num_resblocks
        self.energy_flow_hidden_size = efs
        self.conv_in = CausalConv3d(latent_dim, 4 * bc, 3, padding=1)
        self.mid = MidBlock(4 * bc, 4 * bc, 4 * bc + efs, use_attention, dropout, norm_type)

        def stack(widths: list[int]) -> ResnetStack3D:
            return ResnetStack3D(widths, dropout, norm_type)

        self.up2 = UpLevel(
            stack([4 * bc] * (n + 1)),
            SpaceTimeUpsample3D(4 * bc, 4 * bc, t_interpolation),
            ResnetBlock3D(4 * bc, 4 * bc + efs, dropout, norm_type),
        )
        self.up1 = UpLevel(
            stack([4 * bc] + [2 * bc] * n),
            Upsample2D(2 * bc, 2 * bc),
            ResnetBlock3D(2 * bc, 2 * bc, dropout, norm_type),
        )
        self.out_blocks = stack([2 * bc, bc, bc])
        self.flow_w3 = EnergyFlowOut(efs, 24, connect_res_layer_num, dropout, norm_type)
        self.flow_w2 = EnergyFlowOut(efs, 12, connect_res_layer_num, dropout, norm_type)
        self.norm_out = make_norm(bc, norm_type)
        self.conv_out = FrameConv2d(bc, 24, 3, padding=1)

        self.ihaar_out = InverseHaarWavelet3D(3, haar_scale)
        self.ihaar_w2 = InverseHaarWavelet2D(3)
        self.ihaar_w3 = InverseHaarWavelet3D(3, haar_scale)

    def forward(self, z: Tensor, cache: ChunkCache | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``(video, w2_hat, w3_hat)``; ``cache`` streams a chunk (see ``WFVAE.decode``).

        In chunked mode the level-2 branch is one frame behind the level-3 branch (the
        time upsampler holds a frame back), so the surplus ``IHaar3D(W3_hat)`` frames wait in
        the cache for the next chunk.
        """
        efs = self.energy_flow_hidden_size
        h = self.mid(self.conv_in(z, cache), cache)

        # Wavelet branches in the latent's precision (fp32 under autocast): they are small.
        w3_hat = self.flow_w3(h[:, -efs:], cache).to(z.dtype)
        l3 = self.ihaar_w3(w3_hat, cache)

        h = self.up2(h[:, :-efs], cache)
        w2_hat = self.flow_w2(h[:, -efs:], cache).to(z.dtype)
        if cache is not None:
            l3 = self._align(l3, w2_hat.shape[2], cache)
        w2_hat[:, :3] += l3
        l2 = self.ihaar_w2(w2_hat)

        h = self.out_blocks(self.up1(h[:, :-efs], cache), cache)
        # Final sums and the inverse transform in the latent's precision (fp32 under autocast).
        h = self.conv_out(silu(self.norm_out(h))).to(z.dtype)
        h[:, :3] += l2
        return self.ihaar_out(h, cache), w2_hat, w3_hat

    def _align(self, l3: Tensor, frames: int, cache: ChunkCache) -> Tensor:
        pending = cache.get(self)
        if pending is not None:
            l3 = torch.cat([pending, l3], dim=2)
        if l3.shape[2] < frames:
            raise RuntimeError("Decoder: level-3 branch behind level 2 (chunk schedule bug)")
        if not cache.final:
            cache.set(self, l3[:, :, frames:].clone())
        return l3[:, :, :frames]
