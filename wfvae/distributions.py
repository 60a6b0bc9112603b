"""Diagonal Gaussian posterior of the WF-VAE latent."""

from __future__ import annotations

import torch
from torch import Tensor

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class DiagonalGaussian:
    """``N(mean, exp(logvar))`` per element; ``mean``, ``logvar``: ``[B, L, t, h, w]``.

    ``logvar`` is clamped to ``[-30, 20]`` as in the reference.
    """

    def __init__(self, mean: Tensor, logvar: Tensor) -> None:
        if mean.shape != logvar.shape:
            raise ValueError(
                f"DiagonalGaussian: mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} "
                "differ in shape"
            )
        self.mean = mean
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    @classmethod
    def from_moments(cls, moments: Tensor) -> DiagonalGaussian:
        """Split ``[B, 2L, ...]`` into mean (first L channels) and logvar (the rest)."""
        if moments.shape[1] % 2:
            raise ValueError(f"moments need an even channel count, got {tuple(moments.shape)}")
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar)

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> Tensor:
        return torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised sample ``mean + std * eps`` (differentiable in mean / logvar)."""
        # torch.randn(shape, generator=...)'s numbers in its (contiguous) layout, written so that
        # torch.compile traces it with dynamic shapes, where randn with a generator fails.
        eps = torch.empty_like(self.mean, memory_format=torch.contiguous_format)
        eps = eps.normal_(generator=generator)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL to ``N(0, I)`` summed over ``C, T, H, W``: ``[B]``."""
        dims = tuple(range(1, self.mean.dim()))
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(dim=dims)

    def kl_mean(self) -> Tensor:
        """KL to ``N(0, I)`` averaged over every element (batch included): a scalar."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).mean()

    def __repr__(self) -> str:
        return f"DiagonalGaussian(shape={tuple(self.mean.shape)}, dtype={self.mean.dtype})"
