"""Edge-preserving loss: L1 (or L2) between Sobel gradients, to fight blur from warping.

Used between z_warp (or the fused latent) and z_cur, or between decoded frames.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# Sobel kernels divided by 8, so a unit ramp (value = x) has gradient exactly 1.
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
_SOBEL_Y = _SOBEL_X.t().contiguous()


def sobel_gradients(x: torch.Tensor) -> torch.Tensor:
    """Per-channel Sobel gradients of x [B, C, H, W] -> [B, C, 2, H, W] (d/dx, d/dy).

    Borders are replicate-padded, so a ramp's gradient is exact away from the outermost pixels.
    """
    if x.ndim != 4:
        raise ValueError(f"sobel_gradients: x must be [B, C, H, W], got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    kernel = torch.stack((_SOBEL_X, _SOBEL_Y)).to(dtype=x.dtype, device=x.device)
    kernel = kernel.unsqueeze(1).repeat(c, 1, 1, 1)  # [2C, 1, 3, 3], depthwise per channel
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, kernel, groups=c).view(b, c, 2, h, w)


def edge_preserving_loss(
    pred: torch.Tensor, target: torch.Tensor, norm: str = "l1", reduction: str = "mean"
) -> torch.Tensor:
    """Distance between the Sobel gradients of pred and target, both [B, C, H, W]."""
    if pred.shape != target.shape:
        raise ValueError(
            f"edge_preserving_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ"
        )
    diff = sobel_gradients(pred) - sobel_gradients(target)
    if norm == "l1":
        err = diff.abs()
    elif norm == "l2":
        err = diff.square()
    else:
        raise ValueError(f"edge_preserving_loss: norm must be 'l1' or 'l2', got {norm!r}")
    if reduction == "mean":
        return err.mean()
    if reduction == "sum":
        return err.sum()
    if reduction == "none":
        return err
    raise ValueError(f"edge_preserving_loss: reduction must be mean|sum|none, got {reduction!r}")


class EdgePreservingLoss(nn.Module):
    """`weight * edge_preserving_loss(pred, target)`, configurable from YAML."""

    def __init__(self, weight: float = 0.1, norm: str = "l1") -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"EdgePreservingLoss.weight must be >= 0, got {weight}")
        self.weight = weight
        self.norm = norm

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.weight * edge_preserving_loss(pred, target, norm=self.norm)
