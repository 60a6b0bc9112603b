"""LightningModule that trains WF-VAE as a VAE-GAN (manual optimisation).

The module knows nothing of files: batches are dicts with "video" [B, 3, T, H, W] in [-1, 1].
The network (`wfvae.model.WFVAE`) and the loss (`wfvae.losses.WFVAELoss`, which owns the
optional discriminator) are built by Hydra and passed in.

Training recipe (reference `train_ddp.py`):

* Generator steps only until `loss.disc_start` generator steps have been taken; the
  discriminator is not even run before that. From then on the two alternate:
  `gan_schedule="alternate"` (the reference) gives each batch to one optimizer, generator and
  discriminator in turn (a discriminator batch runs the generator forward without gradients);
  `"joint"` takes a generator step and then a discriminator step on the same batch and its
  detached reconstruction (one generator forward fewer per pair).
* Steps: `generator_steps` / `discriminator_steps` count the steps taken (saved in checkpoints).
  Lightning's `trainer.global_step` counts every optimizer step of both, so **`trainer.max_steps`
  is generator + discriminator steps**: with `max_steps = N > disc_start` a run takes
  `disc_start + ceil((N - disc_start) / 2)` generator steps under either schedule (logged at the
  start of `fit`; "joint" may end one discriminator step past N). Checkpoint
  `every_n_train_steps` counts the same optimizer steps; the LR scheduler and the EMA callback
  count generator steps.
* Gradients are clipped here (`grad_clip`, both optimizers, the norm before clipping is logged
  as `train/grad_norm/{generator,discriminator}`); Lightning's `gradient_clip_val` does not apply
  with manual optimisation and is refused at start-up.
* A non-finite loss or gradient norm skips that optimizer's step: no backward / no update, the
  module's buffers (e.g. BatchNorm statistics) restored, the optimizer state untouched; it is
  counted (`train/nonfinite_skips`), and more than `max_nonfinite_skips` in a row for one
  optimizer raise `NonFiniteLossError` (checkpoints already written are from finite steps).
* EMA of the generator: the `wfvae.ema.GeneratorEMA` callback (see there).

Evaluation: PSNR, SSIM, temporal flicker, L1 (dataset-level, `wavecast.metrics.dataset`) and the
VAE loss per batch; LPIPS (AlexNet) when
`metric_lpips_weights` (or `$WAVECAST_WEIGHTS_DIR`) provides local weights; in `test`, FVD with
dataset-level statistics when `fvd_i3d` (or `$WAVECAST_WEIGHTS_DIR`) provides the I3D file,
logged as `test/fvd` and returned by `eval_report()`.

Checkpoints: `ckpt_path` resumes a training run (full Lightning checkpoint). `init_ckpt` starts a
new run (fresh optimizers and counters) from the network weights of a file: a Wavecast training
checkpoint (its `state_dict`, i.e. the EMA weights when it was trained with EMA; a matching
discriminator is taken too), the output of `scripts/convert_reference.py`, or a bare `WFVAE`
state dict. A checkpoint of another model or of an incompatible network config is refused with
a `ConfigError` before any weight is copied.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.weight_averaging import WeightAveraging
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from wavecast.checkpoints import (
    check_config,
    check_model_kind,
    check_state_dict,
    checkpoint_source,
    config_differences,
    load_checkpoint,
    state_dict_mismatch,
)
from wavecast.config import ConfigError
from wavecast.guards import NonFiniteGuard, all_finite
from wavecast.lr_schedule import build_lr_scheduler, run_length
from wavecast.metrics.baselines import VIDEO_BASELINES
from wavecast.metrics.dataset import FramePSNR, FrameSSIM, MeanOf, TemporalFlicker
from wavecast.metrics.fvd import FVD, I3D_MIN_FRAMES
from wavecast.metrics.weights import (
    WeightsError,
    notice_once,
    resolve_i3d_weights,
    resolve_lpips_weights,
)
from wfvae.causal_conv import ChunkCache, FrameConv2d
from wfvae.lpips import PerceptualLoss

log = logging.getLogger(__name__)

GanSchedule = Literal["alternate", "joint"]

# Network config keys that do not change the weights' meaning: a checkpoint may differ in them.
NON_ARCH_KEYS = frozenset({"frames_policy", "gradient_checkpointing", "dropout", "conv_algorithm"})
_REFERENCE_HINT = (
    " (a checkpoint of the published code? convert it first with scripts/convert_reference.py)"
)
# A generator step index below every disc_start: the GAN term is off (evaluation losses).
_NO_GAN_STEP = -1


class EagerFrameConv2d(FrameConv2d):
    """A :class:`FrameConv2d` that ``torch.compile`` leaves out of its graphs (the decoder's
    last conv under ``compile=true``: see :meth:`WFVAEModule.compile_networks`). A class, not a
    patched instance method, so deep copies (weight averaging) and pickles keep their own."""

    @torch.compiler.disable
    def forward(self, x: Tensor, cache: ChunkCache | None = None) -> Tensor:
        return super().forward(x, cache)


class WFVAEModule(pl.LightningModule):
    """Trains a `WFVAE` with reconstruction + KL + wavelet (+ LPIPS, + GAN) losses.

    Args:
        net: the WF-VAE network.
        loss: `WFVAELoss`; its `disc` (or None) is the discriminator.
        optimizer: partial optimizer for the generator (net + loss parameters except `disc`).
        disc_optimizer: partial optimizer for the discriminator (required when `loss.disc` is set).
        scheduler: optional partial LR scheduler for the generator optimizer (stepped per
            generator step).
        grad_clip: max global grad norm for each optimizer (None = no clipping).
        max_nonfinite_skips: consecutive non-finite steps (per optimizer) tolerated before the
            run stops with `NonFiniteLossError`; None = never stop.
        val_chunk_size: encode/decode validation clips in chunks of this many frames (None = full).
        gan_schedule: "alternate" (reference: one optimizer per batch after `disc_start`) or
            "joint" (generator then discriminator on every batch).
        init_ckpt: start from the network weights of this file (fine-tuning; fresh optimizers).
        metric_lpips_weights: local AlexNet LPIPS weights for the val/test metric (folder or
            `{backbone, lin}`); None looks in `$WAVECAST_WEIGHTS_DIR`, else the metric is off.
        fvd_i3d: local `i3d_torchscript.pt` for test FVD; None looks in `$WAVECAST_WEIGHTS_DIR`,
            else FVD is skipped (said once).
        fvd_batch_size: clips per I3D call.
        eval_baselines: also log the PSNR of trivial answers on the same val / test clips
            (`{stage}/baseline_psnr/mean_frame`, `.../bilinear_x8`; `wavecast.metrics.baselines`).
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        disc_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        grad_clip: float | None = 1.0,
        max_nonfinite_skips: int | None = 20,
        val_chunk_size: int | None = None,
        gan_schedule: GanSchedule = "alternate",
        init_ckpt: str | None = None,
        metric_lpips_weights: Any = None,
        fvd_i3d: str | None = None,
        fvd_batch_size: int = 8,
        eval_baselines: bool = True,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.disc_optimizer_factory = disc_optimizer
        self.scheduler_factory = scheduler
        if grad_clip is not None and not grad_clip > 0:
            raise ConfigError(f"model.grad_clip must be > 0 or null, got {grad_clip}")
        if gan_schedule not in ("alternate", "joint"):
            raise ConfigError(
                f"model.gan_schedule must be 'alternate' or 'joint', got {gan_schedule!r}"
            )
        self.grad_clip = grad_clip
        self.val_chunk_size = val_chunk_size
        self.gan_schedule = gan_schedule
        self.guard = NonFiniteGuard(max_nonfinite_skips)
        self.disc_guard = NonFiniteGuard(max_nonfinite_skips)
        if self.discriminator is not None:
            if disc_optimizer is None:
                raise ConfigError("model.disc_optimizer is required when model.loss.disc is set")
            if int(getattr(loss, "disc_start", 0)) < 0:
                raise ConfigError(f"model.loss.disc_start must be >= 0, got {loss.disc_start}")
        # Steps taken by each optimizer (Lightning's global_step counts both); in checkpoints.
        self.generator_steps = 0
        self.discriminator_steps = 0
        self.lpips_metric = _build_lpips_metric(metric_lpips_weights)
        if fvd_i3d is not None:
            resolve_i3d_weights(fvd_i3d)  # a configured file that is missing fails at start-up
        self.fvd_i3d = fvd_i3d
        self.fvd_batch_size = int(fvd_batch_size)
        self.eval_baselines = bool(eval_baselines)
        # Dataset-level val / test metrics (torchmetrics state: summed over batches and DDP ranks,
        # computed and reset by Lightning at each epoch end).
        self.eval_metrics = nn.ModuleDict({stage: self._metric_set() for stage in ("val", "test")})
        self._fvd: FVD | None = None
        self._report: dict[str, float] = {}
        if init_ckpt is not None:
            self.load_init_checkpoint(init_ckpt)

    # ------------------------------------------------------------------ set-up
    @property
    def discriminator(self) -> nn.Module | None:
        return getattr(self.loss, "disc", None)

    @property
    def disc_start(self) -> int:
        return int(getattr(self.loss, "disc_start", 0))

    def check_data(self, datamodule: pl.LightningDataModule) -> None:
        """Start-up check: clip length and frame size compatible with the 4x8x8 compression."""
        clip = getattr(datamodule, "clip_length", None)
        policy = getattr(self.net, "frames_policy", "error")
        if clip is not None and (clip - 1) % 4 and policy != "pad":
            raise ConfigError(
                f"data.clip_length={clip} is not 4n+1 (WF-VAE compresses time by 4 causally); "
                f"use {clip - (clip - 1) % 4} or {clip + 4 - (clip - 1) % 4}, or set "
                "model.net.frames_policy=pad"
            )
        if clip is not None and self.fvd_i3d is not None and clip < I3D_MIN_FRAMES:
            raise ConfigError(
                f"model.fvd_i3d is set but data.clip_length={clip} < {I3D_MIN_FRAMES}: I3D (FVD) "
                "needs longer clips; use data.clip_length=13 or more, or model.fvd_i3d=null"
            )
        size = getattr(datamodule, "frame_size", None) or getattr(datamodule, "image_size", None)
        if size is not None and any(int(s) % 8 for s in size):
            down = [int(s) // 8 * 8 or 8 for s in size]
            up = [-(-int(s) // 8) * 8 for s in size]
            raise ConfigError(
                f"data.image_size={list(size)} must be divisible by 8 (WF-VAE compresses 8x8 in "
                f"space): use {down} or {up}"
            )

    def compile_networks(self, **compile_kwargs: Any) -> None:
        """``torch.compile`` the network in place (the state-dict keys stay ``net.*``, so
        checkpoints do not depend on compile); with a discriminator, all but the decoder's last
        conv.

        That conv stays eager because the GAN's adaptive weight takes the losses' gradients
        w.r.t. its weight alone (``get_last_layer``), twice a step. A compiled graph's backward
        computes every input's gradient at once, so inside the graph each of those calls ran
        the whole network's backward: the bc64 full-recipe step took 2.3 s compiled against
        1.0 s eager (bf16, CPU), and 1.1 s compiled with the conv left out.
        """
        last = self.net.decoder.conv_out  # the layer of net.get_last_layer()
        if self.discriminator is not None and type(last) is FrameConv2d:
            last.__class__ = EagerFrameConv2d  # same parameters and state-dict keys
        self.net.compile(**compile_kwargs)

    def configure_callbacks(self) -> list[pl.Callback]:
        # Called when the module is attached to a trainer, before Lightning's own checks, so a
        # wrong trainer setting is reported with the key to use instead.
        self._check_trainer()
        return []

    def _check_trainer(self) -> None:
        trainer = self.trainer
        if trainer.state.fn != "fit":
            return
        clip = trainer.gradient_clip_val
        if clip is not None and clip > 0:
            raise ConfigError(
                f"trainer.gradient_clip_val={clip} does not apply to WFVAEModule (manual "
                "optimisation of generator and discriminator): set model.grad_clip instead and "
                "trainer.gradient_clip_val=null"
            )
        if trainer.accumulate_grad_batches != 1:
            raise ConfigError(
                f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} is not "
                "supported by WFVAEModule (manual optimisation); raise data.batch_size instead"
            )
        for cb in trainer.callbacks:
            if isinstance(cb, WeightAveraging) and not _is_generator_ema(cb):
                rank_zero_warn(
                    f"{type(cb).__name__} averages the whole WFVAEModule (discriminator "
                    "included) and counts discriminator steps; use wfvae.ema.GeneratorEMA"
                )
        if self.discriminator is not None and trainer.max_steps is not None:
            n = trainer.max_steps
            if n > self.disc_start:
                gen = self.disc_start + math.ceil((n - self.disc_start) / 2)
                rank_zero_info(
                    f"trainer.max_steps={n} counts generator and discriminator steps: about "
                    f"{gen} generator steps (loss.disc_start={self.disc_start})"
                )

    def configure_optimizers(self):
        opt_g = self.optimizer_factory(params=self._generator_params())
        optimizers = [opt_g]
        if self.discriminator is not None:
            optimizers.append(self.disc_optimizer_factory(params=self._discriminator_params()))
        if self.scheduler_factory is None:
            return optimizers
        scheduler = build_lr_scheduler(
            self.scheduler_factory, opt_g, self._generator_steps_in_run(), key="model.scheduler"
        )
        return optimizers, [{"scheduler": scheduler, "interval": "step"}]

    def _generator_steps_in_run(self) -> int | None:
        """Generator steps this run will take (the scheduler is stepped per generator step)."""
        n = run_length(self)
        if n is None:
            return None
        if self.discriminator is not None and n > self.disc_start:
            # After disc_start the batches (optimizer steps) alternate between the two.
            n = self.disc_start + math.ceil((n - self.disc_start) / 2)
        return n

    def _discriminator_params(self) -> list[nn.Parameter]:
        disc = self.discriminator
        return [] if disc is None else [p for p in disc.parameters() if p.requires_grad]

    def _generator_params(self) -> list[nn.Parameter]:
        disc = self.discriminator
        disc_ids = {id(p) for p in disc.parameters()} if disc is not None else set()
        return [p for p in self.parameters() if p.requires_grad and id(p) not in disc_ids]

    # ------------------------------------------------------------------ training
    def _optimizers(self) -> list[Any]:
        opts = self.optimizers()
        return list(opts) if isinstance(opts, (list, tuple)) else [opts]

    def _reduce_min(self, x: Tensor) -> Tensor:
        return self.trainer.strategy.reduce(x, reduce_op="min") if self._trainer else x

    def _buffer_snapshot(self) -> list[tuple[Tensor, Tensor]]:
        # Forward passes in train mode update running statistics (the discriminator's
        # BatchNorm); a skipped step must not keep statistics of a non-finite batch.
        return [(b, b.detach().clone()) for b in self.buffers()]

    @staticmethod
    def _restore_buffers(snapshot: list[tuple[Tensor, Tensor]]) -> None:
        with torch.no_grad():
            for b, saved in snapshot:
                b.copy_(saved)

    def _grad_scaler(self) -> Any:
        return getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer else None

    def _optimizer_step(
        self, opt: Any, loss: Tensor, params: list[nn.Parameter], guard: NonFiniteGuard, name: str
    ) -> Tensor | None:
        """Backward, clip, step; returns the gradient norm before clipping, or None if skipped.

        Exactly one `guard.check` per call, so "consecutive" counts steps, not checks.
        """
        if not all_finite(loss, self._reduce_min):
            # Every rank gets here; the reduced check counts the skip (raises past the limit).
            guard.check(loss, f"{name} loss", self._reduce_min)
            return None
        opt.zero_grad(set_to_none=True)
        self.manual_backward(self._with_unused_params(loss, params))
        scaler = self._grad_scaler()
        if scaler is not None:
            scaler.unscale_(opt)  # fp16: clip the true gradients; the scaler skips inf steps
        grads = [p.grad for p in params if p.grad is not None]
        norm = (
            torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=loss.device)
        )
        if scaler is None and not guard.check(norm, f"{name} gradient norm"):
            opt.zero_grad(set_to_none=True)
            return None
        if scaler is not None:
            guard.check(loss, f"{name} loss")  # finite: resets the consecutive count
        if self.grad_clip is not None and grads:
            torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, norm)
        opt.step()
        # Free the gradients now: the next backward (of the other optimizer) starts from none.
        opt.zero_grad(set_to_none=True)
        return norm.detach()

    def _with_unused_params(self, loss: Tensor, params: list[nn.Parameter]) -> Tensor:
        """Under DDP, ``loss + 0 * (every other trainable parameter)``.

        Each step trains one network; DDP (with the default find_unused_parameters=false)
        expects a gradient for every parameter in every backward, so the other network gets
        exact zeros (which its own step clears before use) instead of none. Cheaper than
        find_unused_parameters=true, and no requires_grad toggling that DDP would not see.
        """
        if self._trainer is None or not isinstance(self.trainer.strategy, DDPStrategy):
            return loss
        used = {id(p) for p in params}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in used]
        if not rest:
            return loss
        return loss + 0.0 * torch.stack([p.float().sum() for p in rest]).sum()

    def _disc_turn(self) -> bool:
        """Alternate schedule: the discriminator's batch once the generator is one GAN step ahead."""
        if self.discriminator is None or self.gan_schedule != "alternate":
            return False
        return self.discriminator_steps < max(0, self.generator_steps - self.disc_start)

    @staticmethod
    def _video(batch: Any) -> Tensor:
        x = batch["video"] if isinstance(batch, Mapping) else batch
        if not isinstance(x, Tensor) or x.dim() != 5:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"WFVAEModule expects batch['video'] [B, 3, T, H, W], got {shape}")
        return x

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        x = self._video(batch)
        opts = self._optimizers()
        if self._disc_turn():
            with torch.no_grad():
                recon = self.net(x, sample_posterior=True).recon
            self._discriminator_step(x, recon, opts[1])
            self._log_skips()
            return
        step = self.generator_steps
        snapshot = self._buffer_snapshot()
        out = self.net(x, sample_posterior=True)
        last_layer = self.net.get_last_layer() if self.discriminator is not None else None
        g_loss, logs = self.loss.generator_loss(x, out, step, last_layer=last_layer)
        norm = self._optimizer_step(
            opts[0], g_loss, self._generator_params(), self.guard, "generator"
        )
        if norm is None:
            self._restore_buffers(snapshot)
            self._log_skips()
            return
        self.generator_steps += 1
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        logs["grad_norm/generator"] = norm
        self.log("train/loss", g_loss.detach(), prog_bar=True)
        self.log_dict({f"train/{k}": _scalar(v) for k, v in logs.items()})
        if (
            self.gan_schedule == "joint"
            and self.discriminator is not None
            and step >= self.disc_start
        ):
            self._discriminator_step(x, out.recon.detach(), opts[1])
        self._log_skips()

    def _discriminator_step(self, x: Tensor, recon: Tensor, opt: Any) -> None:
        # The index of the generator step whose reconstructions these are (>= disc_start).
        step = self.generator_steps - 1
        snapshot = self._buffer_snapshot()
        d_loss, d_logs = self.loss.discriminator_loss(x, recon.detach(), step)
        norm = self._optimizer_step(
            opt, d_loss, self._discriminator_params(), self.disc_guard, "discriminator"
        )
        if norm is None:
            self._restore_buffers(snapshot)
            return
        self.discriminator_steps += 1
        d_logs["grad_norm/discriminator"] = norm
        self.log_dict({f"train/{k}": _scalar(v) for k, v in d_logs.items()})

    def _log_skips(self) -> None:
        self.log("train/nonfinite_skips", float(self.guard.skipped + self.disc_guard.skipped))
        self.log("train/generator_steps", float(self.generator_steps))

    # ------------------------------------------------------------------ evaluation
    def _reconstruct(self, x: Tensor):
        if self.val_chunk_size is None:
            return self.net(x, sample_posterior=False)
        post = self.net.encode(x, chunk_size=self.val_chunk_size).posterior
        return self.net.decode(post.mode(), chunk_size=self.val_chunk_size, num_frames=x.shape[2])

    def _metric_set(self) -> nn.ModuleDict:
        """The dataset-level metrics of one stage (`wavecast.metrics.dataset`)."""
        metrics: dict[str, nn.Module] = {
            "psnr": FramePSNR(),
            "ssim": FrameSSIM(),
            "flicker": TemporalFlicker(),
            "rec_l1": MeanOf(),
        }
        if self.lpips_metric is not None:
            metrics["lpips"] = MeanOf()
        if self.eval_baselines:
            metrics.update({f"baseline_psnr/{name}": FramePSNR() for name in VIDEO_BASELINES})
        return nn.ModuleDict(metrics)

    def _eval_step(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        x = self._video(batch)
        out = self._reconstruct(x)
        recon = out.recon if hasattr(out, "recon") else out.video
        m = self.eval_metrics[stage]
        m["psnr"].update(recon, x)
        m["ssim"].update(recon, x)
        m["flicker"].update(recon, x)
        m["rec_l1"].update((recon.float() - x.float()).abs())
        if "lpips" in m:
            m["lpips"].update(self.lpips_metric(recon.clamp(-1, 1), x).float())
        if self.eval_baselines:
            # Trivial answers on the same clips, scored by the same metric code.
            for name, baseline in VIDEO_BASELINES.items():
                m[f"baseline_psnr/{name}"].update(baseline(x), x)
        metrics: dict[str, Tensor] = {}
        if hasattr(out, "posterior"):
            loss, logs = self.loss.generator_loss(x, out, _NO_GAN_STEP, None)
            metrics["loss"] = loss.detach()
            metrics.update({k: _scalar(v) for k, v in logs.items() if k in ("kl", "wavelet")})
        if stage == "test" and self._fvd is not None:
            self._fvd_update(x, recon)
        logged = {f"{stage}/{k}": v for k, v in metrics.items()}
        self.log_dict(logged, prog_bar=stage == "val", sync_dist=True, batch_size=x.shape[0])
        self.log_dict(
            {f"{stage}/{k}": metric for k, metric in m.items()},
            prog_bar=stage == "val",
            batch_size=x.shape[0],
        )
        return metrics

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int):
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int):
        return self._eval_step(batch, "test")

    def on_test_epoch_start(self) -> None:
        self._report = {}
        self._fvd = FVD.from_local_or_none(
            self.fvd_i3d, device=self.device, batch_size=self.fvd_batch_size
        )

    def _fvd_update(self, x: Tensor, recon: Tensor) -> None:
        assert self._fvd is not None
        if x.shape[2] < I3D_MIN_FRAMES:
            notice_once(
                "wfvae-fvd-short",
                f"FVD skipped: test clips have {x.shape[2]} frames, I3D needs {I3D_MIN_FRAMES}",
            )
            self._fvd = None
            return
        self._fvd.update(x, recon.clamp(-1, 1))

    def on_test_epoch_end(self) -> None:
        if self._fvd is None:
            return
        for stats in (self._fvd.real, self._fvd.fake):
            self._all_reduce_stats(stats)
        value = self._fvd.compute()
        self._report = {"test/fvd": value, "test/fvd_clips": float(self._fvd.real.n)}
        self.log("test/fvd", value)
        self._fvd = None

    def _all_reduce_stats(self, stats: Any) -> None:
        """Sum FVD feature statistics over ranks (dataset-level statistics under DDP)."""
        if self.trainer.world_size <= 1:
            return
        if stats.sum is None:
            raise RuntimeError("FVD: a rank saw no test clips; use fewer processes for eval")
        reduce = self.trainer.strategy.reduce
        n = torch.tensor(float(stats.n), dtype=torch.float64, device=self.device)
        stats.n = int(reduce(n, reduce_op="sum").item())
        stats.sum = reduce(stats.sum.to(self.device), reduce_op="sum").cpu()
        stats.outer = reduce(stats.outer.to(self.device), reduce_op="sum").cpu()

    def eval_report(self) -> dict[str, float]:
        """Dataset-level numbers of the last test run (FVD), for eval.py's metrics JSON."""
        return dict(self._report)

    def media_from_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Input | reconstruction side by side, [B, 3, T, H, 2W] in [-1, 1]."""
        x = self._video(batch)
        recon = self.net(x, sample_posterior=False).recon
        return {"val/reconstruction": torch.cat([x, recon.clamp(-1, 1)], dim=-1)}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["wavecast"] = {
            "model": "wfvae",
            "net_class": type(self.net).__name__,
            "net_config": dict(getattr(self.net, "config", {}) or {}),
            "generator_steps": self.generator_steps,
            "discriminator_steps": self.discriminator_steps,
            "nonfinite_guard": self.guard.state_dict(),
            "nonfinite_guard_disc": self.disc_guard.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        source = checkpoint_source(self)
        meta = checkpoint.get("wavecast") or {}
        self._check_meta(meta, source)
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if fitting and "optimizer_states" not in checkpoint:
            raise ConfigError(
                f"ckpt_path={source} holds network weights only (a converted or weights-only "
                "checkpoint), so it cannot resume a training run: start from it with "
                f"model.init_ckpt={source} instead (fresh optimizers)"
            )
        legacy_steps = None
        for key in ("state_dict", "current_model_state"):
            if key in checkpoint:
                sd = dict(checkpoint[key])
                # Older checkpoints kept the step counter as a buffer.
                steps = sd.pop("generator_steps", None)
                legacy_steps = steps if steps is not None else legacy_steps
                checkpoint[key] = self._match_state_dict(sd, source, strict_loss=fitting)
        steps = meta.get("generator_steps", legacy_steps)
        self.generator_steps = int(steps) if steps is not None else 0
        self.discriminator_steps = int(meta.get("discriminator_steps", 0))
        self.guard.load_state_dict(meta.get("nonfinite_guard", {}))
        self.disc_guard.load_state_dict(meta.get("nonfinite_guard_disc", {}))

    def _check_meta(self, meta: Mapping[str, Any], source: str) -> None:
        """Refuse another model's checkpoint, or one of an incompatible network config."""
        check_model_kind(meta, "wfvae", "a WF-VAE", source)
        # "net_config" in training checkpoints, "config" in scripts/convert_reference.py output.
        theirs = meta.get("net_config") or meta.get("config") or {}
        ours = dict(getattr(self.net, "config", {}) or {})
        diff = config_differences(ours, theirs, ignore=NON_ARCH_KEYS)
        check_config(diff, f"{source} was made with another WF-VAE config", "model.net")

    def _match_state_dict(
        self, sd: dict[str, Tensor], source: str, strict_loss: bool
    ) -> dict[str, Tensor]:
        """``sd`` remapped to this module's keys, checked in full before anything is copied.

        Network entries must match exactly (keys and shapes). Entries of the loss (the
        discriminator, logvar) that the checkpoint lacks or has in excess are taken from / left
        to this module when not resuming a fit (evaluation needs the network only).
        """
        if not any(k.startswith("net.") for k in sd) and any(k.startswith("model.") for k in sd):
            # scripts/convert_reference.py writes the network under "model.".
            sd = {("net." + k[len("model.") :] if k.startswith("model.") else k): v
                  for k, v in sd.items()}  # fmt: skip
        ours = self.state_dict()
        net_sd = {k[4:]: v for k, v in sd.items() if k.startswith("net.")}
        net_ours = self.net.state_dict()
        # Keys, but none in common: most likely the published code's own layout.
        hint = _REFERENCE_HINT if net_sd and not net_ours.keys() & net_sd.keys() else ""
        check_state_dict(net_ours, net_sd, source, "model.net", prefix="net.", hint=hint)
        out = {f"net.{k}": v for k, v in net_sd.items()}
        rest_ours = {k: v for k, v in ours.items() if not k.startswith("net.")}
        rest_theirs = {k: v for k, v in sd.items() if not k.startswith("net.")}
        mismatch = state_dict_mismatch(rest_ours, rest_theirs)
        if strict_loss and mismatch:
            raise ConfigError(
                f"{source} does not fit this model's loss / discriminator (model.loss): "
                + mismatch.summary()
                + "; resume with the config it was trained with, or start from it with "
                "model.init_ckpt"
            )
        if mismatch:
            rank_zero_info(
                f"{source}: loss / discriminator entries not taken from the checkpoint "
                f"(evaluation uses the network only): {mismatch.summary()}"
            )
        for k, v in rest_ours.items():
            theirs = rest_theirs.get(k)
            keep = theirs is not None and tuple(theirs.shape) == tuple(v.shape)
            out[k] = theirs if keep else v.detach().clone()
        return out

    def load_init_checkpoint(self, path: str | Path) -> None:
        """Load network (and, if it fits, discriminator) weights from ``path`` for a new run.

        Accepts a Wavecast Lightning checkpoint, `scripts/convert_reference.py` output (Lightning
        layout or `--plain`), or a bare `WFVAE` state dict. Nothing is copied unless every
        network tensor is present with the right shape.
        """
        raw = load_checkpoint(path, "model.init_ckpt")
        source = f"model.init_ckpt={path}"
        self._check_meta(raw.get("wavecast") or {}, source)
        sd = raw["state_dict"] if isinstance(raw.get("state_dict"), Mapping) else raw
        sd = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
        if not any(k.startswith(("net.", "model.")) for k in sd):
            sd = {f"net.{k}": v for k, v in sd.items()}  # a bare WFVAE state dict
        sd.pop("generator_steps", None)
        matched = self._match_state_dict(sd, source, strict_loss=False)
        self.load_state_dict(matched, strict=True)
        n_net = sum(k.startswith("net.") for k in matched)
        log.info("model.init_ckpt: %d network tensors loaded from %s", n_net, path)


def _build_lpips_metric(spec: Any) -> PerceptualLoss | None:
    """Frozen AlexNet LPIPS for val/test (outside the parameters), or None (said once)."""
    key = "model.metric_lpips_weights"
    try:
        weights = resolve_lpips_weights(
            spec, "alex", consequence="val/test LPIPS is not computed", config_key=key
        )
    except WeightsError as e:
        if spec is not None:
            raise
        # $WAVECAST_WEIGHTS_DIR exists but lacks the AlexNet files: a metric, so off, said once.
        notice_once(f"lpips-alex-{key}-env", f"LPIPS metric disabled: {e}")
        return None
    return None if weights is None else PerceptualLoss(weights)


def _is_generator_ema(cb: Any) -> bool:
    from wfvae.ema import GeneratorEMA

    return isinstance(cb, GeneratorEMA)


def _scalar(v: Any) -> Tensor | float:
    return v.detach().float() if isinstance(v, Tensor) else float(v)
