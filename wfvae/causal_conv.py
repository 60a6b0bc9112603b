"""Causal 3D convolution with the chunk cache used for streaming (chunked) inference.

A causal conv pads time in front with ``k_t - 1`` copies of the first frame (never zeros, never
at the end); space is zero padded as usual. In chunked mode a :class:`ChunkCache` carries, for
every stateful module, the frames of its time-padded input that the previous chunk did not
consume, and those frames replace the replicated first frame. The tail kept is exactly
``padded[n_out * stride:]``, so any chunk length (and any stride) streams losslessly, unlike a
fixed ``(k - 1) // stride`` tail, which is only right when the chunk length is a multiple of
the stride.

Frame-wise 2D convs (:class:`FrameConv2d`) are ``(1, k, k)`` 3D convs on ``[B, C, T, H, W]``,
which avoids the ``(b t) c h w`` reshape copy and keeps channels-last activations as they are.

Both take Winograd F(4x4, 3x3) (:mod:`wfvae.winograd`) for wide float32 3x3 convs on the CPU
while their ``winograd`` flag is on (the default; ``WFVAE(conv_algorithm="direct")`` clears it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wfvae.winograd import winograd_applies, winograd_conv3d

_UNSEEN = object()
_MKLDNN = torch.backends.mkldnn.is_available()


def conv3d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...] = (1, 1, 1),
    groups: int = 1,
) -> Tensor:
    """``F.conv3d`` that always takes oneDNN for fp32 on CPU.

    PyTorch's backend heuristic sends a batch-1 fp32 conv3d whose ``C * T * H`` is at most
    20480 to its im2col kernel, 3x slower than oneDNN for a 3x3x3 kernel. Short chunks of a
    streaming decode (2 latent frames, 16^2) hit it in every block, which made chunked decode
    1.3-1.5x slower than a full one. ``mkldnn_convolution`` is the op the heuristic picks for
    larger inputs (same kernel, same numbers, autograd included); autocast, other devices and
    ``torch.compile`` keep ``F.conv3d`` (tracing the oneDNN op directly fails: the compiler's
    fake tensors cannot run it).
    """
    if (
        not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.dim() == 5
        and _MKLDNN
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
    ):
        return torch.mkldnn_convolution(x, weight, bias, padding, stride, dilation, groups)
    return F.conv3d(x, weight, bias, stride, padding, dilation, groups)


def _count_mkldnn_convolution_flops() -> None:
    # FlopCounterMode knows aten.convolution, not the oneDNN op that conv3d() calls directly:
    # without this, FLOP counts (scripts/benchmark.py, users' profiling) would miss our convs.
    from torch.utils import flop_counter

    op = torch.ops.aten.mkldnn_convolution
    if op in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(op)
    def _flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


_count_mkldnn_convolution_flops()


class ChunkCache:
    """State of one chunked encode or decode call, shared by all modules of the network.

    It is created fresh for every call, so calls are independent and any length works.
    ``final`` is set by the caller before the last chunk (modules then flush what they hold
    back and store nothing more).
    """

    def __init__(self) -> None:
        self._state: dict[int, Any] = {}
        self._seen: set[int] = set()
        self.final = False
        self.peak_nbytes = 0

    def first_call(self, module: nn.Module) -> bool:
        """True the first time ``module`` asks during this call (its first chunk)."""
        key = id(module)
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def get(self, module: nn.Module, default: Any = None) -> Any:
        return self._state.get(id(module), default)

    def set(self, module: nn.Module, value: Any) -> None:
        self._state[id(module)] = value

    def clear(self) -> None:
        self._state.clear()
        self._seen.clear()
        self.final = False
        self.peak_nbytes = 0

    def nbytes(self) -> int:
        """Bytes held in cached tensors now."""
        return sum(v.numel() * v.element_size() for v in self._state.values() if torch.is_tensor(v))

    def record(self) -> None:
        """Update ``peak_nbytes`` (called after every chunk)."""
        self.peak_nbytes = max(self.peak_nbytes, self.nbytes())


def causal_time_pad(
    x: Tensor, module: nn.Module, kernel_t: int, stride_t: int, cache: ChunkCache | None
) -> Tensor:
    """Prepend the causal time context of ``module`` to ``x`` ``[B, C, T, H, W]``.

    Returns the padded input. On the first chunk (or without cache) the context is
    ``kernel_t - 1`` copies of frame 0; later it is the unconsumed tail of the previous chunk.
    The new tail is stored in ``cache`` unless this is the final chunk.
    """
    tail = None if cache is None else cache.get(module)
    if tail is None:
        xp = torch.cat([x[:, :, :1]] * (kernel_t - 1) + [x], dim=2) if kernel_t > 1 else x
    else:
        xp = torch.cat([tail, x], dim=2) if tail.shape[2] > 0 else x
    if xp.shape[2] < kernel_t:
        raise RuntimeError(
            f"{type(module).__name__}: chunk too short ({xp.shape[2]} padded frames < kernel "
            f"{kernel_t}); this is a bug in the chunk schedule"
        )
    if cache is not None and not cache.final:
        n_out = (xp.shape[2] - kernel_t) // stride_t + 1
        # clone: keep only the tail alive, not the whole chunk activation.
        cache.set(module, xp[:, :, n_out * stride_t :].clone())
    return xp


def _triple(v: int | tuple[int, ...]) -> tuple[int, int, int]:
    if isinstance(v, int):
        return (v, v, v)
    if len(v) != 3:
        raise ValueError(f"expected an int or a 3-tuple, got {v!r}")
    return (int(v[0]), int(v[1]), int(v[2]))


class CausalConv3d(nn.Conv3d):
    """Conv3d, causal in time: ``[B, Cin, T, H, W] -> [B, Cout, (T-1)//s_t + 1, H', W']``.

    ``padding`` applies to space only (zeros); the time padding is always ``k_t - 1`` frames of
    causal context (see :func:`causal_time_pad`). ``winograd``: compute the conv by Winograd
    where :func:`wfvae.winograd.winograd_applies` says it pays.
    """

    winograd: bool = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
        bias: bool = True,
    ) -> None:
        k = _triple(kernel_size)
        s = _triple(stride)
        p = _triple(padding)
        super().__init__(in_channels, out_channels, k, stride=s, padding=(0, p[1], p[2]), bias=bias)

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        args = (self.stride, self.padding, self.dilation, self.groups)
        if self.winograd and winograd_applies(x, weight, *args):
            return winograd_conv3d(x, weight, bias)
        return conv3d(x, weight, bias, *args)

    def forward(
        self, x: Tensor, cache: ChunkCache | None = None, silu_input: bool = False
    ) -> Tensor:
        """``conv(causal_pad(silu(x) if silu_input else x))``.

        With ``silu_input`` and no autograd graph, SiLU writes straight into the time-padded
        buffer, which saves the copy a ``cat`` of context and input costs (about 8 % of a
        decode on CPU). Not while ``torch.compile`` traces: the ``out=`` view breaks its graph
        in every conv (and the compiler fuses the SiLU into the copy itself).
        """
        kt, st = self.kernel_size[0], self.stride[0]
        if kt == 1 and st == 1:
            return self._conv_forward(F.silu(x) if silu_input else x, self.weight, self.bias)
        no_graph = not (torch.is_grad_enabled() and x.requires_grad)
        if silu_input and no_graph and not torch.compiler.is_compiling():
            return self._conv_forward(self._silu_padded(x, cache), self.weight, self.bias)
        if silu_input:
            x = F.silu(x)
        return self._conv_forward(causal_time_pad(x, self, kt, st, cache), self.weight, self.bias)

    def _silu_padded(self, x: Tensor, cache: ChunkCache | None) -> Tensor:
        kt, st = self.kernel_size[0], self.stride[0]
        tail = None if cache is None else cache.get(self)
        p = kt - 1 if tail is None else tail.shape[2]
        b, c, t, h, w = x.shape
        fmt = torch.channels_last_3d if x.stride(1) == 1 and c > 1 else torch.contiguous_format
        buf = torch.empty((b, c, p + t, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
        torch.ops.aten.silu.out(x, out=buf[:, :, p:])
        if tail is None:
            buf[:, :, :p] = buf[:, :, p : p + 1]
        elif p > 0:
            buf[:, :, :p] = tail
        if buf.shape[2] < kt:
            raise RuntimeError(f"CausalConv3d: chunk too short ({buf.shape[2]} < {kt} frames)")
        if cache is not None and not cache.final:
            n_out = (buf.shape[2] - kt) // st + 1
            cache.set(self, buf[:, :, n_out * st :].clone())
        return buf


class FrameConv2d(nn.Conv3d):
    """A 2D conv applied to every frame: ``[B, Cin, T, H, W] -> [B, Cout, T, H', W']``.

    Stored as a Conv3d with a ``(1, k, k)`` kernel (weight ``[Cout, Cin, 1, k, k]``) so that every
    weight of the model is 5D and ``model.to(memory_format=torch.channels_last_3d)`` works (it
    rejects 4D tensors). 4D input (images) is accepted too. ``winograd`` as in
    :class:`CausalConv3d`.
    """

    winograd: bool = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            (1, kernel_size, kernel_size),
            stride=(1, stride, stride),
            padding=(0, padding, padding),
            bias=bias,
        )

    def forward(self, x: Tensor, cache: ChunkCache | None = None) -> Tensor:
        weight2d = self.weight.squeeze(2)
        if x.dim() == 4:
            return F.conv2d(x, weight2d, self.bias, self.stride[1:], self.padding[1:])
        if x.dim() != 5:
            raise ValueError(f"FrameConv2d expects 4D or 5D input, got shape {tuple(x.shape)}")
        args = (self.stride, self.padding, self.dilation, self.groups)
        if self.winograd and winograd_applies(x, self.weight, *args):
            return winograd_conv3d(x, self.weight, self.bias)
        b, c, t, h, w = x.shape
        if x.stride(1) == 1 and c > 1:
            # Channels-last: frames-as-batch is a free view. As a 2D conv it also takes oneDNN's
            # path where a batch-1 fp32 conv3d with few channels falls back to a slow kernel.
            frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
            y = F.conv2d(frames, weight2d, self.bias, self.stride[1:], self.padding[1:])
            return y.reshape(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)
        return self._conv_forward(x, self.weight, self.bias)
