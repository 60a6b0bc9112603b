"""Winograd F(2x2, 3x3) convolution for the 3x3 spatial kernels of WF-VAE (CPU, float32).

A direct 3x3 conv spends 9 multiply-adds per output value and input channel. Winograd's minimal
filtering (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) computes a
2 x 2 output tile from a 4 x 4 input tile with 16 products per channel pair, 2.25x fewer, at the
price of linear transforms of the input tiles, the weights and the products:

    Y = A^T [ (G g G^T) * (B^T d B) ] A        (``*`` elementwise over the 4 x 4 positions)

Summed over input channels, the elementwise product becomes one matrix product per position:
16 GEMMs ``[tiles, Cin] @ [Cin, Cout]``. The time taps of a ``(k_t, 3, 3)`` kernel accumulate
into the same GEMMs (tap ``k`` reads the transformed input shifted by ``k`` frames), so a
causal 3x3x3 conv and a per-frame 3x3 conv run the same code.

Why by hand: oneDNN has Winograd only for 2D convs and PyTorch does not expose it; NNPACK
(built into the CPU wheel) fails to initialise on this machine. On the 2-core Xeon the
transforms are memory-bound, so Winograd pays where channels are many and frames small: the
wide convs of WF-VAE-L run 1.4-2.6x faster than oneDNN's direct kernel, the 128- and 192-channel
convs at 64^2 break even (``scripts/bench/winograd.py`` measures every shape of the models).
:func:`winograd_applies` therefore takes it from :data:`MIN_CHANNELS` input channels up.

Numerics: F(2x2, 3x3) uses the transform coefficients 0, +-1/2, +-1 only, the most accurate
Winograd variant; against float64 its float32 error is about 3e-6 of the output's scale, a few
times the direct conv's. Gradients come from the same transforms transposed (the backward of
the tiled computation, not of the direct conv): the input gradient is Winograd's own
``B (dM @ U^T) B^T`` scattered back over the overlapping tiles, the weight gradient
``G^T (V^T @ dM) G``.

Shapes: input ``[B, Cin, T + k_t - 1, H, W]`` (time already padded by the caller, space not),
weight ``[Cout, Cin, k_t, 3, 3]``, output ``[B, Cout, T, H, W]`` channels-last; H and W even.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Below this many input channels the transforms cost about what the GEMMs save (measured on
# the 2-core Xeon: 128 and 192 channels at 64^2 break even, 256 and more win 1.4-2.6x).
MIN_CHANNELS = 256
# ... and below this many output positions (T * H * W) per clip the weight transform, redone on
# every call, costs more than the GEMMs save (768 channels at 5 x 16^2: level).
MIN_POSITIONS = 4096

# G of F(2, 3): a 3-tap kernel to its 4 Winograd points.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def winograd_applies(
    x: Tensor,
    weight: Tensor,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
) -> bool:
    """Whether :func:`winograd_conv3d` computes this ``conv3d`` (space padded by ``padding``):
    a float32 CPU conv outside autocast with a ``(k_t, 3, 3)`` kernel, unit stride and dilation,
    space padding 1, no time padding, one group, even H and W, and at least
    :data:`MIN_CHANNELS` input channels and :data:`MIN_POSITIONS` output positions."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() == 5
        and not torch.is_autocast_enabled("cpu")
        and tuple(weight.shape[3:]) == (3, 3)
        and tuple(stride) == (1, 1, 1)
        and tuple(dilation) == (1, 1, 1)
        and tuple(padding) == (0, 1, 1)
        and groups == 1
        and weight.shape[1] >= MIN_CHANNELS
        and x.shape[3] % 2 == 0
        and x.shape[4] % 2 == 0
        and x.shape[2] >= weight.shape[2]
        and (x.shape[2] - weight.shape[2] + 1) * x.shape[3] * x.shape[4] >= MIN_POSITIONS
    )


def weight_transform(weight: Tensor) -> Tensor:
    """``G g G^T`` per time tap: ``[Cout, Cin, k_t, 3, 3] -> [k_t, 16, Cout, Cin]``
    (differentiable). One ``[16, 9] @ [9, Cout * Cin]`` product per tap: memory-bound, about
    60 ms for a 768^2 x 27 weight here, which is why :func:`winograd_applies` wants enough
    output positions to pay for it."""
    cout, cin, kt = weight.shape[:3]
    g = torch.tensor(_G, dtype=weight.dtype, device=weight.device)
    w9 = weight.permute(2, 3, 4, 0, 1).reshape(kt, 9, cout * cin)
    return torch.matmul(torch.kron(g, g), w9).view(kt, 16, cout, cin)


def _bt(d0: Tensor, d1: Tensor, d2: Tensor, d3: Tensor) -> tuple[Tensor, ...]:
    """``B^T`` of F(2, 3) along one axis of the 4-point tiles."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def _bt_into(d: tuple[Tensor, ...], out: tuple[Tensor, ...]) -> None:
    """:func:`_bt` written into ``out`` (no temporaries)."""
    torch.sub(d[0], d[2], out=out[0])
    torch.add(d[1], d[2], out=out[1])
    torch.sub(d[2], d[1], out=out[2])
    torch.sub(d[1], d[3], out=out[3])


def _b(g0: Tensor, g1: Tensor, g2: Tensor, g3: Tensor) -> tuple[Tensor, ...]:
    """``B`` (the transpose of :func:`_bt`): the gradient of the 4 tile points."""
    return g0, g1 - g2 + g3, g1 + g2 - g0, -g3


def _input_transform(x: Tensor) -> Tensor:
    """``B^T d B`` of every 4 x 4 tile (stride 2) of ``x [B, C, Tp, H, W]`` zero padded by one
    in space: ``V [4, 4, Tp, B, H/2, W/2, C]``."""
    b, c, tp, h, w = x.shape
    xp = F.pad(x.permute(0, 2, 3, 4, 1), (0, 0, 1, 1, 1, 1))  # [B, Tp, H+2, W+2, C]
    rows = _bt(*(xp[:, :, i : i + h - 1 : 2] for i in range(4)))  # 4 x [B, Tp, H/2, W+2, C]
    v = x.new_empty(4, 4, tp, b, h // 2, w // 2, c)
    for a, r in enumerate(rows):
        cols = tuple(r[:, :, :, j : j + w - 1 : 2] for j in range(4))
        _bt_into(cols, tuple(v[a, k].transpose(0, 1) for k in range(4)))
    return v


def _output_transform(m: Tensor, out: Tensor) -> None:
    """``A^T M A`` of every tile: ``m [4, 4, T, B, H/2, W/2, Co]`` into ``out`` ``[B, T, H/2, 2,
    W/2, 2, Co]`` (a view of the ``[B, T, H, W, Co]`` output)."""
    z = (m[0] + m[1] + m[2], m[1] - m[2] - m[3])
    for r, zr in enumerate(z):
        dst = out[:, :, :, r].transpose(0, 1)  # [T, B, H/2, W/2, 2, Co]
        torch.add(zr[0] + zr[1], zr[2], out=dst[..., 0, :])
        torch.sub(zr[1] - zr[2], zr[3], out=dst[..., 1, :])


def _output_transform_grad(gy: Tensor) -> Tensor:
    """The transpose of :func:`_output_transform`: ``gy [B, T, H, W, Co]`` -> ``dM [4, 4, T,
    B, H/2, W/2, Co]``."""
    b, t, h, w, co = gy.shape
    g = gy.view(b, t, h // 2, 2, w // 2, 2, co).transpose(0, 1)  # [T, B, H/2, 2, W/2, 2, Co]
    dm = gy.new_empty(4, 4, t, b, h // 2, w // 2, co)
    # A = (A^T)^T: point a of a tile feeds outputs (1, 0), (1, 1), (1, -1), (0, -1).
    rows = (g[:, :, :, 0], g[:, :, :, 0] + g[:, :, :, 1], g[:, :, :, 0] - g[:, :, :, 1])
    for a in range(4):
        r = -g[:, :, :, 1] if a == 3 else rows[a]  # [T, B, H/2, W/2, 2, Co]
        c0, c1 = r[..., 0, :], r[..., 1, :]
        dm[a, 0].copy_(c0)
        torch.add(c0, c1, out=dm[a, 1])
        torch.sub(c0, c1, out=dm[a, 2])
        torch.neg(c1, out=dm[a, 3])
    return dm


def _scatter_tiles(d: tuple[Tensor, ...], dim: int, size: int) -> Tensor:
    """Sum the 4 points of overlapping stride-2 tiles back onto a padded axis of ``size = 2n +
    2`` positions: position ``2m`` gets ``d0[m] + d2[m-1]``, ``2m + 1`` gets ``d1[m] + d3[m-1]``.
    ``d``: 4 tensors with ``n`` tiles along ``dim``."""
    n = d[0].shape[dim]
    shape = list(d[0].shape)
    shape[dim] = size
    out = d[0].new_zeros(shape)
    for q, dq in enumerate(d):
        start = q  # tile m's point q lands on 2m + q
        out.narrow(dim, start, 2 * n - 1).unfold(dim, 1, 2).squeeze(-1).add_(dq)
    return out


def _input_transform_grad(dv: Tensor, h: int, w: int) -> Tensor:
    """The transpose of :func:`_input_transform`: ``dV [4, 4, Tp, B, H/2, W/2, C]`` ->
    ``dx [B, Tp, H, W, C]``."""
    rows = []
    for a in range(4):
        cols = _b(*(dv[a, k] for k in range(4)))  # 4 x [Tp, B, H/2, W/2, C]
        rows.append(_scatter_tiles(cols, 3, w + 2))  # [Tp, B, H/2, W+2, C]
    dxp = _scatter_tiles(_b(*rows), 2, h + 2)  # [Tp, B, H+2, W+2, C]
    return dxp[:, :, 1 : h + 1, 1 : w + 1].transpose(0, 1)


class _WinogradConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, u: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        b, c, tp, h, w = x.shape
        kt, cout = u.shape[0], u.shape[2]
        t = tp - kt + 1
        v = _input_transform(x)  # [4, 4, Tp, B, H/2, W/2, C]
        vf = v.view(16, tp, -1, c)
        m = torch.bmm(vf[:, :t].reshape(16, -1, c), u[0].transpose(1, 2))
        for k in range(1, kt):
            m.baddbmm_(vf[:, k : k + t].reshape(16, -1, c), u[k].transpose(1, 2))
        # A channels-last output written through its [B, T, H, W, Co] view (returning that view
        # permuted would make it a view, which autograd forbids modifying in place).
        out = torch.empty(
            (b, cout, t, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last_3d
        )
        y = out.permute(0, 2, 3, 4, 1)
        tiles = y.view(b, t, h // 2, 2, w // 2, 2, cout)
        _output_transform(m.view(4, 4, t, b, h // 2, w // 2, cout), tiles)
        if bias is not None:
            y += bias
        ctx.save_for_backward(v, u)
        ctx.has_bias = bias is not None
        ctx.hw = (h, w)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        v, u = ctx.saved_tensors
        h, w = ctx.hw
        kt, cout, c = u.shape[0], u.shape[2], u.shape[3]
        gy = grad.permute(0, 2, 3, 4, 1)  # [B, T, H, W, Co]
        b, t = gy.shape[:2]
        tp = t + kt - 1
        dm = _output_transform_grad(gy).view(16, -1, cout)  # [16, T*B*tiles, Co]
        vf = v.view(16, tp, -1, c)
        du = dv = db = None
        if ctx.needs_input_grad[1]:
            du = torch.stack(
                [
                    torch.bmm(dm.transpose(1, 2), vf[:, k : k + t].reshape(16, -1, c))
                    for k in range(kt)
                ]
            )
        if ctx.needs_input_grad[0]:
            dvf = v.new_zeros(16, tp, dm.shape[1] // t, c)
            for k in range(kt):
                dvf[:, k : k + t].view(16, -1, c).baddbmm_(dm, u[k])
            dx = _input_transform_grad(dvf.view(4, 4, tp, b, h // 2, w // 2, c), h, w)
            dv = dx.permute(0, 4, 1, 2, 3)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = gy.sum(dim=(0, 1, 2, 3))
        return dv, du, db


def winograd_conv3d(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.conv3d(x, weight, bias, padding=(0, 1, 1))`` by Winograd F(2x2, 3x3).

    ``x [B, Cin, Tp, H, W]`` (H, W even), ``weight [Cout, Cin, k_t, 3, 3]`` ->
    ``[B, Cout, Tp - k_t + 1, H, W]`` channels-last. Differentiable in all three."""
    if x.dim() != 5 or weight.dim() != 5 or tuple(weight.shape[3:]) != (3, 3):
        raise ValueError(
            f"winograd_conv3d expects x [B, C, T, H, W] and weight [Cout, Cin, k_t, 3, 3], got "
            f"{tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if (
        x.shape[1] != weight.shape[1]
        or x.shape[3] % 2
        or x.shape[4] % 2
        or x.shape[2] < weight.shape[2]
    ):
        raise ValueError(
            f"winograd_conv3d: input {tuple(x.shape)} does not fit weight {tuple(weight.shape)} "
            "(channels must match, H and W be even, T at least k_t)"
        )
    return _WinogradConv.apply(x, weight_transform(weight), bias)
