"""Run one part of a training step, forward and backward, on its own number of intra-op
threads (``torch.set_num_threads``).

Small convolutions do not split well when idle threads sleep (``OMP_WAIT_POLICY=PASSIVE``):
the reduced STDiff's motion SDE (64 x 16 x 32 state, 3x3 convs of 64-128 channels over 512
pixels) then runs its forward + backward 1.4x faster on one thread than on two in float32 and
2x in bf16 (``scripts/benchmark.py --only stdiff_sde``, README). Under OpenMP's default policy
(threads spin briefly before sleeping) two threads win. The
forward is a plain scope; the backward is bracketed by two identity autograd nodes: the one on
the part's output sets the part's thread count when its gradient arrives (the part's backward
runs next), the one on its input restores the caller's count when the gradient leaves. A
callback queued on the autograd engine restores it at the end of the backward pass in any case
(an input that needs no gradient, an error in between).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


@contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block (nothing when ``n`` is None)."""
    if n is None:
        yield
        return
    outer = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(outer)


class _ThreadsInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, n, restore):  # type: ignore[override]
        ctx.n, ctx.restore = n, restore
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        torch.set_num_threads(ctx.n)
        if ctx.restore is not None:
            restore = ctx.restore
            torch.autograd.Variable._execution_engine.queue_callback(
                lambda: torch.set_num_threads(restore)
            )
        return grad, None, None


def enter_in_backward(x: Tensor, n: int | None) -> Tensor:
    """``x`` (a part's output), whose backward sets ``n`` threads for the part's backward and
    restores the current count at the end of the backward pass."""
    if n is None or not x.requires_grad:
        return x
    return _ThreadsInBackward.apply(x, n, torch.get_num_threads())


def leave_in_backward(x: Tensor, n: int | None) -> Tensor:
    """``x`` (a part's input), whose backward restores the current thread count once the
    part's backward is done (``n``: the part's count, only to decide whether to wrap)."""
    if n is None or not x.requires_grad:
        return x
    return _ThreadsInBackward.apply(x, torch.get_num_threads(), None)
