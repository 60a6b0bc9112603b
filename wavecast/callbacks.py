"""Callbacks shared by the three models."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from wavecast.hooks import LogsMedia
from wavecast.media import log_media

log = logging.getLogger(__name__)


class MediaLogger(pl.Callback):
    """Logs sample media from the first validation batch every `every_n_epochs`, rank 0 only
    (and from the first test batch when `stages` holds "test": eval.py's reconstructions).

    The LightningModule provides `media_from_batch(batch) -> dict[str, Tensor]` (videos
    [B, C, T, H, W] or images [B, C, H, W] in [-1, 1]); this callback writes and logs the first
    `max_items` of each (test media named test/... instead of val/...).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        max_items: int = 2,
        fps: int = 5,
        save_dir: str = "media",
        stages: Sequence[str] = ("val",),
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"MediaLogger.every_n_epochs must be >= 1, got {every_n_epochs}")
        unknown = set(stages) - {"val", "test"}
        if unknown:
            raise ValueError(f"MediaLogger.stages: unknown {sorted(unknown)} (known: val, test)")
        self.every_n_epochs = every_n_epochs
        self.max_items = max_items
        self.fps = fps
        self.save_dir = Path(save_dir)
        self.stages = tuple(stages)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or "test" not in self.stages or not trainer.is_global_zero:
            return
        if not isinstance(pl_module, LogsMedia):
            return
        with torch.no_grad():
            media = pl_module.media_from_batch(batch)
        renamed = {k.replace("val/", "test/", 1): v for k, v in media.items()}
        self._write(trainer, renamed)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or trainer.sanity_checking or "val" not in self.stages:
            return
        if trainer.current_epoch % self.every_n_epochs != 0 or not trainer.is_global_zero:
            return
        if not isinstance(pl_module, LogsMedia):
            return
        with torch.no_grad():
            media = pl_module.media_from_batch(batch)
        self._write(trainer, media)

    @rank_zero_only
    def _write(self, trainer: pl.Trainer, media: dict[str, torch.Tensor]) -> None:
        for name, tensor in media.items():
            for i in range(min(self.max_items, tensor.shape[0])):
                log_media(
                    trainer.loggers,
                    f"{name}/{i}",
                    tensor[i],
                    trainer.global_step,
                    self.save_dir,
                    self.fps,
                )


class GradientMonitor(pl.Callback):
    """Logs gradient norms (every logger) and histograms (wandb, TensorBoard) of parameters.

    Runs in `on_before_optimizer_step`, so it sees the unclipped gradients of every optimizer
    (manual optimisation included). `prefix` selects parameters by name (e.g. "temporal." for
    the TemporalModule's); empty = all trainable parameters.
    """

    def __init__(
        self,
        every_n_steps: int = 1,
        histograms: bool = True,
        prefix: str = "",
        histogram_every_n_steps: int = 10,
    ) -> None:
        self.every_n_steps = max(1, every_n_steps)
        self.histograms = histograms
        self.histogram_every_n_steps = max(1, histogram_every_n_steps)
        self.prefix = prefix

    def _named_grads(self, pl_module: pl.LightningModule):
        for name, p in pl_module.named_parameters():
            if p.grad is not None and name.startswith(self.prefix):
                yield name, p.grad.detach()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        step = trainer.global_step
        if step % self.every_n_steps:
            return
        norms = {f"grad_norm/{n}": g.float().norm() for n, g in self._named_grads(pl_module)}
        if not norms:
            return
        total = torch.stack(list(norms.values())).norm()
        pl_module.log_dict(norms, on_step=True, on_epoch=False)
        pl_module.log("grad_norm/total", total, on_step=True, on_epoch=False)
        if self.histograms and step % self.histogram_every_n_steps == 0 and trainer.is_global_zero:
            self._histograms(trainer, pl_module, step)

    def _histograms(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        for logger in trainer.loggers:
            kind = type(logger).__name__
            for name, g in self._named_grads(pl_module):
                values = g.float().flatten().cpu()
                if kind == "WandbLogger":
                    import wandb

                    logger.experiment.log(
                        {
                            f"grad_hist/{name}": wandb.Histogram(values.numpy()),
                            "trainer/global_step": step,
                        }
                    )
                elif kind == "TensorBoardLogger":
                    logger.experiment.add_histogram(f"grad_hist/{name}", values, step)


class EpochSeed(pl.Callback):
    """Reseeds Python, NumPy and torch at every training epoch start from (seed, epoch, rank).

    Lightning restores weights, optimizers and loop counters on resume but not the global RNGs,
    and validation / data-loader start-up consume random numbers at points that differ between
    a resumed and an uninterrupted run. Making each epoch's random stream a function of the
    epoch alone means a run resumed from an epoch-boundary checkpoint draws the same shuffles,
    posterior samples and noise as the uninterrupted one (tests/test_resume.py). Ranks get
    different streams so that DDP replicas do not draw identical noise.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import random

        import numpy as np

        s = (self.seed * 1_000_003 + trainer.current_epoch * 1_009 + trainer.global_rank) % 2**32
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
