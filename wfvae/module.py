"""LightningModule that trains WF-VAE as a VAE-GAN (manual optimisation).

The module knows nothing of files: batches are dicts with "video" [B, 3, T, H, W] in [-1, 1].
The network (`wfvae.model.WFVAE`) and the loss (`wfvae.losses.WFVAELoss`, which owns the
optional discriminator) are built by Hydra and passed in.

Why manual optimisation: the generator and the discriminator alternate steps after `disc_start`,
and the adaptive GAN weight needs the generator graph. Lightning's `gradient_clip_val` does not
apply then, so gradients are clipped here (`grad_clip`). A non-finite loss skips the step and is
counted (`train/nonfinite_skips`) instead of corrupting the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from wavecast.config import ConfigError
from wavecast.guards import NonFiniteGuard
from wavecast.metrics.flicker import temporal_flicker
from wavecast.metrics.image import psnr, ssim


class WFVAEModule(pl.LightningModule):
    """Trains a `WFVAE` with reconstruction + KL + wavelet (+ LPIPS, + GAN) losses.

    Args:
        net: the WF-VAE network.
        loss: `WFVAELoss`; its `disc` (or None) is the discriminator.
        optimizer: partial optimizer for the generator (net + loss parameters except `disc`).
        disc_optimizer: partial optimizer for the discriminator (required when `loss.disc` is set).
        scheduler: optional partial LR scheduler for the generator optimizer (stepped per step).
        grad_clip: max global grad norm for each optimizer (None = no clipping).
        max_nonfinite_skips: consecutive non-finite losses tolerated before the run stops.
        val_chunk_size: encode/decode validation clips in chunks of this many frames (None = full).
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
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.disc_optimizer_factory = disc_optimizer
        self.scheduler_factory = scheduler
        self.grad_clip = grad_clip
        self.val_chunk_size = val_chunk_size
        self.guard = NonFiniteGuard(max_nonfinite_skips)
        if self.discriminator is not None and disc_optimizer is None:
            raise ConfigError("model.disc_optimizer is required when model.loss.disc is set")
        # Generator steps taken; with two optimizers Lightning's global_step counts both.
        self.register_buffer("generator_steps", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ set-up
    @property
    def discriminator(self) -> nn.Module | None:
        return getattr(self.loss, "disc", None)

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
        size = getattr(datamodule, "frame_size", None) or getattr(datamodule, "image_size", None)
        if size is not None and any(int(s) % 8 for s in size):
            raise ConfigError(f"data.image_size={list(size)} must be divisible by 8 (WF-VAE 8x8)")

    def compile_networks(self) -> None:
        self.net = torch.compile(self.net)

    def configure_optimizers(self):
        disc = self.discriminator
        disc_ids = {id(p) for p in disc.parameters()} if disc is not None else set()
        gen_params = [p for p in self.parameters() if p.requires_grad and id(p) not in disc_ids]
        opt_g = self.optimizer_factory(params=gen_params)
        optimizers = [opt_g]
        if disc is not None:
            optimizers.append(self.disc_optimizer_factory(params=list(disc.parameters())))
        if self.scheduler_factory is None:
            return optimizers
        sched = {"scheduler": self.scheduler_factory(optimizer=opt_g), "interval": "step"}
        return optimizers, [sched]

    # ------------------------------------------------------------------ training
    def _optimizers(self) -> list[torch.optim.Optimizer]:
        opts = self.optimizers()
        return list(opts) if isinstance(opts, (list, tuple)) else [opts]

    def _reduce_min(self, x: torch.Tensor) -> torch.Tensor:
        return self.trainer.strategy.reduce(x, reduce_op="min") if self._trainer else x

    def _step(self, opt, loss: torch.Tensor, params) -> torch.Tensor | None:
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        norm = None
        if self.grad_clip is not None:
            self.unscale_gradients(opt)
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        opt.step()
        return norm

    def unscale_gradients(self, opt) -> None:
        # fp16 AMP scales the loss; bf16 and fp32 do nothing here.
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            scaler.unscale_(opt)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        x = batch["video"]
        opts = self._optimizers()
        step = int(self.generator_steps)
        out = self.net(x, sample_posterior=True)
        last_layer = self.net.get_last_layer() if self.discriminator is not None else None
        g_loss, logs = self.loss.generator_loss(x, out, step, last_layer=last_layer)
        if not self.guard.check(g_loss, "generator loss", self._reduce_min):
            self.log("train/nonfinite_skips", float(self.guard.skipped), prog_bar=True)
            return
        gen_params = [p for g in opts[0].param_groups for p in g["params"]]
        norm = self._step(opts[0], g_loss, gen_params)
        self.generator_steps += 1
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()
        if norm is not None:
            logs["grad_norm/generator"] = norm
        if self.discriminator is not None and step >= getattr(self.loss, "disc_start", 0):
            d_loss, d_logs = self.loss.discriminator_loss(x, out.recon.detach(), step)
            if self.guard.check(d_loss, "discriminator loss", self._reduce_min):
                d_norm = self._step(opts[1], d_loss, list(self.discriminator.parameters()))
                if d_norm is not None:
                    d_logs["grad_norm/discriminator"] = d_norm
                logs.update(d_logs)
        self.log("train/loss", g_loss.detach(), prog_bar=True)
        self.log_dict({f"train/{k}": _scalar(v) for k, v in logs.items()})
        self.log("train/nonfinite_skips", float(self.guard.skipped))

    # ------------------------------------------------------------------ evaluation
    def _reconstruct(self, x: torch.Tensor):
        if self.val_chunk_size is None:
            return self.net(x, sample_posterior=False)
        post = self.net.encode(x, chunk_size=self.val_chunk_size).posterior
        return self.net.decode(post.mode(), chunk_size=self.val_chunk_size)

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        x = batch["video"]
        out = self._reconstruct(x)
        recon = out.recon if hasattr(out, "recon") else out.video
        metrics = {
            "psnr": psnr(recon, x).mean(),
            "ssim": ssim(recon, x).mean(),
            "flicker": temporal_flicker(recon, x).mean(),
            "rec_l1": (recon - x).abs().mean(),
        }
        if hasattr(out, "posterior"):
            loss, logs = self.loss.generator_loss(x, out, int(self.generator_steps), None)
            metrics["loss"] = loss.detach()
            metrics.update({k: _scalar(v) for k, v in logs.items() if k in ("kl", "wavelet")})
        self.log_dict(
            {f"{stage}/{k}": v for k, v in metrics.items()},
            prog_bar=stage == "val",
            sync_dist=True,
            batch_size=x.shape[0],
        )
        return metrics

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        return self._eval_step(batch, "test")

    def media_from_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Input | reconstruction side by side, [B, 3, T, H, 2W] in [-1, 1]."""
        x = batch["video"]
        recon = self.net(x, sample_posterior=False).recon
        return {"val/reconstruction": torch.cat([x, recon.clamp(-1, 1)], dim=-1)}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["wavecast"] = {
            "model": "wfvae",
            "net_class": type(self.net).__name__,
            "net_config": dict(getattr(self.net, "config", {}) or {}),
            "nonfinite_guard": self.guard.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("wavecast", {})
        if meta.get("model") not in (None, "wfvae"):
            raise ConfigError(
                f"checkpoint holds a '{meta.get('model')}' model, not a WF-VAE: wrong "
                "ckpt_path or experiment"
            )
        ours = dict(getattr(self.net, "config", {}) or {})
        theirs = meta.get("net_config") or {}
        diff = {
            k: (theirs[k], ours[k]) for k in ours.keys() & theirs.keys() if theirs[k] != ours[k]
        }
        if diff:
            raise ConfigError(
                "checkpoint was trained with another WF-VAE config: "
                + ", ".join(
                    f"model.net.{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items()
                )
            )
        self.guard.load_state_dict(meta.get("nonfinite_guard", {}))


def _scalar(v: Any) -> torch.Tensor | float:
    return v.detach().float() if isinstance(v, torch.Tensor) else float(v)
