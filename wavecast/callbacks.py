"""Callbacks shared by the three models."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

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
        if not hasattr(pl_module, "media_from_batch"):
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


def _same_weights(a: Path, b: Path) -> bool:
    """Whether two checkpoints hold the same state_dict (tensors compared exactly, other entries
    such as extra states with ==)."""

    def same(x: Any, y: Any) -> bool:
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            return (
                isinstance(x, torch.Tensor)
                and isinstance(y, torch.Tensor)
                and x.shape == y.shape
                and x.dtype == y.dtype
                and torch.equal(x, y)
            )
        if isinstance(x, dict) and isinstance(y, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, list | tuple) and isinstance(y, list | tuple):
            return len(x) == len(y) and all(same(u, v) for u, v in zip(x, y, strict=True))
        try:
            return bool(x == y)
        except Exception:  # noqa: BLE001 - incomparable: treat as different
            return False

    load = dict(map_location="cpu", weights_only=False, mmap=True)
    sa = torch.load(a, **load).get("state_dict", {})
    sb = torch.load(b, **load).get("state_dict", {})
    return same(sa, sb)


class LastCheckpoint(pl.Callback):
    """Keeps `<dirpath>/last.ckpt` fresh: every N optimizer steps, after every training epoch and
    at the end of training (the resume point of `ckpt_path=last`).

    Lightning's ModelCheckpoint takes either a step or an epoch trigger, not both, and two
    instances writing `last.ckpt` rename one of them `last-v1.ckpt`; hence this small callback.
    Writes go through the trainer, so the atomic CheckpointIO applies and only rank 0 writes.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int | None = 50) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(
                f"LastCheckpoint.every_n_train_steps must be >= 1 or null, got {every_n_train_steps}"
            )
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps
        # (global_step, where) of the last save: a batch-end save and the epoch-end save of the
        # same step hold different loop states (mid-epoch vs epoch finished), so both are written.
        self._saved_at: tuple[int, str] | None = None

    @property
    def path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def _save(self, trainer: pl.Trainer, where: str) -> None:
        if trainer.sanity_checking or self._saved_at == (trainer.global_step, where):
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_at = (trainer.global_step, where)

    def _share_with_best(self, trainer: pl.Trainer) -> None:
        """When ModelCheckpoint saved its best checkpoint at the step of the last validation-end
        save of last.ckpt and the weights are the same, keep one file under both names: the
        best becomes a hard link to last.ckpt (whose loop state is the resume point). Later
        saves replace last.ckpt atomically (a new file) and removing an old best only drops its
        name, so neither name ever changes what the other holds."""
        if not trainer.is_global_zero or self._saved_at is None:
            return
        step, where = self._saved_at
        if where != "validation" or not self.path.is_file():
            return
        for cb in trainer.checkpoint_callbacks:
            best = Path(getattr(cb, "best_model_path", "") or "")
            if getattr(cb, "save_top_k", None) != 1 or not best.is_file():
                continue
            if getattr(cb, "_last_global_step_saved", None) != step:
                continue  # its best is from another step
            if os.path.samefile(best, self.path) or not _same_weights(best, self.path):
                return
            tmp = best.with_name(f".{best.name}.link.tmp")
            try:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                os.link(self.path, tmp)
                os.replace(tmp, best)
            except OSError as err:  # another file system, no hard links: keep the copy
                log.info("%s kept as a copy of last.ckpt (%s)", best.name, err)
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            return

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._share_with_best(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = self.every_n_train_steps
        if n and trainer.global_step > 0 and trainer.global_step % n == 0:
            self._save(trainer, "batch")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Saved where Lightning's ModelCheckpoint saves epoch-end checkpoints, so the loop state
        # restores to "epoch finished" (on_train_epoch_end would replay one epoch too few).
        if trainer.state.fn == "fit":
            self._save(trainer, "validation")

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Preemption (SIGTERM: Lightning stops at the end of the current batch) or Ctrl-C: the
        # weights are those of a finished optimizer step, so they are saved as the resume point.
        # Any other exception may have left them half-updated: the last good checkpoint stays.
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if trainer.state.fn != "fit" or not isinstance(
            exception, SIGTERMException | KeyboardInterrupt
        ):
            return
        self._save(trainer, "interrupted")
        log.warning("interrupted (%s): saved %s", type(exception).__name__, self.path)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Right after a validation save of this step the state is the same: no second write.
        if self._saved_at != (trainer.global_step, "validation"):
            self._save(trainer, "end")
        self._share_with_best(trainer)
