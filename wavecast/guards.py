"""Skipping optimizer steps whose loss is NaN or inf instead of corrupting the weights."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive non-finite losses (the weights are still the last good ones)."""


class NonFiniteGuard:
    """Counts skipped steps; raises after `max_consecutive` non-finite losses in a row.

    Under DDP every rank must take the same decision (a rank that skips its backward while the
    others all-reduce would hang them), so `check` reduces the verdict over ranks with `reduce`
    (e.g. `trainer.strategy.reduce` with op "min").
    """

    def __init__(self, max_consecutive: int | None = 20) -> None:
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0

    def check(self, loss: torch.Tensor, name: str = "loss", reduce=None) -> bool:
        ok = torch.isfinite(loss.detach()).all().float()
        if reduce is not None:
            ok = reduce(ok)
        if bool(ok > 0.5):
            self.consecutive = 0
            return True
        self.skipped += 1
        self.consecutive += 1
        log.warning(
            "non-finite %s (%s): step skipped (%d skipped so far, %d in a row)",
            name,
            loss.detach().flatten()[:1].item(),
            self.skipped,
            self.consecutive,
        )
        if self.max_consecutive is not None and self.consecutive > self.max_consecutive:
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive non-finite {name} values (limit "
                f"model.max_nonfinite_skips={self.max_consecutive}); stopping. The weights and "
                "the last checkpoint are from the last finite step."
            )
        return False

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.consecutive = int(state.get("consecutive", 0))
