"""3D PatchGAN discriminator of WF-VAE (pix2pix's N-layer PatchGAN with 3x3x3 convolutions).

Layer recipe of the reference (``NLayerDiscriminator3D``), for ``n_layers = N``:

    conv(in -> ndf, stride 2) + LeakyReLU(0.2)
    for n in 1 .. N-1:  conv(ndf*min(2^(n-1), 8) -> ndf*min(2^n, 8),
                             stride (2, 2, 2) for n = 1 else (1, 2, 2)) + norm + LeakyReLU + Dropout
    conv(... -> ndf*min(2^N, 8), stride 1) + norm + LeakyReLU + Dropout
    conv(... -> 1, stride 1)                      -> patch logits [B, 1, t, h, w]

All kernels 3, padding 1; convs followed by a norm have no bias. The reference loss builds it
with ``n_layers=4`` and dropout 0.3. The layers sit in ``main`` at the reference's indices, so a
reference discriminator state dict (``discriminator.main.*`` without the prefix) loads as is.
``norm="group"`` swaps BatchNorm3d for GroupNorm (batch statistics are noise at batch 1-2 per
device); ``"none"`` uses no norm (convs then keep their bias).

The time axis is zero-padded by ``F.pad`` before each conv rather than by the conv's own padding
(the same numbers): oneDNN's bf16 weight-gradient kernel for CPUs without native bf16
(``jit_bf16:avx512_core``) returns garbage (|g| ~ 1e37, then NaN) on one thread when the conv pads
both ends of a 2-frame input, which the last layers see for 5-frame clips.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

_NORMS = ("batch", "group", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels)
    return nn.Identity()


class TimePaddedConv3d(nn.Conv3d):
    """3x3x3 conv with padding 1 whose time padding is explicit zeros (see the module docstring):
    ``[B, Cin, T, H, W] -> [B, Cout, (T-1)//s + 1, ...]`` like ``nn.Conv3d(padding=1)``, same
    parameters and state-dict keys."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int | tuple[int, int, int] = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, 3, stride=stride, padding=(0, 1, 1), bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (0, 0, 0, 0, 1, 1)))


def init_weights(m: nn.Module) -> None:
    """Reference init: conv weights N(0, 0.02) (biases keep PyTorch's default); norm weights
    N(1, 0.02), norm biases 0."""
    if isinstance(m, nn.Conv3d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, (nn.BatchNorm3d, nn.GroupNorm)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class PatchDiscriminator3D(nn.Module):
    """``forward(video [B, C, T, H, W]) -> patch logits [B, 1, t, h, w]``.

    Args:
        in_channels: video channels.
        ndf: width of the first layer (doubles per layer, capped at 8 x ndf).
        n_layers: number of layers between the first and the output conv (reference: 4).
        norm: "batch" (reference), "group" or "none".
        dropout: dropout after each normalised block (reference: 0.3).
    """

    def __init__(
        self,
        in_channels: int = 3,
        ndf: int = 64,
        n_layers: int = 4,
        norm: str = "batch",
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        bias = norm == "none"
        layers: list[nn.Module] = [
            TimePaddedConv3d(in_channels, ndf, stride=2),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                TimePaddedConv3d(
                    ndf * prev, ndf * mult, stride=(2 if n == 1 else 1, 2, 2), bias=bias
                ),
                _norm(norm, ndf * mult),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Dropout(dropout),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            TimePaddedConv3d(ndf * prev, ndf * mult, bias=bias),
            _norm(norm, ndf * mult),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Dropout(dropout),
            TimePaddedConv3d(ndf * mult, 1),
        ]
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"PatchDiscriminator3D expects [B, C, T, H, W], got {tuple(x.shape)}")
        return self.main(x)
