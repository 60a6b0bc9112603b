"""Callbacks shared by the three models."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from wavecast.media import log_media

log = logging.getLogger(__name__)


class MediaLogger(pl.Callback):
    """Logs sample media from the first validation batch every `every_n_epochs`, rank 0 only.

    The LightningModule provides `media_from_batch(batch) -> dict[str, Tensor]` (videos
    [B, C, T, H, W] or images [B, C, H, W] in [-1, 1]); this callback writes and logs the first
    `max_items` of each.
    """

    def __init__(
        self, every_n_epochs: int = 1, max_items: int = 2, fps: int = 5, save_dir: str = "media"
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"MediaLogger.every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.max_items = max_items
        self.fps = fps
        self.save_dir = Path(save_dir)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or trainer.sanity_checking:
            return
        if trainer.current_epoch % self.every_n_epochs != 0 or not trainer.is_global_zero:
            return
        if not hasattr(pl_module, "media_from_batch"):
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
