"""LightningModule that trains STDiff on LiDAR range-image sequences and evaluates its samples.

Batches come from `wavecast.data.datamodules.RangeSequenceDataModule`::

    frames   [B, T, C, H, W] in [-1, 1]   T = n_obs + n_pred (first n_obs observed)
    mask     [B, T, 1, H, W] bool         cells with a LiDAR return
    range_m  [B, T, 1, H, W] metres       -1 where empty

Training (automatic optimisation): `STDiff.training_loss` on the future frames, with a random
sorted subset of `rand_Tp` future frames per step when `rand_predict` (times ``time_step * index``,
fractional when `time_step` is). The noise schedule is `noise_scheduler` (a diffusers scheduler
built from config); it is written into the network (`net.scheduler_config`, saved with the
weights) so that sampling always uses the schedule the model was trained with. Optimizer and
LR schedule come from config (AdamW, cosine with warmup: the run length is filled in from the
trainer); gradient clipping is the trainer's `gradient_clip_val`, EMA the
`EMAWeightAveraging` callback (callbacks/ema.yaml), bf16 `trainer.precision=bf16-mixed`.

Non-finite steps: a NaN / inf loss skips the step (training_step returns None; under DDP a
zero loss keeps the ranks in step, its gradients are dropped), a non-finite gradient norm drops
the gradients before the optimizer sees them. Both are counted (`train/nonfinite_skips`);
more than `max_nonfinite_skips` in a row raise `NonFiniteLossError`.

Validation: the diffusion loss with fixed noise (comparable across epochs) on every batch;
every `val_sample_every_n_epochs` epochs the first `val_sample_batches` batches are sampled
with the pipeline (`val_num_inference_steps`), scored (`val/sample_*`) and shown as range-image
strips observed | predicted | ground truth through `media_from_batch`.

Test (`eval.py`): `num_samples` (K) futures per sequence with `num_inference_steps` of
`scheduler_type` (ddpm | ddim | dpm | null = the stored class), scored beside the `baselines`
(copy_last, constant_velocity) by `stdiff.evaluation`: per-step range metrics, mean and best of
K, reported as `test/<method>/<metric>` and flat `test/<metric>/step<k>/<method>`; per-step
arrays go into `eval_report()` (metrics.json).
`analyses=[continuity]` records the adjacent-frame continuity of the first test batch over the
denoising steps (`temporal.continuity.ContinuityRecorder`) and writes its PNG / NPZ / JSON into
`<run dir>/continuity/`.

Checkpoints record `wavecast.model = "stdiff"` and the noise schedule; loading another model's
checkpoint, or one trained with another schedule than `model.noise_scheduler`, is refused with
a `ConfigError` before any weight is copied.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn

from stdiff import evaluation
from stdiff.evaluation import (
    BASELINES,
    RangeSpace,
    TestRecords,
    TrajectoryBuffer,
    baseline_forecasts,
    has_poses,
    save_continuity,
)
from stdiff.model import SCHEDULER_TYPES, STDiff, normalize_scheduler_config, random_future_subset
from stdiff.pipeline import STDiffPipeline
from wavecast.checkpoints import (
    check_config,
    check_model_kind,
    check_state_dict,
    checkpoint_source,
)
from wavecast.config import ConfigError
from wavecast.guards import NonFiniteGuard, all_finite
from wavecast.lr_schedule import build_lr_scheduler, run_length
from wavecast.metrics.image import psnr
from wavecast.metrics.lpips import LPIPS
from wavecast.metrics.range import range_l1
from wavecast.metrics.weights import notice_once

log = logging.getLogger(__name__)

ANALYSES = ("continuity",)


class STDiffModule(pl.LightningModule):
    """Trains and evaluates an `STDiff` network.

    Args:
        net: the STDiff network (built by Hydra).
        noise_scheduler: diffusers scheduler of the training noise schedule (DDPMScheduler).
        optimizer: partial optimizer (params=...).
        lr_scheduler: optional partial LR scheduler (optimizer=...), stepped every optimizer
            step; `num_training_steps` is filled in from the trainer when the partial lacks it
            (e.g. `diffusers.optimization.get_cosine_schedule_with_warmup`).
        loss: "l1" (published) or "l2" between predicted and true noise.
        rand_predict: train on a random sorted subset of `rand_Tp` future frames per step.
        rand_Tp: size of that subset (None = all `n_pred`).
        time_step: model time between consecutive frames (observed at ``time_step * i``).
        max_nonfinite_skips: consecutive non-finite steps tolerated (None = never stop).
        gradient_checkpointing: recompute UNet blocks in backward.
        channels_last: channels-last weights (:meth:`STDiff.to_channels_last`), faster on CPU.
        val_sample_every_n_epochs: sample validation sequences every N epochs (None/0 = never).
        val_sample_batches, val_num_inference_steps, val_num_samples: how much to sample then
            (with `scheduler_type`).
        num_samples: K futures per test sequence.
        num_inference_steps: denoising steps per frame in test.
        scheduler_type: sampler in validation and test ("ddpm", "ddim", "dpm", or None = the
            stored class); always with the stored noise schedule.
        chunk_horizon: predict at most this many frames per SDE path (long roll-outs).
        chamfer: compute the Chamfer distance in test (costly at 64 x 2048 on CPU).
        metric_lpips_weights: local AlexNet LPIPS weights (folder or {backbone, lin}); None
            looks in `$WAVECAST_WEIGHTS_DIR`, else LPIPS is skipped (said once).
        continuity_sequences: sequences of the first test batch the continuity analysis keeps.
        continuity_dir: where the continuity files go (None = `<trainer.default_root_dir>/continuity`).
        sample_seed: seed of the validation / test sampling noise (per batch: seed + batch index).
        baselines: trivial forecasts scored beside the samples in test (subset of
            ``("copy_last", "constant_velocity")``; the latter needs ``poses`` in the batch).
    """

    def __init__(
        self,
        net: STDiff,
        noise_scheduler: Any,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[..., Any] | None = None,
        loss: Literal["l1", "l2"] = "l1",
        rand_predict: bool = True,
        rand_Tp: int | None = None,
        time_step: float = 1.0,
        max_nonfinite_skips: int | None = 20,
        gradient_checkpointing: bool = False,
        channels_last: bool = False,
        val_sample_every_n_epochs: int | None = 1,
        val_sample_batches: int = 1,
        val_num_inference_steps: int = 50,
        val_num_samples: int = 1,
        num_samples: int = 3,
        num_inference_steps: int = 50,
        scheduler_type: str | None = None,
        chunk_horizon: int | None = None,
        chamfer: bool = True,
        metric_lpips_weights: Any = None,
        continuity_sequences: int = 2,
        continuity_dir: str | None = None,
        sample_seed: int = 0,
        baselines: list[str] | tuple[str, ...] = BASELINES,
    ) -> None:
        super().__init__()
        if not isinstance(net, STDiff):
            raise ConfigError(
                f"model.net must build a stdiff.model.STDiff, got {type(net).__name__}"
            )
        if loss not in ("l1", "l2"):
            raise ConfigError(f"model.loss must be 'l1' or 'l2', got {loss!r}")
        if scheduler_type is not None and scheduler_type not in SCHEDULER_TYPES:
            raise ConfigError(
                f"model.scheduler_type must be one of {sorted(SCHEDULER_TYPES)} or null, got "
                f"{scheduler_type!r}"
            )
        for key, value in (
            ("num_samples", num_samples),
            ("num_inference_steps", num_inference_steps),
            ("val_num_inference_steps", val_num_inference_steps),
            ("val_num_samples", val_num_samples),
            ("val_sample_batches", val_sample_batches),
            ("continuity_sequences", continuity_sequences),
        ):
            if int(value) < 1:
                raise ConfigError(f"model.{key} must be >= 1, got {value}")
        if rand_Tp is not None and rand_Tp < 1:
            raise ConfigError(f"model.rand_Tp must be >= 1 or null, got {rand_Tp}")
        if not time_step > 0:
            raise ConfigError(f"model.time_step must be > 0, got {time_step}")
        unknown = [b for b in baselines if b not in BASELINES]
        if unknown:
            raise ConfigError(f"model.baselines: unknown {unknown}; known: {list(BASELINES)}")
        self.baselines = tuple(str(b) for b in baselines)
        self.net = net
        self.noise_scheduler = noise_scheduler
        # The training schedule travels with the weights (net extra state).
        self.net.scheduler_config = scheduler_config_of(noise_scheduler)
        self.net.check_scheduler(noise_scheduler)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.loss_type = loss
        self.rand_predict = bool(rand_predict)
        self.rand_Tp = rand_Tp
        self.time_step = float(time_step)
        self.guard = NonFiniteGuard(max_nonfinite_skips)
        if gradient_checkpointing:
            self.net.unet.set_gradient_checkpointing(True)
        if channels_last:
            self.net.to_channels_last()
        self.val_sample_every_n_epochs = val_sample_every_n_epochs
        self.val_sample_batches = int(val_sample_batches)
        self.val_num_inference_steps = int(val_num_inference_steps)
        self.val_num_samples = int(val_num_samples)
        self.num_samples = int(num_samples)
        self.num_inference_steps = int(num_inference_steps)
        self.scheduler_type = scheduler_type
        self.chunk_horizon = chunk_horizon
        self.chamfer = bool(chamfer)
        self.lpips_metric = LPIPS.from_config(metric_lpips_weights)
        self.continuity_sequences = int(continuity_sequences)
        self.continuity_dir = continuity_dir
        self.sample_seed = int(sample_seed)
        self._analyses: list[str] = []
        # Set from the data module (check_data / setup).
        self.n_obs: int | None = None
        self.n_pred: int | None = None
        self.data_spec: dict[str, Any] | None = None
        self._range_space: RangeSpace | None = None
        self._skip_step = False
        self._media_cache: dict[str, Tensor] | None = None
        self._test_records = TestRecords()
        self._report: dict[str, Any] = {}
        self._sample_seconds = 0.0

    # ------------------------------------------------------------------ analyses
    @property
    def analyses(self) -> list[str]:
        return list(self._analyses)

    @analyses.setter
    def analyses(self, names: list[str]) -> None:
        names = [str(n) for n in names]
        unknown = [n for n in names if n not in ANALYSES]
        if unknown:
            raise ConfigError(f"analyses: unknown {unknown} for STDiff; known: {list(ANALYSES)}")
        self._analyses = names

    # ------------------------------------------------------------------ set-up
    def check_data(self, datamodule: pl.LightningDataModule) -> None:
        """Start-up check that the data module and the network agree (raises ConfigError)."""
        n_obs, n_pred = getattr(datamodule, "n_obs", None), getattr(datamodule, "n_pred", None)
        if n_obs is None or n_pred is None:
            raise ConfigError(
                f"STDiff trains on observed -> predicted sequences; data module "
                f"{type(datamodule).__name__} has no n_obs / n_pred (use data=kitti_range or "
                "data=kitti_odometry_range)"
            )
        net = self.net
        channels = getattr(datamodule, "channels", None)
        if channels is not None and int(channels) != net.channels:
            c = int(channels)
            raise ConfigError(
                f"data has {c} channel(s) {list(getattr(datamodule, 'channels_names', []))} but "
                f"the network takes {net.channels}: set model.net.tde.in_channels={c}, "
                f"model.net.unet.out_channels={c} and model.net.unet.in_channels="
                f"{2 * c if net.autoregressive else c}"
            )
        if net.tde.motion_encoder.learn_diff_image and n_obs < 2:
            raise ConfigError(
                f"data.n_obs={n_obs}: the motion encoder learns from difference images "
                "(model.net.tde.learn_diff_image=true), which needs at least 2 observed frames"
            )
        if n_pred < 1:
            raise ConfigError(f"data.n_pred={n_pred}: STDiff needs at least 1 predicted frame")
        if self.rand_Tp is not None and self.rand_Tp > n_pred:
            raise ConfigError(
                f"model.rand_Tp={self.rand_Tp} exceeds data.n_pred={n_pred} (the random future "
                "subset is drawn from the predicted frames)"
            )
        size = getattr(datamodule, "frame_size", None)
        if size is not None:
            h, w = (int(s) for s in size)
            levels = len(net.unet.down_blocks)
            unet_div = 2 ** (levels - 1)
            enc_div = 2**net.tde.motion_encoder.n_downs
            div = max(unet_div, enc_div)
            if h % div or w % div:
                raise ConfigError(
                    f"data frame size {h} x {w} must be divisible by {div} (the UNet halves it "
                    f"{levels - 1} times, the motion encoder {net.tde.motion_encoder.n_downs} "
                    "times): change data.projection.height / width"
                )
            sample = net.unet.sample_size
            if sample is not None and not net.super_res_training and tuple(sample) != (h, w):
                raise ConfigError(
                    f"model.net.unet.sample_size={list(sample)} differs from the data frame size "
                    f"[{h}, {w}]: set model.net.unet.sample_size=[{h},{w}]"
                )
        self._configure_data(datamodule)

    def _configure_data(self, dm: Any) -> None:
        self.n_obs, self.n_pred = int(dm.n_obs), int(dm.n_pred)
        names = list(getattr(dm, "channels_names", ("range",)))
        projection = dict(getattr(dm, "projection", {}) or {})
        self.data_spec = {
            "n_obs": self.n_obs,
            "n_pred": self.n_pred,
            "channels": names,
            "normalization": str(getattr(dm, "normalization", "log2_81")),
            "projection": projection,
        }
        self._range_space = RangeSpace.from_spec(self.data_spec)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and self.data_spec is None:
            self.check_data(dm)

    def compile_networks(self) -> None:
        # The UNet only: torchsde's solver loop does not compile usefully. In place, so the
        # state-dict keys stay "net.unet.*".
        self.net.unet.compile()

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt = self.optimizer_factory(params=params)
        if self.lr_scheduler_factory is None:
            return opt
        sched = build_lr_scheduler(self.lr_scheduler_factory, opt, run_length(self))
        return [opt], [{"scheduler": sched, "interval": "step"}]

    # ------------------------------------------------------------------ batches
    def _split(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """``frames [B, T, C, H, W]`` -> observed ``[B, To, ...]``, future ``[B, Tp, ...]``."""
        if self.n_obs is None:
            raise RuntimeError("STDiffModule: check_data(datamodule) must run before the steps")
        if not isinstance(batch, Mapping) or "frames" not in batch:
            keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise ValueError(f"STDiffModule: batch needs 'frames' [B, T, C, H, W], got {keys}")
        x = batch["frames"]
        t = self.n_obs + self.n_pred
        if x.dim() != 5 or x.shape[1] != t or x.shape[2] != self.net.channels:
            raise ValueError(
                f"STDiffModule: batch['frames'] must be [B, {t}, {self.net.channels}, H, W] "
                f"(n_obs {self.n_obs} + n_pred {self.n_pred}), got {tuple(x.shape)}"
            )
        return x[:, : self.n_obs], x[:, self.n_obs :]

    def observed_times(self, device: torch.device | None = None) -> Tensor:
        return self.time_step * torch.arange(self.n_obs, dtype=torch.float32, device=device)

    def future_times(self, device: torch.device | None = None) -> Tensor:
        idx = torch.arange(self.n_obs, self.n_obs + self.n_pred, dtype=torch.float32)
        return (self.time_step * idx).to(device)

    def _generator(self, batch_idx: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(
            self.sample_seed + 1_000_003 * self.global_rank + batch_idx
        )

    # ------------------------------------------------------------------ training
    def _reduce_min(self, x: Tensor) -> Tensor:
        return self.trainer.strategy.reduce(x, reduce_op="min") if self._trainer else x

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor | None:
        vo, vp = self._split(batch)
        idx_o = self.observed_times(vo.device)
        if self.rand_predict:
            index, idx_p = random_future_subset(
                self.n_pred,
                self.rand_Tp or self.n_pred,
                start=self.time_step * self.n_obs,
                time_step=self.time_step,
            )
            vp = vp[:, index.to(vp.device)]
        else:
            idx_p = self.future_times()
        loss, _ = self.net.training_loss(
            vo, vp, idx_o, idx_p.to(vo.device), self.noise_scheduler, loss=self.loss_type
        )
        b = vo.shape[0]
        self._skip_step = False
        if not all_finite(loss, self._reduce_min):
            self.guard.check(loss, "diffusion loss (on some rank)", self._reduce_min)  # may raise
            self._skip_step = True
            self.log("train/nonfinite_skips", float(self.guard.skipped), batch_size=b)
            if self._trainer is not None and self.trainer.world_size > 1:
                # DDP expects a backward from every rank: zero gradients, dropped before the step.
                return 0.0 * sum(p.sum() for p in self.net.parameters() if p.requires_grad)
            return None
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=b)
        self.log("train/nonfinite_skips", float(self.guard.skipped), batch_size=b)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        params = [p for p in self.net.parameters() if p.grad is not None]
        if self._skip_step:
            self._drop_gradients(params)
            self._skip_step = False
            return
        if not params:
            return
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad.detach().float()) for p in params])
        )
        scaler = getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer else None
        if scaler is not None:
            # fp16 loss scaling: overflowing (scaled) gradients are the scaler's business.
            return
        # One guard check per optimizer step ("consecutive" counts steps).
        if not self.guard.check(norm, "gradient norm", self._reduce_min):
            self._drop_gradients(params)
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    @staticmethod
    def _drop_gradients(params: list[nn.Parameter]) -> None:
        # Parameters without a gradient are left alone by the optimizer: the step is skipped.
        for p in params:
            p.grad = None

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        vo: Tensor,
        num_samples: int,
        num_inference_steps: int,
        generator: torch.Generator | None = None,
        scheduler_type: str | None = None,
        step_callback: Callable[..., None] | None = None,
    ) -> Tensor:
        """K futures of ``vo [B, To, C, H, W]`` at the data's future times -> ``[K, B, Tp, C, H, W]``
        clamped to [-1, 1], with the schedule stored in the network."""
        pipe = STDiffPipeline(self.net)
        out = pipe(
            vo,
            self.observed_times(vo.device),
            self.future_times(vo.device),
            num_inference_steps=num_inference_steps,
            num_samples=num_samples,
            generator=generator,
            scheduler_type=scheduler_type,
            step_callback=step_callback,
            chunk_horizon=self.chunk_horizon,
        )
        return out["frames"].float().clamp(-1, 1)

    def _sample_this_epoch(self) -> bool:
        n = self.val_sample_every_n_epochs
        return bool(n) and self.current_epoch % int(n) == 0

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Tensor]:
        vo, vp = self._split(batch)
        g = self._generator(batch_idx)  # the same noise every epoch: a comparable curve
        loss, _ = self.net.training_loss(
            vo,
            vp,
            self.observed_times(vo.device),
            self.future_times(vo.device),
            self.noise_scheduler,
            loss=self.loss_type,
            generator=g,
        )
        b = vo.shape[0]
        metrics = {"loss": loss.detach()}
        if self._sample_this_epoch() and batch_idx < self.val_sample_batches:
            pred = self.sample(
                vo, self.val_num_samples, self.val_num_inference_steps, g, self.scheduler_type
            )
            first = pred[0]  # [B, Tp, C, H, W]
            metrics["sample_psnr"] = psnr(first, vp.float(), layout="btchw").mean()
            if "range_m" in batch and self.data_spec is not None:
                gt_m = batch["range_m"][:, self.n_obs :, 0].float()
                metrics["sample_range_l1_m"] = range_l1(
                    self.to_metres(first, keep_empty=False), gt_m, gt_m > 0
                ).nanmean()
            if batch_idx == 0:
                self._media_cache = {"val/range_obs_pred_gt": self.strips(vo, first, vp)}
        self.log_dict(
            {f"val/{k}": v for k, v in metrics.items()},
            prog_bar=True,
            sync_dist=True,
            batch_size=b,
        )
        return metrics

    def strips(self, vo: Tensor, pred: Tensor, vp: Tensor) -> Tensor:
        """Range-channel strips observed | predicted | ground truth: ``[B, 1, H, (To+2Tp) W]``."""
        return evaluation.strips(vo, pred, vp, self.range_space.channel)

    def media_from_batch(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Range-image strips observed | predicted | ground truth, ``[B, 1, H, W']`` in [-1, 1]
        (the sample validation just drew for this batch, else a new one)."""
        if self._media_cache is not None:
            media, self._media_cache = self._media_cache, None
            return media
        vo, vp = self._split(batch)
        g = self._generator(0)
        pred = self.sample(vo, 1, self.val_num_inference_steps, g, self.scheduler_type)[0]
        return {"val/range_obs_pred_gt": self.strips(vo, pred, vp)}

    # ------------------------------------------------------------------ metres
    @property
    def range_space(self) -> RangeSpace:
        """How this data's range images map to metres (kitti_range defaults before set-up)."""
        return self._range_space or RangeSpace()

    def to_metres(self, images: Tensor, keep_empty: bool) -> Tensor:
        """Range channel of ``images [..., C, H, W]`` in [-1, 1] -> metres ``[..., H, W]``
        (see `RangeSpace.to_metres`)."""
        return self.range_space.to_metres(images, keep_empty)

    # ------------------------------------------------------------------ test
    def on_test_epoch_start(self) -> None:
        self._test_records = TestRecords()
        self._report = {}
        self._sample_seconds = 0.0

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        vo, vp = self._split(batch)
        if "range_m" not in batch or "mask" not in batch:
            raise ValueError(
                "STDiffModule.test_step: batch needs 'range_m' and 'mask' (range data)"
            )
        recorder = None
        if "continuity" in self._analyses and batch_idx == 0 and self.global_rank == 0:
            recorder = TrajectoryBuffer(self.continuity_sequences)
        t0 = time.perf_counter()
        pred = self.sample(
            vo,
            self.num_samples,
            self.num_inference_steps,
            self._generator(batch_idx),
            self.scheduler_type,
            step_callback=recorder,
        )  # [K, B, Tp, C, H, W]
        self._sample_seconds += time.perf_counter() - t0
        if recorder is not None:
            self._report.update(
                save_continuity(recorder, self.net.make_scheduler().alphas_cumprod,
                                self._continuity_dir())
            )  # fmt: skip
        self._test_records.add_samples(self.score(pred, vp, batch))
        space = self.range_space
        for method, frames in baseline_forecasts(
            vo, batch, self.n_pred, space, self.baselines
        ).items():
            # Sequences without poses have no constant-velocity forecast: nothing to score.
            valid = has_poses(batch) if method == "constant_velocity" else None
            self._test_records.add_baseline(
                method, self.score(frames.unsqueeze(0), vp, batch), valid
            )
        if batch_idx == 0 and self.global_rank == 0:
            self._log_test_media(vo, pred[0], vp)

    def score(self, pred: Tensor, vp: Tensor, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Per-sample, per-step metrics ``[K, B, Tp]`` of ``pred [K, B, Tp, C, H, W]``
        (`stdiff.evaluation.score` with this module's settings)."""
        return evaluation.score(pred, vp, batch, self.range_space, self.chamfer, self.lpips_metric)

    def _continuity_dir(self) -> Path:
        if self.continuity_dir:
            return Path(self.continuity_dir)
        return Path(self.trainer.default_root_dir) / "continuity"

    def _log_test_media(self, vo: Tensor, pred: Tensor, vp: Tensor) -> None:
        from wavecast.media import log_media

        strips = self.strips(vo, pred, vp)
        save_dir = Path(self.trainer.default_root_dir) / "media"
        for i in range(min(2, strips.shape[0])):
            log_media(
                self.trainer.loggers,
                f"test/range_obs_pred_gt/{i}",
                strips[i],
                self.global_step,
                save_dir,
            )

    def on_test_epoch_end(self) -> None:
        def gather(values: Tensor) -> Tensor:  # [N, Tp] of this rank -> of all ranks
            if self._trainer is not None and self.trainer.world_size > 1:
                return self.all_gather(values.to(self.device)).flatten(0, 1)
            return values

        scalars, report = self._test_records.summarise(gather)
        for key, value in scalars.items():
            self.log(key, value, sync_dist=False, rank_zero_only=True)
        sampler = self.scheduler_type or self.net.scheduler_config["_class_name"]
        report.update(
            {
                "test/num_samples": self.num_samples,
                "test/num_inference_steps": self.num_inference_steps,
                "test/scheduler_type": sampler,
                "test/beta_schedule": self.net.scheduler_config.get("beta_schedule"),
                "test/sampling_seconds": self._sample_seconds,
                "test/future_times": [float(t) for t in self.future_times()],
            }
        )
        if self.lpips_metric is None:
            notice_once("stdiff-lpips-off", "LPIPS not computed (no local AlexNet LPIPS weights)")
        # I3D expects RGB clips of >= 10 frames; range-image futures are neither.
        notice_once("stdiff-fvd", "FVD not computed for STDiff range-image futures")
        self._report.update(report)

    def eval_report(self) -> dict[str, Any]:
        """Per-step arrays and settings of the last test run (JSON-serialisable)."""
        return json.loads(json.dumps(self._report))

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["wavecast"] = {
            "model": "stdiff",
            "net_class": type(self.net).__name__,
            "scheduler_config": dict(self.net.scheduler_config),
            "time_step": self.time_step,
            "data": self.data_spec,
            "nonfinite_guard": self.guard.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        source = checkpoint_source(self)
        meta = checkpoint.get("wavecast") or {}
        check_model_kind(meta, "stdiff", "STDiff", source)
        for key in ("state_dict", "current_model_state"):
            if key in checkpoint:
                self._check_state(checkpoint[key], source)
        stored = meta.get("scheduler_config")
        if stored is None:
            extra = checkpoint.get("state_dict", {}).get("net._extra_state")
            stored = extra.get("scheduler_config") if isinstance(extra, Mapping) else None
        if stored is not None:
            check_config(
                scheduler_differences(stored, self.net.scheduler_config),
                f"{source} was trained with another noise schedule than model.noise_scheduler; "
                "sampling must use the training schedule",
                "model.noise_scheduler",
            )
        data = meta.get("data") or {}
        if data and self.data_spec is not None:
            for key in ("normalization", "channels"):
                if key in data and data[key] != self.data_spec[key]:
                    raise ConfigError(
                        f"{source} was trained on data with {key}={data[key]!r}, the data "
                        f"config has {self.data_spec[key]!r} (data.{key})"
                    )
            size = [(d.get("projection") or {}).get(k) for d in (data, self.data_spec)
                    for k in ("height", "width")]  # fmt: skip
            if size[:2] != size[2:]:
                rank_zero_warn(
                    f"{source} was trained on {size[0]} x {size[1]} range images, the data "
                    f"config gives {size[2]} x {size[3]} (data.projection)"
                )
        self.guard.load_state_dict(meta.get("nonfinite_guard", {}))

    def _check_state(self, sd: Mapping[str, Any], source: str) -> None:
        """Refuse a state dict that does not fit this network, before anything is copied."""
        ours = {k: v for k, v in self.state_dict().items() if k.startswith("net.")}
        theirs = {k: v for k, v in sd.items() if k.startswith("net.")}
        if not theirs:
            raise ConfigError(
                f"{source} has no STDiff network weights ('net.*' keys; found "
                f"{sorted(sd)[:5]}): not an STDiff training checkpoint"
            )
        check_state_dict(ours, theirs, source, "model.net (another architecture?)")


# ----------------------------------------------------------------------------------------------
# Helpers


def scheduler_config_of(scheduler: Any) -> dict[str, Any]:
    """The stored form (``{"_class_name", **config}``) of a diffusers scheduler or a config dict."""
    if isinstance(scheduler, Mapping):
        return normalize_scheduler_config(dict(scheduler))
    config = getattr(scheduler, "config", None)
    if config is None:
        raise ConfigError(
            f"model.noise_scheduler must be a diffusers scheduler, got {type(scheduler).__name__}"
        )
    return normalize_scheduler_config({**dict(config), "_class_name": type(scheduler).__name__})


def scheduler_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, tuple]:
    """Keys whose values differ between two stored scheduler configs, each completed with its
    class's defaults (so a short config and diffusers' full one compare equal)."""
    from stdiff.model import SCHEDULER_CLASSES

    def full(cfg: Mapping[str, Any]) -> dict[str, Any]:
        c = normalize_scheduler_config(dict(cfg))
        name = c.pop("_class_name")
        sched = SCHEDULER_CLASSES[name](**c)
        out = {k: v for k, v in dict(sched.config).items() if not k.startswith("_")}
        out["class"] = name
        return out

    fa, fb = full(a), full(b)
    diff = {}
    for k in sorted(fa.keys() | fb.keys()):
        va, vb = fa.get(k), fb.get(k)
        if isinstance(va, float) or isinstance(vb, float):
            same = va is not None and vb is not None and math.isclose(va, vb, rel_tol=1e-9)
        else:
            same = _plain(va) == _plain(vb)
        if not same:
            diff[k] = (va, vb)
    return diff


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray | Tensor):
        return [float(x) for x in v.tolist()]
    if isinstance(v, tuple):
        return list(v)
    return v
