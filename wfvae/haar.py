"""Haar wavelet transforms of WF-VAE: 2D (per frame) and causal 3D, forward and inverse.

Channel layout is subband-major: for ``C`` input channels the output holds
``[band0 of all C, band1 of all C, ...]``, so channels ``0..C-1`` are the all-lowpass band that
feeds the next level ("energy flow").

Subband orders (each kernel is +1 on the first tap of an axis and -1 on the second for a
difference along that axis):

- 3D, index ``4*t + 2*h + w`` (t/h/w = 1 where the band differences that axis):
  LLL, W, H, HW, T, TW, TH, THW (the reference names h, g, hh, gh, h_v, g_v, hh_v, gh_v).
- 2D, index ``h + 2*w``: LL, H, W, HW (reference names aa, ad, da, dd). The 2D order puts the
  H-difference before the W-difference, the 3D order the W-difference first.

Time is causal in 3D: the forward prepends a copy of frame 0 (``T = 2n + 1 -> n + 1`` frames),
the inverse produces two frames per coefficient frame and drops the first (``n + 1 -> 2n + 1``).
In chunked mode only the first chunk of a call pads / drops (see :class:`wfvae.causal_conv.ChunkCache`).

Each transform is one dense convolution whose ``[bands*C, C, ...]`` kernel is block diagonal, so
the subband-major layout comes straight out of the conv without a channel permute (the reference
loops over every batch x channel slice and runs one 1-channel conv per band).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wfvae.causal_conv import ChunkCache, causal_time_pad

HaarScale = Literal["orthonormal", "reference"]

#: The literal the reference code multiplies its 3D kernels by (not 1/sqrt(8) = 0.35355...).
REFERENCE_HAAR3D_SCALE = 0.3536

_LOW = (1.0, 1.0)
_HIGH = (1.0, -1.0)


def haar3d_scale(haar_scale: HaarScale) -> float:
    """The 3D kernel scale: exact ``1/(2 sqrt 2)`` or the reference's literal 0.3536."""
    if haar_scale == "orthonormal":
        return 1.0 / (2.0 * math.sqrt(2.0))
    if haar_scale == "reference":
        return REFERENCE_HAAR3D_SCALE
    raise ValueError(f"haar_scale must be 'orthonormal' or 'reference', got {haar_scale!r}")


def haar_kernels_3d(haar_scale: HaarScale = "orthonormal") -> Tensor:
    """The eight 2x2x2 kernels ``[8, 2(t), 2(h), 2(w)]`` in subband order (fp32)."""
    scale = torch.tensor(haar3d_scale(haar_scale), dtype=torch.float32)
    kernels = []
    for band in range(8):
        ft = torch.tensor(_HIGH if band & 4 else _LOW)
        fh = torch.tensor(_HIGH if band & 2 else _LOW)
        fw = torch.tensor(_HIGH if band & 1 else _LOW)
        kernels.append(torch.einsum("t,h,w->thw", ft, fh, fw))
    return torch.stack(kernels) * scale


def haar_kernels_2d() -> Tensor:
    """The four 2x2 kernels ``[4, 2(h), 2(w)]`` in subband order, each / 2 (exactly orthonormal)."""
    kernels = []
    for band in range(4):
        fh = torch.tensor(_HIGH if band & 1 else _LOW)
        fw = torch.tensor(_HIGH if band & 2 else _LOW)
        kernels.append(torch.outer(fh, fw))
    return torch.stack(kernels) * 0.5


def _block_diagonal(kernels: Tensor, channels: int) -> Tensor:
    """``[bands*C, C, *k]`` weight with ``w[b*C + c, c] = kernels[b]`` (subband-major output)."""
    bands = kernels.shape[0]
    eye = torch.eye(channels, dtype=kernels.dtype)
    weight = torch.einsum("bk,cd->bcdk", kernels.reshape(bands, -1), eye)
    return weight.reshape(bands * channels, channels, *kernels.shape[1:]).contiguous()


class _HaarBase(nn.Module):
    """Holds the transform weight as a non-persistent buffer (it is a constant, not a parameter)."""

    weight: Tensor

    def __init__(self, kernels: Tensor, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.bands = kernels.shape[0]
        self.register_buffer("weight", _block_diagonal(kernels, channels), persistent=False)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, bands={self.bands}"

    @staticmethod
    def _like(out: Tensor, x: Tensor) -> Tensor:
        """Give ``out`` the channels-last layout of ``x`` (few-channel convs return NCDHW)."""
        if x.dim() == 5 and x.stride(1) == 1 and x.shape[1] > 1:
            return out.contiguous(memory_format=torch.channels_last_3d)
        return out

    def _check_even_space(self, x: Tensor) -> None:
        """A stride-2 2x2 kernel would silently drop the last row / column of an odd size."""
        for dim, name in ((-2, "H"), (-1, "W")):
            if x.shape[dim] % 2:
                raise ValueError(
                    f"{type(self).__name__}: {name} (dim {x.dim() + dim}) = {x.shape[dim]} is "
                    f"odd (shape {tuple(x.shape)}); the 2x2 Haar needs even frame sizes, its last "
                    f"{'row' if name == 'H' else 'column'} would be dropped"
                )

    def _check_channels(self, x: Tensor, expected: int, what: str) -> None:
        if x.shape[1] != expected:
            raise ValueError(
                f"{type(self).__name__}: expected {expected} {what} channels, got shape "
                f"{tuple(x.shape)}"
            )


class HaarWavelet3D(_HaarBase):
    """Causal 3D Haar analysis: ``[B, C, T, H, W] -> [B, 8C, (T+1)//2, H/2, W/2]``.

    Without a chunk cache (or on the first chunk) frame 0 is repeated once in front, so odd
    ``T = 2n + 1`` gives ``n + 1`` frames whose time-difference bands are 0 at t = 0. On later
    chunks the frames left over from the previous chunk are used instead of the pad.
    An even ``T`` (or odd ``H`` / ``W``) is a ValueError: its last frame (row, column) would have
    no partner and the stride-2 transform would drop it. Chunks may leave an unpaired frame for
    the next chunk, except the final one.
    """

    def __init__(self, channels: int = 3, haar_scale: HaarScale = "orthonormal") -> None:
        super().__init__(haar_kernels_3d(haar_scale), channels)
        self.haar_scale = haar_scale

    def forward(self, x: Tensor, cache: ChunkCache | None = None) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"HaarWavelet3D expects [B, C, T, H, W], got shape {tuple(x.shape)}")
        self._check_channels(x, self.channels, "input")
        self._check_even_space(x)
        # Exact add/subtract: keep it out of low-precision autocast.
        with torch.autocast(x.device.type, enabled=False):
            xp = causal_time_pad(x, self, kernel_t=2, stride_t=2, cache=cache)
            if xp.shape[2] % 2 and (cache is None or cache.final):
                where = "T (dim 2)" if cache is None else "the final chunk's T (dim 2)"
                raise ValueError(
                    f"HaarWavelet3D: {where} = {x.shape[2]} frames (shape {tuple(x.shape)}) "
                    f"leaves the last frame unpaired after the causal padding, and it would be "
                    f"dropped; the causal 3D Haar needs T = 2n+1 frames (pad or trim the clip)"
                )
            return self._like(F.conv3d(xp, self.weight.to(x.dtype), stride=2), x)


class InverseHaarWavelet3D(_HaarBase):
    """Causal 3D Haar synthesis: ``[B, 8C, n+1, h, w] -> [B, C, 2n+1, 2h, 2w]``.

    The first output frame (the replicated pad of the forward) is dropped, except on chunks after
    the first one of a chunked call, where every frame is real.
    """

    def __init__(self, channels: int = 3, haar_scale: HaarScale = "orthonormal") -> None:
        super().__init__(haar_kernels_3d(haar_scale), channels)
        self.haar_scale = haar_scale

    def forward(self, coeffs: Tensor, cache: ChunkCache | None = None) -> Tensor:
        if coeffs.dim() != 5:
            raise ValueError(
                f"InverseHaarWavelet3D expects [B, 8C, T, H, W], got shape {tuple(coeffs.shape)}"
            )
        self._check_channels(coeffs, 8 * self.channels, "coefficient")
        with torch.autocast(coeffs.device.type, enabled=False):
            out = F.conv_transpose3d(coeffs, self.weight.to(coeffs.dtype), stride=2)
        if cache is None or cache.first_call(self):
            out = out[:, :, 1:]
        return self._like(out, coeffs)


class HaarWavelet2D(_HaarBase):
    """2D Haar analysis per frame: ``[B, C, (T,) H, W] -> [B, 4C, (T,) H/2, W/2]``; odd ``H`` or
    ``W`` is a ValueError (the last row / column would be dropped).

    The kernel is stored 5D ``[4C, C, 1, 2, 2]`` (every tensor of the model is 5D, so that
    ``model.to(memory_format=torch.channels_last_3d)`` works).
    """

    def __init__(self, channels: int = 3) -> None:
        super().__init__(haar_kernels_2d().unsqueeze(1), channels)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() not in (4, 5):
            raise ValueError(f"HaarWavelet2D expects a 4D or 5D tensor, got shape {tuple(x.shape)}")
        self._check_channels(x, self.channels, "input")
        self._check_even_space(x)
        with torch.autocast(x.device.type, enabled=False):
            w = self.weight.to(x.dtype)
            if x.dim() == 5:
                return self._like(F.conv3d(x, w, stride=(1, 2, 2)), x)
            return F.conv2d(x, w.squeeze(2), stride=2)


class InverseHaarWavelet2D(_HaarBase):
    """2D Haar synthesis per frame: ``[B, 4C, (T,) h, w] -> [B, C, (T,) 2h, 2w]``."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__(haar_kernels_2d().unsqueeze(1), channels)

    def forward(self, coeffs: Tensor) -> Tensor:
        self._check_channels(coeffs, 4 * self.channels, "coefficient")
        with torch.autocast(coeffs.device.type, enabled=False):
            w = self.weight.to(coeffs.dtype)
            if coeffs.dim() == 5:
                return self._like(F.conv_transpose3d(coeffs, w, stride=(1, 2, 2)), coeffs)
            if coeffs.dim() == 4:
                return F.conv_transpose2d(coeffs, w.squeeze(2), stride=2)
        raise ValueError(
            f"InverseHaarWavelet2D expects a 4D or 5D tensor, got shape {tuple(coeffs.shape)}"
        )
