"""Dataset-level metrics with torchmetrics state: accumulated over every batch of a validation /
test epoch (on every DDP rank, then reduced), computed once, reset for the next epoch.

A mean of per-batch means is wrong when batches differ in size (the last one) and under DDP
(Lightning's ``sync_dist`` averages the ranks' means); these accumulate sums and counts instead.

* `FramePSNR`, `FrameSSIM`: torchmetrics' PSNR / SSIM metrics on frames mapped to [0, 1] (the
  conventions of `wavecast.metrics.image`: per frame, then the mean over every frame seen; PSNR
  of identical frames capped at `PSNR_MAX_DB`; SSIM on the valid region).
* `MeanOf`: the mean of per-item values over everything seen (sum and count states,
  ``dist_reduce_fx="sum"``); `TemporalFlicker` (per frame pair), `MaskedL1` (warping / temporal
  error: |a - b| over the valid pixels of all batches), `RangeL1` (metres over true returns).

Log a metric object with ``self.log(name, metric)`` (Lightning computes and resets it at the
epoch end) after ``metric.update(...)``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.image.psnr import _psnr_compute
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchmetrics.utilities import dim_zero_cat

from wavecast.metrics.flicker import temporal_flicker
from wavecast.metrics.image import PSNR_MAX_DB, ssim, to_unit_frames


class FramePSNR(PeakSignalNoiseRatio):
    """Mean over every frame seen of its PSNR (dB, data range 1 after mapping `value_range` to
    [0, 1] and clamping). Inputs as `wavecast.metrics.image.psnr`: [B, C, T, H, W] ("bcthw"),
    [B, T, C, H, W] ("btchw") or images [B, C, H, W]. Per-frame errors are gathered across DDP
    ranks (torchmetrics' "cat" states)."""

    def __init__(
        self,
        layout: str = "bcthw",
        value_range: tuple[float, float] = (-1.0, 1.0),
        **kwargs,
    ) -> None:
        super().__init__(data_range=1.0, dim=(1, 2, 3), reduction="elementwise_mean", **kwargs)
        self.layout, self.value_range = layout, tuple(value_range)

    def update(self, preds: Tensor, target: Tensor) -> None:
        fx, fy, _ = to_unit_frames(preds, target, self.layout, self.value_range)
        super().update(fx.float(), fy.float())

    def compute(self) -> Tensor:
        sse = dim_zero_cat(self.sum_squared_error)
        total = dim_zero_cat(self.total).to(sse.dtype)
        # identical frames: PSNR_MAX_DB instead of inf (as wavecast.metrics.image.psnr)
        sse = torch.maximum(sse, total * 10.0 ** (-PSNR_MAX_DB / 10.0))
        return _psnr_compute(sse, total, self.data_range, base=10.0, reduction="elementwise_mean")


class FrameSSIM(StructuralSimilarityIndexMeasure):
    """Mean over every frame seen of its SSIM, in torchmetrics' SSIM states (sum of the values and
    their count, summed across DDP ranks).

    The per-frame value is `wavecast.metrics.image.ssim` (Gaussian 11 x 11, sigma 1.5, data range
    1, float64 moments) on the *valid* region, as the WF-VAE evaluation (OpenCV) scores it;
    torchmetrics' own update averages over the reflect-padded border too (about 3e-4 higher on
    noisy frames), which would break comparisons with published and earlier numbers.
    """

    def __init__(
        self,
        layout: str = "bcthw",
        value_range: tuple[float, float] = (-1.0, 1.0),
        **kwargs,
    ) -> None:
        super().__init__(data_range=1.0, reduction="elementwise_mean", **kwargs)
        self.layout, self.value_range = layout, tuple(value_range)

    def update(self, preds: Tensor, target: Tensor) -> None:
        values = ssim(preds.detach(), target.detach(), self.layout, self.value_range).flatten()
        self.similarity += values.sum().to(self.similarity.dtype)
        self.total += values.numel()


class MeanOf(Metric):
    """Mean of values over everything seen: ``update(values)`` adds ``values.sum()`` and their
    count (or ``update(values, weights)``: a weighted sum and the sum of the weights)."""

    full_state_update = False
    higher_is_better = None

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state(
            "total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(self, values: Tensor, weights: Tensor | None = None) -> None:
        values = values.detach().to(torch.float64)
        if weights is None:
            self.total += values.sum()
            self.count += values.numel()
        else:
            weights = weights.detach().to(torch.float64).expand_as(values)
            self.total += (values * weights).sum()
            self.count += weights.sum()

    def compute(self) -> Tensor:
        return (self.total / self.count).float()  # 0 / 0 = NaN: nothing was seen


class TemporalFlicker(MeanOf):
    """`wavecast.metrics.flicker.temporal_flicker` averaged over every consecutive frame pair."""

    def __init__(
        self, layout: str = "bcthw", value_range: tuple[float, float] = (-1.0, 1.0), **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.layout, self.value_range = layout, tuple(value_range)

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update(temporal_flicker(preds, target, self.layout, self.value_range))


class MaskedL1(MeanOf):
    """Mean |a - b| (channel mean) over the pixels where ``mask [B, 1, H, W] > 0``, pooled over
    every batch (e.g. the warping error |O_t - warp(O_{t-1})| on the pixels the flow defines)."""

    def update(self, a: Tensor, b: Tensor, mask: Tensor | None = None) -> None:  # type: ignore[override]
        err = (a.detach().float() - b.detach().float()).abs().mean(dim=1, keepdim=True)
        if mask is None:
            super().update(err)
        else:
            super().update(err, (mask > 0).to(err.dtype))


class RangeL1(MeanOf):
    """Mean |pred - gt| in metres over the valid pixels (default ``gt > 0``) of every batch."""

    def update(self, pred_m: Tensor, gt_m: Tensor, valid: Tensor | None = None) -> None:  # type: ignore[override]
        if pred_m.shape != gt_m.shape:
            raise ValueError(
                f"RangeL1: shapes differ: {tuple(pred_m.shape)} vs {tuple(gt_m.shape)}"
            )
        mask = gt_m > 0 if valid is None else valid.to(torch.bool).expand_as(gt_m)
        super().update((pred_m.float() - gt_m.float()).abs(), mask.to(torch.float32))
