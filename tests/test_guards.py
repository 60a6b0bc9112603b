import pytest
import torch

from wavecast.guards import NonFiniteGuard, NonFiniteLossError


def test_guard_counts_and_stops():
    guard = NonFiniteGuard(max_consecutive=2)
    assert guard.check(torch.tensor(1.0))
    assert not guard.check(torch.tensor(float("nan")))
    assert not guard.check(torch.tensor(float("inf")))
    assert guard.skipped == 2 and guard.consecutive == 2
    assert guard.check(torch.tensor(0.5))  # a finite loss resets the run of failures
    assert guard.consecutive == 0
    guard.check(torch.tensor(float("nan")))
    guard.check(torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLossError, match="max_nonfinite_skips=2"):
        guard.check(torch.tensor(float("nan")))
    assert guard.skipped == 5


def test_guard_uses_reduced_verdict():
    """Under DDP a rank with a finite loss must still skip when another rank's loss is NaN."""
    guard = NonFiniteGuard(None)
    assert not guard.check(torch.tensor(1.0), reduce=lambda ok: ok * 0)
    assert guard.skipped == 1


def test_guard_state_roundtrip():
    guard = NonFiniteGuard(3)
    guard.check(torch.tensor(float("nan")))
    other = NonFiniteGuard(3)
    other.load_state_dict(guard.state_dict())
    assert other.skipped == 1 and other.consecutive == 1
