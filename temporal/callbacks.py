"""AlphaWarmup: ramp the TemporalModule's alpha over the first optimizer steps, DDP-safe.

During the warmup (trainer.global_step < steps) the callback sets `alpha_override` on every
TemporalModule it finds, each training batch; the module then uses the ramp's value as alpha
while alpha_param stays in the autograd graph (see `temporal.temporal_module`), so
`requires_grad` is never toggled and DDP never reports unused parameters. When the warmup ends
it clears the override and writes logit(target) into alpha_param (`set_alpha`), so the learned
alpha takes over from the ramp's last value without a jump. Every rank runs the same
deterministic logic from the same global_step, so all DDP ranks hold the same alpha.

The effective alpha is logged every training step as `alpha/value` (one key per module,
`alpha/value/<name>`, when several are found).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning.pytorch as pl
import torch

from temporal.temporal_module import OVERRIDE_GRAD_MODES, TemporalModule

RAMP_MODES = ("linear", "cosine")


def alpha_ramp(step: int, steps: int, start: float, target: float, mode: str = "linear") -> float:
    """Alpha at optimizer step `step` of a warmup from `start` (step 0) to `target` (step `steps`)."""
    if steps <= 0:
        return target
    frac = min(max(step / steps, 0.0), 1.0)
    if mode == "cosine":
        frac = 0.5 * (1.0 - math.cos(math.pi * frac))
    elif mode != "linear":
        raise ValueError(f"alpha_ramp: mode must be one of {RAMP_MODES}, got {mode!r}")
    return start + (target - start) * frac


class AlphaWarmup(pl.Callback):
    """Alpha warmup for the TemporalModule(s) under `pl_module.<module_attr>`.

    Args:
        steps: warmup length in optimizer steps (trainer.global_step); 0 disables the warmup
            (alpha is only logged).
        start: alpha at step 0, in [0, 1).
        target: alpha at the end of the warmup, in (0, 1); written into alpha_param then.
        mode: "linear" or "cosine" ramp.
        module_attr: dotted attribute path on the LightningModule; either a TemporalModule or a
            module containing some (e.g. a MultiScaleTemporalFusion).
        grad: what alpha_param receives during the warmup, "zero" or "straight_through"
            (see TemporalModule).
    """

    def __init__(
        self,
        steps: int = 5000,
        start: float = 0.1,
        target: float = 0.8,
        mode: str = "linear",
        module_attr: str = "temporal",
        grad: str = "zero",
        log_key: str = "alpha/value",
    ) -> None:
        if steps < 0:
            raise ValueError(f"AlphaWarmup.steps must be >= 0, got {steps}")
        if not 0.0 <= start < 1.0:
            raise ValueError(f"AlphaWarmup.start must be in [0, 1), got {start}")
        if not 0.0 < target < 1.0:
            raise ValueError(f"AlphaWarmup.target must be in (0, 1), got {target}")
        if mode not in RAMP_MODES:
            raise ValueError(f"AlphaWarmup.mode must be one of {RAMP_MODES}, got {mode!r}")
        if grad not in OVERRIDE_GRAD_MODES:
            raise ValueError(f"AlphaWarmup.grad must be one of {OVERRIDE_GRAD_MODES}, got {grad!r}")
        self.steps = int(steps)
        self.start = float(start)
        self.target = float(target)
        self.mode = mode
        self.module_attr = module_attr
        self.grad = grad
        self.log_key = log_key
        # Lightning overwrites `log` / `log_dict` on callbacks: state lives in other names.
        self.handed_over = False
        self._warmup_seen = False

    # ---------------------------------------------------------------- helpers
    def value_at(self, step: int) -> float:
        return alpha_ramp(step, self.steps, self.start, self.target, self.mode)

    def temporal_modules(self, pl_module: pl.LightningModule) -> dict[str, TemporalModule]:
        obj: Any = pl_module
        for part in self.module_attr.split("."):
            if not hasattr(obj, part):
                raise AttributeError(
                    f"AlphaWarmup.module_attr={self.module_attr!r}: {type(obj).__name__} has no "
                    f"attribute {part!r}"
                )
            obj = getattr(obj, part)
        if isinstance(obj, TemporalModule):
            return {"": obj}
        found = (
            {n: m for n, m in obj.named_modules() if isinstance(m, TemporalModule)}
            if isinstance(obj, torch.nn.Module)
            else {}
        )
        if not found:
            raise TypeError(
                f"AlphaWarmup.module_attr={self.module_attr!r} is a {type(obj).__name__} with no "
                "TemporalModule inside"
            )
        return found

    def _apply(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, in_batch: bool = True
    ) -> dict[str, float]:
        step = trainer.global_step
        modules = self.temporal_modules(pl_module)
        if self.steps > 0 and step < self.steps:
            self._warmup_seen = self._warmup_seen or in_batch
            value = self.value_at(step)
            for m in modules.values():
                m.alpha_override = value
                m.alpha_override_grad = self.grad
            return {name: value for name in modules}
        for m in modules.values():
            m.alpha_override = None
        if self.steps > 0 and not self.handed_over:
            if self._warmup_seen or step == self.steps:
                for m in modules.values():
                    m.set_alpha(self.target)
            else:
                warnings.warn(
                    f"AlphaWarmup: training resumed at step {step}, past the {self.steps}-step "
                    "warmup, without the callback's state; keeping the checkpoint's alpha",
                    stacklevel=2,
                )
            self.handed_over = True
        return {name: float(m.alpha.detach()) for name, m in modules.items()}

    # ---------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # So that the sanity validation already sees the ramp. Lightning restores global_step
        # only after on_fit_start, so this may be step 0 of a resumed run: the first training
        # batch sets the right value (or clears the override past the warmup).
        if self.steps > 0 and trainer.global_step < self.steps:
            self._apply(trainer, pl_module, in_batch=False)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        values = self._apply(trainer, pl_module)
        for name, value in values.items():
            key = self.log_key if len(values) == 1 else f"{self.log_key}/{name}"
            pl_module.log(key, value, on_step=True, on_epoch=False, batch_size=1)

    def state_dict(self) -> dict[str, Any]:
        return {"handed_over": self.handed_over}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.handed_over = bool(state_dict.get("handed_over", False))
