"""Test-only callbacks that train.py subprocesses import by `_target_` (fault injection)."""

from __future__ import annotations

import os

import lightning.pytorch as pl


class HardKillAtStep(pl.Callback):
    """Ends the process abruptly (no cleanup, no exception handlers) when global_step reaches `step`,
    like a kill -9 or a node failure."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os._exit(17)
