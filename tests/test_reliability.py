"""Checkpoint writes under real failures: kill -9 in the middle of a write, a file-size limit.

The other scenarios of a cluster user live beside: SIGTERM / SIGINT mid-epoch
(test_preemption.py), resume at epoch boundaries and after periodic saves (test_resume.py),
sweeps with failing trials (test_sweeps.py), a diverging run (test_divergence.py), truncated
checkpoints and bad values at start-up (test_checkpoints.py, test_startup_checks.py).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.conftest import ROOT
from wavecast.checkpoints import atomic_torch_save, check_checkpoint_file

_WRITER = """
import sys, torch
from wavecast.checkpoints import atomic_torch_save
atomic_torch_save({"w": torch.ones(int(sys.argv[2]))}, sys.argv[1])
"""


def _writer(path: Path, numel: int, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(numel)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs,
    )  # fmt: skip


def test_kill_9_during_a_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"w": torch.zeros(10)}, path)
    proc = _writer(path, 200_000_000)  # 800 MB: seconds to write
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once the temp file has data in it
        tmp = list(tmp_path.glob(".last.ckpt.*.tmp"))
        if tmp and tmp[0].stat().st_size > 1_000_000:
            break
        time.sleep(0.01)
    else:
        proc.kill()
        raise AssertionError("the writer never started writing")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    check_checkpoint_file(path)
    assert torch.equal(torch.load(path, weights_only=False)["w"], torch.zeros(10))
    assert list(tmp_path.glob(".last.ckpt.*.tmp"))  # the dead write's leftover ...
    atomic_torch_save({"w": torch.ones(3)}, path)
    assert not list(tmp_path.glob(".last.ckpt.*.tmp"))  # ... removed by the next write


def test_file_size_limit_fails_the_write_and_keeps_the_previous(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"w": torch.zeros(10)}, path)

    def limit() -> None:  # in the child: files over 1 MB fail with EFBIG, like a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    proc = _writer(path, 5_000_000, preexec_fn=limit)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert b"File too large" in err or b"EFBIG" in err or b"errno 27" in err.lower()
    assert torch.equal(torch.load(path, weights_only=False)["w"], torch.zeros(10))
    assert not list(tmp_path.glob(".last.ckpt.*.tmp"))
    assert os.listdir(tmp_path) == ["last.ckpt"]
