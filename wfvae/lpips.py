"""LPIPS as a frozen training loss for WF-VAE (per frame, VGG16 by default).

Wraps :class:`wavecast.metrics.lpips.LPIPS` and keeps it *outside* the module tree: it is moved
with the module (``.to(device)``, ``.double()``, ... through ``_apply``) but it is not a
parameter (no optimizer, no gradient accumulation), not a buffer (DDP would broadcast ~58 MB of
VGG16 every step) and not in checkpoints (it comes from the local file on every start).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from einops import rearrange
from torch import Tensor, nn

from wavecast.metrics.lpips import LPIPS
from wavecast.metrics.weights import LPIPSWeights, evaluating, resolve_lpips_weights


class PerceptualLoss(nn.Module):
    """Frozen per-frame LPIPS: ``forward(x, y)`` with ``[B, 3, T, H, W]`` in [-1, 1] -> ``[B*T]``."""

    def __init__(self, weights: LPIPSWeights) -> None:
        super().__init__()
        # Through __dict__ so nn.Module does not register it as a submodule.
        self.__dict__["lpips"] = LPIPS.from_weights(weights)
        self.net_name = weights.net

    def _apply(self, fn: Callable, recurse: bool = True) -> PerceptualLoss:
        super()._apply(fn, recurse)
        self.__dict__["lpips"]._apply(fn)
        return self

    def extra_repr(self) -> str:
        return f"net={self.net_name!r} (frozen, not saved)"

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        # Follow the weights' dtype (fp32, or bf16 under "bf16-true" precision).
        dtype = self.lpips.scaling_layer.shift.dtype
        x, y = x.to(dtype), y.to(dtype)
        if x.dim() == 5:
            x = rearrange(x, "b c t h w -> (b t) c h w")
            y = rearrange(y, "b c t h w -> (b t) c h w")
        return self.lpips(x, y)


def build_perceptual_loss(spec: Any, net: str = "vgg") -> PerceptualLoss | None:
    """PerceptualLoss from local weights (``spec``: folder, ``{backbone, lin}`` or None).

    None means "not configured": returns None after the once-only notice of
    :func:`wavecast.metrics.weights.resolve_lpips_weights`. A configured but wrong spec raises.
    """
    consequence = (
        "the evaluation loss (test/loss, val/loss) leaves out the perceptual term"
        if evaluating()
        else "the perceptual loss term is off"
    )
    weights = resolve_lpips_weights(spec, net, consequence=consequence)
    return None if weights is None else PerceptualLoss(weights)
