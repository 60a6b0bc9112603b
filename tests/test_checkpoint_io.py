"""A checkpoint write that fails half-way (disk full, crash) leaves the previous one valid."""

import errno
import os

import pytest
import torch

from wavecast import checkpoint_io
from wavecast.checkpoint_io import AtomicCheckpointIO, atomic_torch_save


def test_atomic_save_roundtrip(tmp_path):
    path = tmp_path / "ckpts" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.arange(5.0)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(5.0))
    assert os.listdir(path.parent) == ["last.ckpt"]


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": torch.tensor(1)}, path)
    before = path.read_bytes()

    def full_disk_save(obj, f):
        f.write(b"partial bytes of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", full_disk_save)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["step"].item() == 1
    # No temp file left behind.
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]


def test_truncated_checkpoint_is_named(tmp_path):
    from wavecast.checkpoint_io import CheckpointFileError, check_checkpoint_file

    path = tmp_path / "last.ckpt"
    atomic_torch_save({"w": torch.randn(1000)}, path)
    check_checkpoint_file(path)  # complete: passes
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFileError, match=r"last\.ckpt: not a readable checkpoint"):
        check_checkpoint_file(path)


def test_leftover_temp_file_of_a_killed_write_is_removed(tmp_path):
    path = tmp_path / "last.ckpt"
    stale = tmp_path / ".last.ckpt.abc123.tmp"
    stale.write_bytes(b"")  # what kill -9 during a write leaves
    other = tmp_path / ".best.ckpt.abc123.tmp"  # another file's write: not ours to remove
    other.write_bytes(b"")
    atomic_torch_save({"x": 1}, path)
    assert not stale.exists() and other.exists()
    assert torch.load(path, weights_only=False) == {"x": 1}
