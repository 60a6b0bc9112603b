"""PSNR and SSIM per frame, batched in torch.

Conventions (the WF-VAE paper's evaluation, minus the reference's range mistake):
- inputs are videos ``[B, C, T, H, W]`` (``layout="bcthw"``, the VAE's) or ``[B, T, C, H, W]``
  (``layout="btchw"``, STDiff's), or single images ``[B, C, H, W]``;
- values are in ``value_range`` (default [-1, 1], the models' range) and are mapped to [0, 1]
  and clamped there before scoring, so that PSNR / SSIM have data range 1;
- results are per frame: ``[B, T]`` for videos, ``[B]`` for images. Average as you need.

Hand-written rather than torchmetrics because the reductions we need (per frame, per video,
mean and best of K) are easier to get right from per-frame tensors, and the formulas are short.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

PSNR_MAX_DB = 100.0  # cap for identical frames (MSE 1e-10), as the reference evaluation does


def to_unit_frames(
    x: Tensor, y: Tensor, layout: str = "bcthw", value_range: tuple[float, float] = (-1.0, 1.0)
) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Check shapes, map to [0, 1] (float32 or wider) and flatten to frames ``[N, C, H, W]``.

    Returns the two frame stacks and the leading shape to restore (``(B, T)`` or ``(B,)``).
    """
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    lo, hi = value_range
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    if x.dim() == 4:
        lead = (x.shape[0],)
        fx, fy = x, y
    elif x.dim() == 5:
        if layout == "bcthw":
            pattern = "b c t h w -> (b t) c h w"
            lead = (x.shape[0], x.shape[2])
        elif layout == "btchw":
            pattern = "b t c h w -> (b t) c h w"
            lead = (x.shape[0], x.shape[1])
        else:
            raise ValueError(f"layout must be 'bcthw' or 'btchw', got {layout!r}")
        fx, fy = rearrange(x, pattern), rearrange(y, pattern)
    else:
        raise ValueError(f"expected [B, C, H, W] or a 5-D video, got {tuple(x.shape)}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    fx = ((fx.to(dtype) - lo) / (hi - lo)).clamp(0.0, 1.0)
    fy = ((fy.to(dtype) - lo) / (hi - lo)).clamp(0.0, 1.0)
    return fx, fy, lead


def psnr(
    pred: Tensor,
    target: Tensor,
    layout: str = "bcthw",
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> Tensor:
    """PSNR in dB per frame on [0, 1]: ``10 log10(1 / MSE)``, MSE over C, H, W.

    Identical frames give :data:`PSNR_MAX_DB` instead of inf. Shapes: see the module docstring.
    """
    fx, fy, lead = to_unit_frames(pred, target, layout, value_range)
    mse = (fx - fy).pow(2).mean(dim=(1, 2, 3))
    out = 10.0 * torch.log10(1.0 / mse.clamp_min(10.0 ** (-PSNR_MAX_DB / 10.0)))
    return out.view(lead)


def gaussian_window(
    size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Normalised 1-D Gaussian ``[size]`` (the same taps as ``cv2.getGaussianKernel``)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(r**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(dtype)


def ssim(
    pred: Tensor,
    target: Tensor,
    layout: str = "bcthw",
    value_range: tuple[float, float] = (-1.0, 1.0),
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """SSIM per frame on [0, 1] with a Gaussian window (11 x 11, sigma 1.5).

    Computed per channel on the "valid" region (no padding: the map is ``(H - 10) x (W - 10)``),
    then averaged over channels and positions -- as the WF-VAE evaluation does with OpenCV.
    The moments are formed in ``dtype`` (float64 by default, like the reference): in float32
    ``E[x^2] - E[x]^2`` leaves ~1e-8 noise, which against ``C2 = 9e-4`` moves SSIM by ~5e-5.
    """
    fx, fy, lead = to_unit_frames(pred.to(dtype), target.to(dtype), layout, value_range)
    n, c, h, w = fx.shape
    if h < window_size or w < window_size:
        raise ValueError(f"SSIM needs frames of at least {window_size}x{window_size}, got {h}x{w}")
    g = gaussian_window(window_size, sigma, fx.dtype).to(fx.device)
    # Separable Gaussian blur of the five moment maps, all channels in one grouped conv pair.
    stack = torch.cat([fx, fy, fx * fx, fy * fy, fx * fy], dim=1)  # [N, 5C, H, W]
    groups = stack.shape[1]
    blurred = F.conv2d(stack, g.view(1, 1, 1, -1).expand(groups, 1, 1, -1), groups=groups)
    blurred = F.conv2d(blurred, g.view(1, 1, -1, 1).expand(groups, 1, -1, 1), groups=groups)
    mu_x, mu_y, exx, eyy, exy = blurred.split(c, dim=1)
    var_x = exx - mu_x**2
    var_y = eyy - mu_y**2
    cov = exy - mu_x * mu_y
    c1, c2 = k1**2, k2**2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    out_dtype = torch.promote_types(pred.dtype, torch.float32)
    return (num / den).mean(dim=(1, 2, 3)).view(lead).to(out_dtype)
