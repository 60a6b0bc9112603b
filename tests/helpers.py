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


class SignalAtStep(pl.Callback):
    """Sends this process `signum` (default SIGTERM, as a cluster scheduler preempting the job)
    once when global_step reaches `step`."""

    def __init__(self, step: int, signum: int = 15) -> None:
        self.step, self.signum, self.sent = step, signum, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.sent and trainer.global_step >= self.step:
            self.sent = True
            os.kill(os.getpid(), self.signum)
