"""How STDiff forecasts are scored: per-step range metrics, mean / best of K, trivial baselines,
range-image strips and the test report. No Lightning here: `stdiff.module` calls these.

Shapes: observed ``vo [B, To, C, H, W]``, true future ``vp [B, Tp, C, H, W]``, forecasts
``pred [K, B, Tp, C, H, W]`` (K samples; a baseline is K = 1), all in model space [-1, 1];
metres ``[..., H, W]`` with empty cells <= 0. A batch also holds ``range_m [B, T, 1, H, W]``
(metres, -1 empty), ``mask [B, T, 1, H, W]`` and, for constant velocity, ``poses [B, T, 4, 4]``.

Per predicted step: PSNR and SSIM on the images, L1 range error in metres on every true return
(`range_l1_m`: a cell the forecast leaves empty costs its whole range) and on the cells that
are returns in both (`range_l1_both_m`), Chamfer distance of the re-projected clouds
(`chamfer_m`), LPIPS on the range channel. Samples are reduced to the mean over K and the best
of K (per sequence, the sample whose sequence-mean of that same metric is best); nothing else
ever looks at the ground truth to choose a sample. Baselines, scored by the same `score`:
`copy_last` (the last observed frame repeated) and `constant_velocity` (the last observed scan
moved by the ego-motion extrapolated from the observed poses, re-projected; spherical
projection only). The report
keys (`TestRecords.summarise`) are read by scripts: ``test/<method>/<metric>`` (overall),
``..._per_step``, ``..._nan_count`` and, flat, ``test/<metric>/step<k>/<method>``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from wavecast.data.range_projection import RangeProjection, denormalize_range, normalize_range
from wavecast.metrics.image import psnr, ssim
from wavecast.metrics.range import chamfer_distance, range_l1
from wavecast.metrics.range_baselines import constant_velocity, copy_last
from wavecast.metrics.weights import notice_once

log = logging.getLogger(__name__)

#: Test metrics and whether larger is better (best of K picks by the metric itself).
HIGHER_IS_BETTER = {
    "psnr": True,
    "ssim": True,
    "range_l1_m": False,
    "range_l1_both_m": False,
    "chamfer_m": False,
    "lpips": False,
}
BASELINES = ("copy_last", "constant_velocity")
#: Metrics reported flat per step and method (test/<metric>/step<k>/<method>).
FLAT_METRICS = ("range_l1_m", "range_l1_both_m", "chamfer_m")
#: The methods of the flat keys: the baselines, then the two reductions of the K samples.
METHODS = (*BASELINES, "mean_of_k", "best_of_k")
_LPIPS_MIN_SIZE = 32  # AlexNet's pooling stack needs at least this many pixels per side


# ----------------------------------------------------------------------------- images <-> metres
@dataclass(frozen=True)
class RangeSpace:
    """How the data's range images in [-1, 1] map to metres: normalisation, projection and
    channel names (the defaults are the kitti_range data's)."""

    projection: RangeProjection = field(default_factory=RangeProjection)
    normalization: str = "log2_81"
    channels: tuple[str, ...] = ("range",)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> RangeSpace:
        """From a module's ``data_spec`` (projection kwargs, normalization, channels)."""
        return cls(
            RangeProjection(**dict(spec.get("projection") or {})),
            str(spec.get("normalization", "log2_81")),
            tuple(spec.get("channels", ("range",))),
        )

    @property
    def channel(self) -> int:
        """Index of the range channel (0 when the data names none)."""
        return self.channels.index("range") if "range" in self.channels else 0

    @property
    def max_range(self) -> float:
        return self.projection.max_range or 80.0

    def to_metres(self, images: Tensor, keep_empty: bool) -> Tensor:
        """Range channel of ``images [..., C, H, W]`` in [-1, 1] -> metres ``[..., H, W]``.

        ``keep_empty``: cells the image marks as empty become -1 (the predicted returns, for
        point clouds); otherwise every cell is read as a return at its range (for the L1 error
        on the true returns, so that a missed return costs its range error, not -1 - r).
        """
        lo, hi = self.projection.min_range, self.max_range
        x = images[..., self.channel, :, :].float()
        if not keep_empty:
            # The lowest code of a return: every cell decodes to a range in [lo, hi].
            floor = normalize_range(torch.tensor(lo * (1 + 1e-6)), self.normalization, lo, hi)[0]
            x = torch.maximum(x, floor.to(x.device))
        return denormalize_range(x, self.normalization, lo, hi)

    def to_images(self, metres: Tensor) -> Tensor:
        """Metres ``[...]`` (empty <= 0) -> range images ``[...]`` in [-1, 1]."""
        image, _ = normalize_range(
            metres, self.normalization, self.projection.min_range, self.max_range
        )
        return image


def strips(vo: Tensor, pred: Tensor, vp: Tensor, channel: int) -> Tensor:
    """Range-channel strips observed | predicted | ground truth: ``[B, 1, H, (To+2Tp) W]``,
    from ``vo [B, To, C, H, W]``, ``pred`` and ``vp [B, Tp, C, H, W]``."""
    frames = torch.cat([vo[:, :, channel], pred[:, :, channel].to(vo.dtype), vp[:, :, channel]], 1)
    return torch.cat(list(frames.unbind(1)), dim=-1).unsqueeze(1).float().clamp(-1, 1)


# ------------------------------------------------------------------------------------ baselines
def has_poses(batch: Mapping[str, Any]) -> Tensor:
    """[B] bool: the sequence's poses are all finite."""
    return torch.isfinite(batch["poses"].flatten(1)).all(dim=1)


def baseline_forecasts(
    vo: Tensor,
    batch: Mapping[str, Any],
    n_pred: int,
    space: RangeSpace,
    baselines: tuple[str, ...] = BASELINES,
) -> dict[str, Tensor]:
    """The trivial forecasts named in ``baselines`` as images ``[B, Tp, C, H, W]`` in [-1, 1]
    (model space), so that `score` treats them exactly like samples. constant_velocity needs
    ``poses`` and the spherical projection (else it is skipped, said once)."""
    out: dict[str, Tensor] = {}
    if "copy_last" in baselines:
        out["copy_last"] = copy_last(vo.float(), n_pred)
    if "constant_velocity" not in baselines:
        return out
    proj = space.projection
    if "poses" not in batch:
        notice_once("stdiff-cv-poses", "constant_velocity baseline skipped: no poses in the batch")
    elif proj.method != "spherical":
        notice_once(
            "stdiff-cv-method",
            "constant_velocity baseline skipped: it re-projects with the spherical "
            f"projection, the data uses {proj.method!r}",
        )
    else:
        n_obs = vo.shape[1]
        last_m = batch["range_m"][:, n_obs - 1, 0].float()
        poses = batch["poses"][:, :n_obs].double().nan_to_num(nan=0.0)
        poses[~has_poses(batch)] = torch.eye(4, dtype=poses.dtype)
        moved = constant_velocity(last_m, poses, n_pred, proj).to(vo.device)
        # Other channels (reflectance) as copy-last: only the range is moved.
        frames = copy_last(vo.float(), n_pred)
        frames[:, :, space.channel] = space.to_images(moved).to(frames.dtype)
        out["constant_velocity"] = frames
    return out


# -------------------------------------------------------------------------------------- metrics
def score(
    pred: Tensor,
    vp: Tensor,
    batch: Mapping[str, Any],
    space: RangeSpace,
    chamfer: bool = True,
    lpips: nn.Module | None = None,
) -> dict[str, Tensor]:
    """Per-sample, per-step metrics ``[K, B, Tp]`` of ``pred [K, B, Tp, C, H, W]`` against
    ``vp [B, Tp, C, H, W]`` and the batch's true metres (its last Tp frames)."""
    k, b, tp = pred.shape[:3]
    gt = vp.float().unsqueeze(0).expand_as(pred)
    flat = pred.flatten(0, 1)
    out = {
        "psnr": psnr(flat, gt.flatten(0, 1), layout="btchw").view(k, b, tp),
        "ssim": ssim(flat, gt.flatten(0, 1), layout="btchw").view(k, b, tp),
    }
    gt_m = batch["range_m"][:, -tp:, 0].float().to(pred.device)  # [B, Tp, H, W]
    gt_valid = batch["mask"][:, -tp:, 0].bool().to(pred.device)
    gt_k = gt_m.expand(k, -1, -1, -1, -1)
    out["range_l1_m"] = range_l1(space.to_metres(pred, keep_empty=False), gt_k, gt_valid)
    pred_m = space.to_metres(pred, keep_empty=True)
    out["range_l1_both_m"] = range_l1(pred_m, gt_k, gt_valid & (pred_m > 0))
    if chamfer:
        out["chamfer_m"] = chamfer_per_step(pred_m, gt_m, space.projection)
    if lpips is not None:
        h, w = pred.shape[-2:]
        if min(h, w) < _LPIPS_MIN_SIZE:
            notice_once(
                "stdiff-lpips-size",
                f"LPIPS skipped: frames {h} x {w} are smaller than AlexNet's "
                f"{_LPIPS_MIN_SIZE} x {_LPIPS_MIN_SIZE} minimum",
            )
        else:
            r = space.channel
            x = pred[:, :, :, r : r + 1].flatten(0, 2)
            y = gt[:, :, :, r : r + 1].flatten(0, 2)
            lpips.to(x.device)
            out["lpips"] = lpips(x, y).float().view(k, b, tp)
    return out


def chamfer_per_step(pred_m: Tensor, gt_m: Tensor, projection: RangeProjection) -> Tensor:
    """Chamfer distance (metres, mean of both directions) of the clouds re-projected from
    ``pred_m [K, B, Tp, H, W]`` and ``gt_m [B, Tp, H, W]`` (empty cells <= 0) -> ``[K, B, Tp]``;
    NaN where either cloud is empty."""
    k, b, tp = pred_m.shape[:3]
    out = torch.full((k, b, tp), float("nan"), dtype=torch.float64)
    gt_np = gt_m.detach().cpu().numpy()
    pred_np = pred_m.detach().cpu().numpy()
    for j in range(b):
        for t in range(tp):
            cloud_gt = projection.unproject(gt_np[j, t])
            if len(cloud_gt) == 0:
                continue
            gt_pts = torch.from_numpy(cloud_gt).to(pred_m.device)
            for i in range(k):
                cloud = projection.unproject(pred_np[i, j, t])
                if len(cloud) == 0:
                    continue
                out[i, j, t] = chamfer_distance(
                    torch.from_numpy(cloud).to(pred_m.device), gt_pts
                ).cpu()
    return out.to(pred_m.device)


def reduce_over_samples(values: Tensor, higher_is_better: bool) -> tuple[Tensor, Tensor]:
    """``values [K, B, Tp]`` -> (mean over K ``[B, Tp]``, best of K ``[B, Tp]``).

    Best of K: per sequence the sample whose mean over the steps is best by this metric
    (NaN steps ignored; a sample with no finite step is never chosen unless all are NaN).
    """
    if values.dim() != 3:
        raise ValueError(
            f"reduce_over_samples: values must be [K, B, Tp], got {tuple(values.shape)}"
        )
    values = values.double()
    mean_k = _nanmean(values, dim=0)
    seq_score = _nanmean(values, dim=2)  # [K, B]
    worst = -math.inf if higher_is_better else math.inf
    seq_score = torch.where(torch.isnan(seq_score), torch.full_like(seq_score, worst), seq_score)
    pick = seq_score.argmax(0) if higher_is_better else seq_score.argmin(0)  # [B]
    best_k = values.gather(0, pick.view(1, -1, 1).expand(1, -1, values.shape[2]))[0]
    return mean_k, best_k


def _nanmean(x: Tensor, dim: int) -> Tensor:
    finite = ~torch.isnan(x)
    count = finite.sum(dim)
    total = torch.where(finite, x, torch.zeros_like(x)).sum(dim)
    return total / count  # 0 / 0 = NaN where nothing is finite


# --------------------------------------------------------------------------------------- report
class TestRecords:
    """Per-sequence, per-step values ``[B, Tp]`` of every ``<method>/<metric>``, collected over
    the test batches and summarised at the end of the epoch."""

    __test__ = False  # not a pytest class, whatever its name

    def __init__(self) -> None:
        self.values: dict[str, list[Tensor]] = {}

    def _add(self, name: str, values: Tensor) -> None:
        self.values.setdefault(name, []).append(values.cpu())

    def add_samples(self, per_sample: Mapping[str, Tensor]) -> None:
        """`score` of the K samples (``[K, B, Tp]`` each): mean of K and best of K."""
        for name, values in per_sample.items():
            mean_k, best_k = reduce_over_samples(values, HIGHER_IS_BETTER[name])
            self._add(f"mean_of_k/{name}", mean_k)
            self._add(f"best_of_k/{name}", best_k)

    def add_baseline(
        self, method: str, scores: Mapping[str, Tensor], valid: Tensor | None = None
    ) -> None:
        """`score` of one baseline (``[1, B, Tp]`` each); sequences where ``valid [B]`` is
        False (constant velocity without poses) count as NaN: nothing to score."""
        for name, values in scores.items():
            values = values[0].double()
            if valid is not None:
                values[~valid.to(values.device)] = float("nan")
            self._add(f"{method}/{name}", values)

    def summarise(
        self, gather: Callable[[Tensor], Tensor] = lambda x: x
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """(scalars to log, the full report). ``gather`` maps this rank's ``[N, Tp]`` values to
        all ranks' (DDP); the report adds per-step lists and NaN counts."""
        scalars: dict[str, float] = {}
        report: dict[str, Any] = {}
        for name, chunks in sorted(self.values.items()):
            values = gather(torch.cat(chunks)).double().cpu()  # [N, Tp]
            overall = float(_nanmean(values.flatten(), dim=0))
            scalars[f"test/{name}"] = report[f"test/{name}"] = overall
            report[f"test/{name}_per_step"] = [float(v) for v in _nanmean(values, dim=0)]
            report[f"test/{name}_nan_count"] = int(torch.isnan(values).sum())
        for metric in FLAT_METRICS:
            for method in METHODS:
                for k, v in enumerate(report.get(f"test/{method}/{metric}_per_step", []), 1):
                    scalars[f"test/{metric}/step{k}/{method}"] = v
                    report[f"test/{metric}/step{k}/{method}"] = v
        if self.values:
            any_chunks = next(iter(self.values.values()))
            report["test/num_sequences"] = int(sum(c.shape[0] for c in any_chunks))
        return scalars, report


# ----------------------------------------------------------------------------------- continuity
class TrajectoryBuffer:
    """Pipeline ``step_callback`` that keeps ``x_t`` and ``eps_hat`` of every (frame, step) for
    the first ``n_sequences`` sequences of every sample (on the CPU), to stack the frames of one
    denoising step afterwards: STDiff denoises its frames one after the other, the continuity
    recorder compares adjacent frames at the same step."""

    def __init__(self, n_sequences: int) -> None:
        self.n_sequences = n_sequences
        self.x: dict[tuple[int, int], Tensor] = {}
        self.eps: dict[tuple[int, int], Tensor] = {}
        self.timesteps: dict[int, int] = {}
        self.num_sequences = 0

    def __call__(self, frame: int, step: int, timestep: Tensor, x_t: Tensor, eps: Tensor) -> None:
        n = min(self.n_sequences, x_t.shape[1])
        self.num_sequences = x_t.shape[0] * n
        self.x[frame, step] = x_t[:, :n].flatten(0, 1).detach().float().cpu()
        self.eps[frame, step] = eps[:, :n].flatten(0, 1).detach().float().cpu()
        self.timesteps[step] = int(torch.as_tensor(timestep).flatten()[0])

    @property
    def num_frames(self) -> int:
        return len({f for f, _ in self.x})

    def stacked(self) -> Iterator[tuple[int, int, Tensor, Tensor]]:
        """Yield (step, timestep, x_t [B', F, C, H, W], eps [B', F, C, H, W]) per step."""
        frames = sorted({f for f, _ in self.x})
        for step in sorted(self.timesteps):
            x = torch.stack([self.x[f, step] for f in frames], dim=1)
            e = torch.stack([self.eps[f, step] for f in frames], dim=1)
            yield step, self.timesteps[step], x, e


def save_continuity(buffer: TrajectoryBuffer, alphas_cumprod: Tensor, out_dir: Path) -> dict:
    """Adjacent-frame continuity of the buffered trajectories across the denoising steps
    (`temporal.continuity.ContinuityRecorder`), written to ``out_dir``; its report entries
    (empty when fewer than 2 frames were predicted)."""
    from temporal.continuity import ContinuityRecorder

    if buffer.num_frames < 2:
        notice_once(
            "stdiff-continuity-frames",
            "continuity analysis skipped: it needs at least 2 predicted frames",
        )
        return {}
    recorder = ContinuityRecorder(alphas_cumprod)
    for step, timestep, x_t, eps in buffer.stacked():
        recorder(step, timestep, x_t, eps)
    paths = recorder.save(out_dir)
    log.info("continuity analysis written to %s", out_dir)
    return {
        "continuity/files": {k: str(v) for k, v in paths.items()},
        "continuity/summary": recorder.summary(),
        "continuity/sequences": buffer.num_sequences,
    }
