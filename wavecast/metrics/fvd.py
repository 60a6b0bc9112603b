"""Fréchet Video Distance with dataset-level statistics.

The reference evaluation computes FVD per batch and averages the batches; a Fréchet distance of
small batches is biased and not the published metric. :class:`FVD` instead accumulates feature
sums over the whole dataset (``update`` per batch) and computes one distance at the end.

Features: the StyleGAN-V TorchScript I3D (``i3d_torchscript.pt``; 400-d logits before softmax),
loaded from a local file only. Preprocessing follows the reference: videos in [0, 1] are resized
(bilinear) so the shorter side is 224, centre-cropped to 224 x 224, mapped to [-1, 1], and fed with
``rescale=False, resize=False, return_features=True``. Single-channel videos are repeated to RGB.
I3D needs about 10 frames or more; shorter clips are refused.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wavecast.metrics.weights import WeightsError, resolve_i3d_weights

I3D_MIN_FRAMES = 10
I3D_SIZE = 224


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})`` of two Gaussians (numpy / torch).

    The matrix square root is ``scipy.linalg.sqrtm``; when it is not finite (singular product),
    ``eps * I`` is added to both covariances, and a negligible imaginary part is dropped.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(_np64(mu1)), np.atleast_1d(_np64(mu2))
    s1, s2 = np.atleast_2d(_np64(sigma1)), np.atleast_2d(_np64(sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"frechet_distance: shapes do not fit: mu {mu1.shape} / {mu2.shape}, "
            f"sigma {s1.shape} / {s2.shape}"
        )
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"frechet_distance: sqrtm has a large imaginary part "
                f"({np.abs(covmean.imag).max():.3g}); the covariances are not valid"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def _np64(a) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


class FeatureStats:
    """Running mean / covariance of feature vectors ``[N, D]`` in float64 (sums, not lists)."""

    def __init__(self) -> None:
        self.n = 0
        self.sum: Tensor | None = None
        self.outer: Tensor | None = None

    def update(self, feats: Tensor) -> None:
        if feats.dim() != 2:
            raise ValueError(f"features must be [N, D], got {tuple(feats.shape)}")
        f = feats.detach().to("cpu", torch.float64)
        if self.sum is None:
            self.sum = torch.zeros(f.shape[1], dtype=torch.float64)
            self.outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
        elif f.shape[1] != self.sum.shape[0]:
            raise ValueError(f"feature width changed: {f.shape[1]} vs {self.sum.shape[0]}")
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased covariance (``np.cov`` convention, ddof = 1)."""
        if self.n < 2 or self.sum is None or self.outer is None:
            raise ValueError(f"need at least 2 feature vectors for a covariance, have {self.n}")
        mu = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu.numpy(), cov.numpy()


def preprocess_i3d(videos: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """``[B, C, T, H, W]`` in ``value_range`` -> ``[B, 3, T, 224, 224]`` in [-1, 1] for I3D."""
    if videos.dim() != 5 or videos.shape[1] not in (1, 3):
        raise ValueError(f"FVD expects videos [B, 3 or 1, T, H, W], got {tuple(videos.shape)}")
    b, c, t, h, w = videos.shape
    if t < I3D_MIN_FRAMES:
        raise ValueError(f"FVD (I3D) needs at least {I3D_MIN_FRAMES} frames, got T={t}")
    lo, hi = value_range
    x = ((videos.float() - lo) / (hi - lo)).clamp(0, 1)
    if c == 1:
        x = x.expand(-1, 3, -1, -1, -1)
    scale = I3D_SIZE / min(h, w)
    size = (I3D_SIZE, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), I3D_SIZE)
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w)
    frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False)
    top, left = (size[0] - I3D_SIZE) // 2, (size[1] - I3D_SIZE) // 2
    frames = frames[:, :, top : top + I3D_SIZE, left : left + I3D_SIZE]
    x = frames.reshape(b, t, 3, I3D_SIZE, I3D_SIZE).permute(0, 2, 1, 3, 4)
    return (x * 2 - 1).contiguous()


class FVD:
    """Dataset-level FVD: ``update(real, fake)`` per batch, ``compute()`` once.

    Args:
        extractor: maps preprocessed videos to features ``[B, D]`` (the I3D, or any callable).
        preprocess: videos -> extractor input (default :func:`preprocess_i3d`; identity for a
            custom extractor that wants raw videos).
        batch_size: videos per extractor call.
    """

    def __init__(
        self,
        extractor: Callable[[Tensor], Tensor],
        preprocess: Callable[[Tensor], Tensor] | None = preprocess_i3d,
        batch_size: int = 8,
        device: torch.device | str | None = None,
    ) -> None:
        self.extractor = extractor
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else None
        self.real = FeatureStats()
        self.fake = FeatureStats()

    @classmethod
    def from_local(
        cls, path: str | os.PathLike | None = None, device: torch.device | str | None = None, **kw
    ) -> FVD:
        """FVD with the TorchScript I3D at ``path`` (or found via ``$WAVECAST_WEIGHTS_DIR``).

        Raises :class:`WeightsError` with the reason when no file is available.
        """
        resolved = resolve_i3d_weights(path)
        if resolved is None:
            raise WeightsError(
                "FVD needs the I3D TorchScript file i3d_torchscript.pt locally (give its path or "
                "set WAVECAST_WEIGHTS_DIR); it is never downloaded"
            )
        try:
            model = torch.jit.load(str(resolved), map_location=device or "cpu").eval()
        except Exception as e:  # noqa: BLE001 - report any load failure with the file name
            raise WeightsError(
                f"FVD I3D weights {resolved}: not a loadable TorchScript file ({e})"
            ) from e

        def i3d(x: Tensor) -> Tensor:
            return model(x, rescale=False, resize=False, return_features=True)

        return cls(i3d, device=device, **kw)

    @classmethod
    def from_local_or_none(cls, path: str | os.PathLike | None = None, **kw) -> FVD | None:
        """Like :meth:`from_local` but None (with a once-only notice) when no file is configured.

        An explicit path that does not exist still raises.
        """
        if path is None and resolve_i3d_weights(None) is None:
            return None
        return cls.from_local(path, **kw)

    @torch.no_grad()
    def features(self, videos: Tensor) -> Tensor:
        out = []
        for i in range(0, videos.shape[0], self.batch_size):
            v = videos[i : i + self.batch_size]
            if self.device is not None:
                v = v.to(self.device)
            if self.preprocess is not None:
                v = self.preprocess(v)
            f = self.extractor(v)
            out.append(f.reshape(f.shape[0], -1).float())
        return torch.cat(out)

    def update(self, real: Tensor, fake: Tensor) -> None:
        """Add a batch of real and generated videos ``[B, C, T, H, W]`` (counts may differ)."""
        self.real.update(self.features(real))
        self.fake.update(self.features(fake))

    def compute(self) -> float:
        mu_r, s_r = self.real.mean_cov()
        mu_f, s_f = self.fake.mean_cov()
        return frechet_distance(mu_r, s_r, mu_f, s_f)

    def reset(self) -> None:
        self.real, self.fake = FeatureStats(), FeatureStats()
