"""Winograd F(4x4, 3x3) convolution for the 3x3 spatial kernels of WF-VAE (CPU, float32).

A direct 3x3 conv spends 9 multiply-adds per output value and input channel. Winograd's minimal
filtering (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) computes a
4 x 4 output tile from a 6 x 6 input tile with 36 products per channel pair, 4x fewer, at the
price of linear transforms of the input tiles, the weights and the products:

    Y = A^T [ (G g G^T) * (B^T d B) ] A        (``*`` elementwise over the 6 x 6 points)

Summed over input channels, the elementwise product becomes one matrix product per point:
36 GEMMs ``[tiles, Cin] @ [Cin, Cout]``. The time taps of a ``(k_t, 3, 3)`` kernel accumulate
into the same GEMMs (tap ``k`` reads the transformed input shifted by ``k`` frames), so a
causal 3x3x3 conv and a per-frame 3x3 conv run the same code. The 2D transforms are single
GEMMs with the Kronecker products of the 1D matrices (``[36, 36] @ [36, everything]``).

Why by hand: oneDNN has Winograd only for 2D convs and PyTorch does not expose it; NNPACK
(built into the CPU wheel) fails to initialise on this machine. On the 2-core Xeon the wide
convs of WF-VAE-L run 1.4-2.8x faster than oneDNN's direct kernel, and forward + backward of
128-896-channel convs 1.4-3.2x (``scripts/bench/winograd.py`` measures the models' shapes);
:func:`winograd_applies` keeps the direct conv where it is not faster.

Numerics: F(4x4, 3x3) is the usual trade (cuDNN's and oneDNN's fp32 Winograd): its transforms
have coefficients up to 8 and 1/24, so its float32 error is about ten times the direct conv's
(rms 3.5e-6 of the output against 3.5e-7, at most ~1e-5 of its scale); F(2x2, 3x3) would be as
accurate as direct but gained only 1.3-2x here. ``WFVAE(conv_algorithm="direct")`` keeps
PyTorch's convolution everywhere. Gradients come from the same transforms transposed (the
backward of the tiled computation): the input gradient is ``B (dM @ U) B^T`` scattered back over
the overlapping tiles, the weight gradient ``G^T (dM^T @ V) G``.

Shapes: input ``[B, Cin, T + k_t - 1, H, W]`` (time already padded by the caller, space not),
weight ``[Cout, Cin, k_t, 3, 3]``, output ``[B, Cout, T, H, W]`` channels-last; any H, W (tiles
beyond the edge read zeros and their outputs are dropped).
"""

from __future__ import annotations

import functools
import math
import threading

import torch
import torch.nn.functional as F
from torch import Tensor

# (input channels, output positions T * H * W per clip) from which Winograd pays, measured on
# the 2-core Xeon (scripts/bench/winograd.py). Forward only (no graph): 128 channels at 5 x 16 x
# 48 win 1.4x, 64 channels break even, and below ~1000 positions the weight transform, redone
# on every call, outweighs the saving. Training (forward + backward) at batch 1: oneDNN's
# backward is slow for narrow batch-1 convs, so Winograd wins 2.5x from 32 channels. At batch 2
# and more that backward is fast again: 64 channels lose (0.8x at 32 x 96), 128 channels win
# from ~5000 positions (1.4-1.6x) and break even at 2300.
INFERENCE_MIN = (128, 1024)
TRAINING_MIN_BATCH1 = (32, 768)
TRAINING_MIN = (128, 4096)

_M, _A = 4, 6  # output tile 4 x 4 from input tile 6 x 6
# F(4, 3) of Lavin & Gray: B^T (input), G (kernel), A^T (output).
_BT = (
    (4.0, 0.0, -5.0, 0.0, 1.0, 0.0),
    (0.0, -4.0, -4.0, 1.0, 1.0, 0.0),
    (0.0, 4.0, -4.0, -1.0, 1.0, 0.0),
    (0.0, -2.0, -1.0, 2.0, 1.0, 0.0),
    (0.0, 2.0, -1.0, -2.0, 1.0, 0.0),
    (0.0, 4.0, 0.0, -5.0, 0.0, 1.0),
)
_G = (
    (1 / 4, 0.0, 0.0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0.0, 0.0, 1.0),
)
_AT = (
    (1.0, 1.0, 1.0, 1.0, 1.0, 0.0),
    (0.0, 1.0, -1.0, 2.0, -2.0, 0.0),
    (0.0, 1.0, 1.0, 4.0, 4.0, 0.0),
    (0.0, 1.0, -1.0, 8.0, -8.0, 1.0),
)


def _kron(m: tuple, like: Tensor) -> Tensor:
    """The 2D transform of a 1D one: ``kron(m, m)`` in ``like``'s dtype and device (built once
    per matrix, dtype and device; every conv call uses four)."""
    return _kron_as(m, like.dtype, like.device)


@functools.cache
def _kron_as(m: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    t = torch.tensor(m, dtype=torch.float64)
    return torch.kron(t, t).to(dtype=dtype, device=device)


def _graph(x: Tensor, weight: Tensor) -> bool:
    """Whether autograd records this conv (a gradient will flow to ``x`` or ``weight``)."""
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


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
    space padding 1, no time padding, one group, and at least the input channels and output
    positions of :data:`INFERENCE_MIN` without a graph, of :data:`TRAINING_MIN_BATCH1` or
    :data:`TRAINING_MIN` (batch 1 or more) with one. Never while ``torch.compile`` traces: the
    compiler picks its own conv kernels, and the workspace is state it should not trace."""
    if torch.compiler.is_compiling():
        return False
    if not _graph(x, weight):
        min_channels, min_positions = INFERENCE_MIN
    else:
        min_channels, min_positions = TRAINING_MIN_BATCH1 if x.shape[0] == 1 else TRAINING_MIN
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
        and weight.shape[1] >= min_channels
        and x.shape[2] >= weight.shape[2]
        and (x.shape[2] - weight.shape[2] + 1) * x.shape[3] * x.shape[4] >= min_positions
    )


def weight_transform(weight: Tensor) -> Tensor:
    """``G g G^T`` per time tap: ``[Cout, Cin, k_t, 3, 3] -> [k_t, 36, Cout, Cin]``
    (differentiable; one ``[36, 9] @ [9, Cout * Cin]`` product per tap)."""
    cout, cin, kt = weight.shape[:3]
    w9 = weight.permute(2, 3, 4, 0, 1).reshape(kt, 9, cout * cin)
    return torch.matmul(_kron(_G, weight), w9).view(kt, _A * _A, cout, cin)


def _tiles(h: int, w: int) -> tuple[int, int]:
    return -(-h // _M), -(-w // _M)


# Scratch buffers reused from call to call, one per role and thread. glibc serves blocks over
# 32 MB by a fresh mmap and unmaps them when freed, so without reuse every call page-faults its
# large temporaries in again (up to 400 thousand faults, 0.5 s, in a 3 s WF-VAE training step).
# Only buffers that die within one call live here; what autograd keeps or passes on is fresh.
_WORKSPACE = threading.local()


def _scratch(role: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A buffer of ``shape`` (contents undefined), reused by the next call with this role."""
    pool = _WORKSPACE.__dict__.setdefault("pool", {})
    n = math.prod(shape)
    buf = pool.get(role)
    if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
        pool[role] = buf = torch.empty(n, dtype=like.dtype, device=like.device)
    return buf[:n].view(shape)


def clear_workspace() -> None:
    """Free this thread's scratch buffers (they hold up to a few times the largest conv input
    seen; the next Winograd conv allocates them again)."""
    _WORKSPACE.__dict__.pop("pool", None)


def _input_transform(x: Tensor, keep: bool) -> Tensor:
    """``B^T d B`` of every 6 x 6 tile (stride 4) of ``x [B, C, Tp, H, W]`` zero padded by one
    in space (and by zeros up to whole tiles): ``V [36, Tp, B * nH * nW, C]``; a scratch buffer
    unless ``keep`` (autograd saves it)."""
    b, c, tp, h, w = x.shape
    nh, nw = _tiles(h, w)
    hp, wp = nh * _M + 2, nw * _M + 2
    xp = _scratch("padded", (b, tp, hp, wp, c), x)  # [B, Tp, 4 nH + 2, 4 nW + 2, C]
    for border in (xp[:, :, :1], xp[:, :, h + 1 :], xp[:, :, :, :1], xp[:, :, :, w + 1 :]):
        border.zero_()
    xp[:, :, 1 : h + 1, 1 : w + 1].copy_(x.permute(0, 2, 3, 4, 1))
    d = xp.unfold(2, _A, _M).unfold(3, _A, _M)  # [B, Tp, nH, nW, C, 6, 6]
    gathered = _scratch("gathered", (_A, _A, tp, b, nh, nw, c), x)
    gathered.copy_(d.permute(5, 6, 1, 0, 2, 3, 4))
    shape = (_A * _A, tp * b * nh * nw * c)
    out = (
        torch.empty(shape, dtype=x.dtype, device=x.device) if keep else _scratch("points", shape, x)
    )
    torch.matmul(_kron(_BT, x), gathered.view(_A * _A, -1), out=out)
    return out.view(_A * _A, tp, b * nh * nw, c)


def _input_transform_grad(dv: Tensor, b: int, h: int, w: int) -> Tensor:
    """The transpose of :func:`_input_transform`: ``dV [36, Tp, B * nH * nW, C]`` -> ``dx [B,
    Tp, H, W, C]`` (the 6 x 6 tiles overlap by 2 rows and columns: their points add up)."""
    a, tp, _, c = dv.shape
    nh, nw = _tiles(h, w)
    dd = _scratch("grad_points", (_A * _A, dv[0].numel()), dv)
    torch.matmul(_kron(_BT, dv).t(), dv.view(a, -1), out=dd)
    dd = dd.view(_A, _A, tp, b, nh, nw, c)
    dxp = dv.new_zeros(tp, b, nh + 1, _M, nw + 1, _M, c)
    for p in range(_A):
        for q in range(_A):
            i, j = p // _M, q // _M  # points 4, 5 land on the next tile's rows / columns 0, 1
            dxp[:, :, i : i + nh, p % _M, j : j + nw, q % _M] += dd[p, q]
    dxp = dxp.view(tp, b, (nh + 1) * _M, (nw + 1) * _M, c)
    return dxp[:, :, 1 : h + 1, 1 : w + 1].transpose(0, 1)


class _InputTransform(torch.autograd.Function):
    """``x [B, C, Tp, H, W] -> V [36, Tp, B * nH * nW, C]`` (:func:`_input_transform`), with
    the transposed transform as its backward (autograd's own, through ``unfold``, was 1.5x
    slower)."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: bool) -> Tensor:  # type: ignore[override]
        ctx.shape = (x.shape[0], x.shape[3], x.shape[4])
        return _input_transform(x, keep)

    @staticmethod
    def backward(ctx, dv: Tensor) -> Tensor:  # type: ignore[override]
        b, h, w = ctx.shape
        return _input_transform_grad(dv.contiguous(), b, h, w).permute(0, 4, 1, 2, 3), None


class _TiledProduct(torch.autograd.Function):
    """``M = sum_k V[:, k : k + T] @ U_k^T``: per Winograd point, a ``[T * B * tiles, Cin] @
    [Cin, Cout]`` GEMM for each time tap, accumulated; the backward's GEMMs write straight into
    ``dV`` and ``dU`` (autograd's own slices and stacks cost 1.35x more here)."""

    @staticmethod
    def forward(ctx, v: Tensor, u: Tensor, t: int, keep: bool) -> Tensor:  # type: ignore[override]
        c, cout = v.shape[-1], u.shape[2]
        shape = (_A * _A, t * v.shape[2], cout)
        m = (
            torch.empty(shape, dtype=v.dtype, device=v.device)
            if keep
            else _scratch("products", shape, v)
        )
        torch.bmm(v[:, :t].reshape(_A * _A, -1, c), u[0].transpose(1, 2), out=m)
        for k in range(1, u.shape[0]):  # time taps: the same tiles, k frames later
            m.baddbmm_(v[:, k : k + t].reshape(_A * _A, -1, c), u[k].transpose(1, 2))
        ctx.save_for_backward(v, u)
        ctx.t = t
        return m

    @staticmethod
    def backward(ctx, dm: Tensor):  # type: ignore[override]
        v, u = ctx.saved_tensors
        t, c = ctx.t, v.shape[-1]
        dm = dm.contiguous()
        dv = du = None
        if ctx.needs_input_grad[0]:
            dv = torch.zeros_like(v)
            for k in range(u.shape[0]):
                dv[:, k : k + t].view(_A * _A, -1, c).baddbmm_(dm, u[k])
        if ctx.needs_input_grad[1]:
            du = torch.empty_like(u)
            for k in range(u.shape[0]):
                torch.bmm(dm.transpose(1, 2), v[:, k : k + t].reshape(_A * _A, -1, c), out=du[k])
        return dv, du, None, None


class _OutputTransform(torch.autograd.Function):
    """``M [36, T * B * nH * nW, Co]`` (+ bias) -> ``[B, Co, T, H, W]`` channels-last: ``A^T M
    A`` per tile, tiles beyond the edge dropped; the transposed transform as its backward."""

    @staticmethod
    def forward(ctx, m: Tensor, bias: Tensor | None, shape: tuple[int, ...]) -> Tensor:  # type: ignore[override]
        b, t, h, w = shape
        nh, nw = _tiles(h, w)
        cout = m.shape[-1]
        y = _scratch("outputs", (_M * _M, m[0].numel()), m)
        torch.matmul(_kron(_AT, m), m.view(_A * _A, -1), out=y)
        tiles = y.view(_M, _M, t, b, nh, nw, cout).permute(3, 2, 4, 0, 5, 1, 6)
        if h % _M or w % _M:  # partial tiles: crop
            tiles = tiles.reshape(b, t, nh * _M, nw * _M, cout)[:, :, :h, :w]
        # A channels-last output written through its [B, T, H, W, Co] view (returning that view
        # permuted would make it a view, which autograd forbids modifying in place).
        out = torch.empty(
            (b, cout, t, h, w), dtype=m.dtype, device=m.device, memory_format=torch.channels_last_3d
        )
        dst = out.permute(0, 2, 3, 4, 1)
        if not (h % _M or w % _M):
            dst = dst.view(b, t, nh, _M, nw, _M, cout)
        if bias is None:
            dst.copy_(tiles)
        else:
            torch.add(tiles, bias, out=dst)
        ctx.shape = shape
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        b, t, h, w = ctx.shape
        nh, nw = _tiles(h, w)
        gy = grad.permute(0, 2, 3, 4, 1)  # [B, T, H, W, Co]
        cout = gy.shape[-1]
        if h % _M or w % _M:  # partial tiles: zeros beyond the edge
            gy = F.pad(gy, (0, 0, 0, nw * _M - w, 0, nh * _M - h))
        gp = _scratch("grad_tiles", (_M, _M, t, b, nh, nw, cout), grad)
        gp.copy_(gy.reshape(b, t, nh, _M, nw, _M, cout).permute(3, 5, 1, 0, 2, 4, 6))
        dm = (_kron(_AT, grad).t() @ gp.view(_M * _M, -1)).view(_A * _A, -1, cout)
        db = gy.sum(dim=(0, 1, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[1] else None
        return dm, db, None


def winograd_conv3d(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.conv3d(x, weight, bias, padding=(0, 1, 1))`` by Winograd F(4x4, 3x3).

    ``x [B, Cin, Tp, H, W]``, ``weight [Cout, Cin, k_t, 3, 3]`` -> ``[B, Cout, Tp - k_t + 1, H,
    W]`` channels-last. Differentiable in all three."""
    if x.dim() != 5 or weight.dim() != 5 or tuple(weight.shape[3:]) != (3, 3):
        raise ValueError(
            f"winograd_conv3d expects x [B, C, T, H, W] and weight [Cout, Cin, k_t, 3, 3], got "
            f"{tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if x.shape[1] != weight.shape[1] or x.shape[2] < weight.shape[2]:
        raise ValueError(
            f"winograd_conv3d: input {tuple(x.shape)} does not fit weight {tuple(weight.shape)} "
            "(channels must match and T be at least k_t)"
        )
    b, _, tp, h, w = x.shape
    t = tp - weight.shape[2] + 1
    # Separate autograd nodes, so that a gradient for the weight alone (the GAN's adaptive
    # weight takes one) skips the input transform's backward. With a graph V is saved and M is
    # a node's output: fresh tensors then, scratch buffers otherwise.
    keep = _graph(x, weight)
    v = _InputTransform.apply(x, keep)  # [36, Tp, B * nH * nW, Cin]
    m = _TiledProduct.apply(v, weight_transform(weight), t, keep)  # [36, T * B * tiles, Cout]
    return _OutputTransform.apply(m, bias, (b, t, h, w))
