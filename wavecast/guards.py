"""Guards against bad steps: non-finite losses are skipped (`NonFiniteGuard`), finite divergence
stops the run before it is saved (`DivergenceGuard`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch

log = logging.getLogger(__name__)


def all_finite(
    x: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> bool:
    """True when every value of ``x`` is finite; with ``reduce`` a min over ranks (e.g.
    ``trainer.strategy.reduce(., reduce_op="min")``), on every rank, so that all ranks take
    the same branch (a rank skipping its backward while the others all-reduce hangs them)."""
    ok = torch.isfinite(x.detach()).all().float()
    if reduce is not None:
        ok = reduce(ok)
    return bool(ok > 0.5)


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
        if all_finite(loss, reduce):
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


class DivergenceError(RuntimeError):
    """Raised when training has diverged with finite values (exploding weights or loss)."""


class DivergenceGuard(pl.Callback):
    """Stops a run whose weights or loss explode while staying finite, before anything saves them.

    A learning rate far too high (say 1e10) makes the first update finite and huge; the next
    losses are NaN and get skipped by `NonFiniteGuard`, and a short run would end "successfully"
    with garbage weights. After every optimizer step this checks the largest absolute weight
    (`max_abs_weight`) and, once `warmup_steps` losses are seen, the loss against `loss_factor` x
    the median of the last `window` losses. On divergence it raises `DivergenceError`: the run
    ends non-zero and the last checkpoint on disk stays the last good one. Put it before the
    checkpoint callbacks (it runs in `on_train_batch_end`, as the periodic last.ckpt does).
    """

    def __init__(
        self,
        max_abs_weight: float | None = 1.0e4,
        loss_factor: float | None = 1.0e3,
        window: int = 50,
        warmup_steps: int = 20,
    ) -> None:
        self.max_abs_weight = max_abs_weight
        self.loss_factor = loss_factor
        self.window = int(window)
        self.warmup_steps = int(warmup_steps)
        self._losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.max_abs_weight is not None:
            params = [p.detach() for p in pl_module.parameters() if p.requires_grad]
            if params:
                norms = torch._foreach_norm(params, float("inf"))
                worst = float(torch.stack([n.float() for n in norms]).max())
                if not worst <= self.max_abs_weight:  # NaN-safe
                    raise DivergenceError(
                        f"training diverged at step {step}: a weight reached {worst:.3g} "
                        f"(limit {self.max_abs_weight:g}, callbacks.divergence_guard."
                        "max_abs_weight); lower the learning rate. The last checkpoint on disk is "
                        "from before."
                    )
        loss = _loss_value(outputs, trainer)
        if self.loss_factor is None or loss is None or not math.isfinite(loss):
            return
        if len(self._losses) >= self.warmup_steps:
            median = sorted(self._losses)[len(self._losses) // 2]
            if abs(loss) > self.loss_factor * max(abs(median), 1e-12):
                raise DivergenceError(
                    f"training diverged at step {step}: loss {loss:.3g} is over "
                    f"{self.loss_factor:g} x the recent median {median:.3g} "
                    "(callbacks.divergence_guard.loss_factor); lower the learning rate. The last "
                    "checkpoint on disk is from before."
                )
        self._losses = (self._losses + [loss])[-self.window :]


def _loss_value(outputs: Any, trainer: pl.Trainer) -> float | None:
    """The step's loss: the training_step output, or the logged train/loss (manual optimisation)."""
    value = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if value is None:
        value = trainer.callback_metrics.get("train/loss")
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach())
    return None
