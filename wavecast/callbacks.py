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


class RNGStateCheckpoint(pl.Callback):
    """Saves the Python / NumPy / torch RNG states in checkpoints and restores them on resume.

    Lightning restores weights, optimizers and loop counters but not the global RNGs, so a
    resumed run would otherwise draw other posterior samples, noise and shuffles than the
    uninterrupted run with the same seed.
    """

    def state_dict(self) -> dict[str, Any]:
        import random

        import numpy as np

        state = {
            "python": random.getstate(),
            # As plain types + a tensor so that weights_only checkpoint loading accepts it.
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        import random

        import numpy as np

        random.setstate(state_dict["python"])
        kind, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def _numpy_state_to_plain(state: tuple) -> tuple:
    kind, keys, pos, has_gauss, cached = state
    return (
        str(kind),
        torch.from_numpy(keys.astype("int64")),
        int(pos),
        int(has_gauss),
        float(cached),
    )
