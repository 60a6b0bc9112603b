"""Per-channel latent statistics -> the scale / shift that normalise a VAE's latents.

Diffusion models on VAE latents want roughly unit-variance inputs. WF-VAE-L ships the Stable
Diffusion constant 0.18215, which is not measured on its own latents; users ask how to derive a
per-dataset value. `LatentStats` accumulates, in float64, the per-channel mean and standard
deviation of latents over a data set; the normalised latent is `(z - shift) * scale` with
`shift = mean` and `scale = 1 / std`.
"""

from __future__ import annotations

import torch
from torch import Tensor


class LatentStats:
    """Streaming per-channel mean / std of latents `[B, C, ...]` (sums in float64)."""

    def __init__(self) -> None:
        self.count = 0
        self.sum: Tensor | None = None
        self.sum_sq: Tensor | None = None

    def update(self, z: Tensor) -> None:
        if z.ndim < 2:
            raise ValueError(f"latents must be [B, C, ...], got shape {tuple(z.shape)}")
        z = z.detach().to(torch.float64).transpose(0, 1).reshape(z.shape[1], -1)
        if self.sum is None:
            self.sum = torch.zeros(z.shape[0], dtype=torch.float64)
            self.sum_sq = torch.zeros_like(self.sum)
        elif z.shape[0] != self.sum.shape[0]:
            raise ValueError(f"latent channels changed from {self.sum.shape[0]} to {z.shape[0]}")
        self.sum += z.sum(1)
        self.sum_sq += z.pow(2).sum(1)
        self.count += z.shape[1]

    def mean(self) -> Tensor:
        if not self.count:
            raise RuntimeError("LatentStats: no latents were added")
        return self.sum / self.count

    def std(self) -> Tensor:
        var = self.sum_sq / self.count - self.mean().pow(2)
        return var.clamp_min(0).sqrt()

    def result(self) -> dict[str, object]:
        std = self.std()
        return {
            "channels": int(std.numel()),
            "elements_per_channel": self.count,
            "mean": self.mean().tolist(),
            "std": std.tolist(),
            "shift": self.mean().tolist(),
            "scale": (1.0 / std.clamp_min(1e-12)).tolist(),
            "global_scale": float(1.0 / std.pow(2).mean().sqrt()),
            "usage": "z_normalised = (z - shift) * scale (per channel) or z * global_scale",
        }
