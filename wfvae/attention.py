"""Per-frame spatial self-attention of the WF-VAE mid blocks.

Single head over the ``H*W`` tokens of each frame separately (the batch is ``B*T``), so it is
causal by construction and streams chunk by chunk without state.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from wfvae.causal_conv import CausalConv3d, ChunkCache
from wfvae.norm import NormType, make_norm


class FrameAttention(nn.Module):
    """``x + proj_out(softmax(q k^T / sqrt(C)) v)`` per frame: ``[B, C, T, H, W] -> same``.

    q, k, v and proj_out are 1x1x1 convs (checkpoint layout of the reference AttnBlock3DFix).
    On channels-last activations the token view ``[B*T, 1, H*W, C]`` is free; the 4D shape lets
    ``scaled_dot_product_attention`` pick its fused kernel instead of materialising ``N x N``.
    """

    def __init__(self, channels: int, norm_type: NormType = "layernorm") -> None:
        super().__init__()
        self.channels = channels
        self.norm = make_norm(channels, norm_type)
        self.q = CausalConv3d(channels, channels, 1)
        self.k = CausalConv3d(channels, channels, 1)
        self.v = CausalConv3d(channels, channels, 1)
        self.proj_out = CausalConv3d(channels, channels, 1)

    def forward(self, x: Tensor, cache: ChunkCache | None = None) -> Tensor:
        b, c, t, h, w = x.shape
        hn = self.norm(x)

        def tokens(y: Tensor) -> Tensor:
            return y.permute(0, 2, 3, 4, 1).reshape(b * t, 1, h * w, c)

        out = F.scaled_dot_product_attention(
            tokens(self.q(hn)), tokens(self.k(hn)), tokens(self.v(hn))
        )
        out = out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return self.proj_out(out).add_(x)
