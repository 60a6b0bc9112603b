"""Learning-rate schedulers from a config partial, with the run length filled in.

Schedulers such as ``diffusers.optimization.get_cosine_schedule_with_warmup`` need
``num_training_steps``; a config should not have to repeat what ``trainer.max_steps`` /
``max_epochs`` already say. `build_lr_scheduler` fills it (and checks the warm-up is shorter than
the run), so one recipe works at any run length.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from wavecast.config import ConfigError


def _parameters(factory: Any) -> set[str]:
    fn = factory.func if isinstance(factory, functools.partial) else factory
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def run_length(module: Any) -> int | None:
    """Optimizer steps of the fit a LightningModule is attached to (None: not attached, no
    loader yet, or an unbounded run)."""
    if getattr(module, "_trainer", None) is None:
        return None
    try:
        total = module.trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 - no loader yet or an unbounded run: length unknown
        return None
    return int(total) if math.isfinite(total) else None


def build_lr_scheduler(
    factory: Callable[..., Any],
    optimizer: torch.optim.Optimizer,
    total_steps: int | None,
    key: str = "model.lr_scheduler",
) -> Any:
    """``factory(optimizer=..., [num_training_steps=total_steps])``.

    Args:
        factory: a partial of the scheduler (from Hydra, ``_partial_: true``).
        optimizer: the optimizer it steps.
        total_steps: steps the scheduler will be stepped in this run (None: unknown).
        key: the config key of the factory, for error messages.
    """
    given = dict(getattr(factory, "keywords", {}) or {})
    warmup = given.get("num_warmup_steps")
    if warmup is not None and total_steps is not None and int(warmup) >= total_steps:
        raise ConfigError(
            f"{key}.num_warmup_steps={warmup} is not shorter than the run ({total_steps} "
            "optimizer steps from trainer.max_steps / max_epochs): lower it or train longer"
        )
    kwargs: dict[str, Any] = {}
    if "num_training_steps" in _parameters(factory) and "num_training_steps" not in given:
        if total_steps is None:
            raise ConfigError(
                f"{key} needs the run length: set trainer.max_steps or trainer.max_epochs "
                f"(or {key}.num_training_steps)"
            )
        kwargs["num_training_steps"] = total_steps
    return factory(optimizer=optimizer, **kwargs)
