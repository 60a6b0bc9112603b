"""Memory-lean normalisation for training: GroupNorm -> SiLU, and SPADE's instance norm ->
``* scale + shift``, each as one autograd node.

Autograd keeps, for ``silu(group_norm(x.float()))``, the float32 copy of ``x`` (for the norm's
backward) and the norm's float32 output (for SiLU's); for ``instance_norm(h.float()) * scale
+ shift`` the float32 copy of ``h`` and the float32 normalised ``h``. These nodes keep only the
input as it came (bf16 under autocast, so half the bytes; often the very tensor the next conv
or the skip path keeps anyway) with the per-group mean and 1/std, and rebuild the normalised
values in backward with the same group-norm kernel, so the gradients are the unfused ones bit
for bit. The rebuild is one group-norm forward per node (a few per cent of the step); at the
kitti_range step it frees ~2 GB of saved activations (README, Benchmarks). It is not
gradient checkpointing: nothing upstream of the norm is recomputed.

Forward values are the unfused ones exactly; both compute in float32 and return float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

#: Input dtypes that the norms here compute in float32.
LOW_PRECISION = (torch.bfloat16, torch.float16)


def group_norm(norm: nn.GroupNorm, x: Tensor) -> Tensor:
    """``norm(x)`` computed in float32 for bf16 / fp16 input.

    The CPU bf16 group-norm kernels are several times slower than float32 (channels-last most
    of all; measured for scripts/benchmark.py) and round the statistics; autocast leaves group
    norm in the input dtype, and the next conv casts back.
    """
    if x.dtype in LOW_PRECISION:
        x = x.float()
    return norm(x)


def _like(grad: Tensor, x: Tensor) -> Tensor:
    """``grad`` in ``x``'s memory format: the group-norm backward kernel reads both alike."""
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return grad.contiguous(memory_format=fmt)


def _dims(x: Tensor) -> tuple[int, int, int]:
    """``(N, C, HxW)`` of ``x [N, C, *]``, as the native group-norm ops take them."""
    return x.shape[0], x.shape[1], x[0, 0].numel()


def _group_norm_stats(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, mean, rstd)`` of ``native_group_norm`` on ``x [N, C, *]`` in float32."""
    return torch.native_group_norm(x.float(), weight, bias, *_dims(x), groups, eps)


class _GroupNormSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps):  # type: ignore[override]
        with torch.autocast(x.device.type, enabled=False):
            y, mean, rstd = _group_norm_stats(x, weight, bias, groups, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.groups, ctx.eps = groups, eps
        return F.silu(y, inplace=True)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, bias, mean, rstd = ctx.saved_tensors
        xf = x.float()
        # The same kernel on the same input: y is the forward's bit for bit.
        y, _, _ = _group_norm_stats(xf, weight, bias, ctx.groups, ctx.eps)
        grad_y = _like(torch.ops.aten.silu_backward(grad_out, y), xf)
        gx, gw, gb = torch.ops.aten.native_group_norm_backward(
            grad_y, xf, mean, rstd, weight, *_dims(x), ctx.groups, list(ctx.needs_input_grad[:3])
        )
        if gx is not None:
            gx = gx.to(x.dtype)
        return gx, gw, gb, None, None


class _InstanceNormModulate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, scale, shift, eps):  # type: ignore[override]
        with torch.autocast(h.device.type, enabled=False):
            normalized, mean, rstd = _group_norm_stats(h, None, None, h.shape[1], eps)
            out = torch.addcmul(shift, normalized, scale)
        ctx.save_for_backward(h, scale, mean, rstd)
        ctx.eps = eps
        ctx.dtypes = (scale.dtype, shift.dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        h, scale, mean, rstd = ctx.saved_tensors
        hf = h.float()
        channels = h.shape[1]
        normalized, _, _ = _group_norm_stats(hf, None, None, channels, ctx.eps)
        g_h = g_scale = g_shift = None
        if ctx.needs_input_grad[0]:
            g_norm = _like(grad_out * scale, hf)
            g_h = torch.ops.aten.native_group_norm_backward(
                g_norm, hf, mean, rstd, None, *_dims(h), channels, [True, False, False]
            )[0].to(h.dtype)
        if ctx.needs_input_grad[1]:
            g_scale = (grad_out * normalized).to(ctx.dtypes[0])
        if ctx.needs_input_grad[2]:
            g_shift = grad_out.to(ctx.dtypes[1])
        return g_h, g_scale, g_shift, None


def group_norm_silu(norm: nn.GroupNorm, x: Tensor) -> Tensor:
    """``silu(norm(x.float()))`` for ``x [N, C, *]``, float32 out, keeping only ``x`` and the
    statistics for backward (see the module docstring)."""
    affine_grad = norm.weight is not None and norm.weight.requires_grad
    if not (torch.is_grad_enabled() and (x.requires_grad or affine_grad)):
        return F.silu(group_norm(norm, x), inplace=True)
    return _GroupNormSiLU.apply(x, norm.weight, norm.bias, norm.num_groups, norm.eps)


def instance_norm_modulate(h: Tensor, scale: Tensor, shift: Tensor, eps: float) -> Tensor:
    """``instance_norm(h.float()) * scale + shift`` for ``h [N, C, H, W]`` and ``scale``,
    ``shift`` of the same shape, float32 out, keeping ``h``, ``scale`` and the statistics for
    backward. The statistics are the group-norm kernel's with one group per channel."""
    return _InstanceNormModulate.apply(h, scale, shift, eps)
