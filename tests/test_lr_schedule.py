"""Schedulers built from config partials get the run length filled in."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup

from wavecast.config import ConfigError
from wavecast.lr_schedule import build_lr_scheduler


def _opt() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_cosine_with_warmup_spans_the_run() -> None:
    opt = _opt()
    factory = functools.partial(get_cosine_schedule_with_warmup, num_warmup_steps=10)
    sched = build_lr_scheduler(factory, opt, total_steps=110)
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # Linear warm-up 0 .. 1 over 10 steps, then half a cosine down to 0 at step 110.
    assert lrs[5] == pytest.approx(0.5)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_given_length_wins_and_bad_lengths_are_named() -> None:
    given = functools.partial(
        get_cosine_schedule_with_warmup, num_warmup_steps=0, num_training_steps=4
    )
    opt = _opt()
    sched = build_lr_scheduler(given, opt, total_steps=1000)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    factory = functools.partial(get_cosine_schedule_with_warmup, num_warmup_steps=50)
    with pytest.raises(ConfigError, match=r"model.scheduler.num_warmup_steps=50 is not shorter"):
        build_lr_scheduler(factory, _opt(), total_steps=50, key="model.scheduler")
    with pytest.raises(ConfigError, match="needs the run length"):
        build_lr_scheduler(factory, _opt(), total_steps=None)
    # Schedulers without a run-length argument are built as they are.
    step = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3)
    assert isinstance(build_lr_scheduler(step, _opt(), None), torch.optim.lr_scheduler.StepLR)
