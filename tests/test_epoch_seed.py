"""EpochSeed: each epoch's random streams are a function of (seed, epoch, rank) alone."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import torch

from wavecast.callbacks import EpochSeed


def _draws(seed: int, epoch: int, rank: int) -> tuple[float, float, float]:
    """Python, NumPy and torch draws right after the epoch start, from a disturbed state."""
    random.random(), np.random.rand(), torch.rand(3)  # whatever ran before must not matter
    trainer = SimpleNamespace(current_epoch=epoch, global_rank=rank)
    EpochSeed(seed).on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_same_seed_epoch_and_rank_give_the_same_streams() -> None:
    first = _draws(3, 2, 1)
    torch.manual_seed(12345)
    np.random.seed(6789)
    random.seed(42)
    assert _draws(3, 2, 1) == first  # a resumed run redraws what the uninterrupted one drew


def test_streams_depend_on_the_epoch_the_rank_and_the_seed() -> None:
    base = _draws(3, 2, 0)
    for other in (_draws(3, 3, 0), _draws(3, 2, 1), _draws(4, 2, 0)):
        # every generator differs: a new epoch reshuffles, DDP ranks draw different noise
        assert all(a != b for a, b in zip(base, other)), (base, other)
    # all (epoch, rank) pairs of a small 4-rank, 4-epoch run are distinct streams
    streams = {_draws(3, e, r)[2] for e in range(4) for r in range(4)}
    assert len(streams) == 16
