"""Checkpoint writing that never leaves a torn file behind.

Lightning's default `TorchCheckpointIO` writes straight to the destination: a crash or a full disk
in the middle of `last.ckpt` destroys the previous good one. Here the checkpoint goes to a temporary
file in the same folder, is flushed to disk, and only then renamed over the destination
(`os.replace` is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)` through a temp file + fsync + rename; cleans up on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A process killed mid-write (kill -9, node failure) leaves its temp file: one writer per
    # path (rank 0), so any left over belongs to a dead write.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # A full disk or an interrupt: drop the partial file, keep the previous checkpoint.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable.
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class CheckpointFileError(ValueError):
    """A checkpoint file that cannot be read (truncated, corrupt, not a torch checkpoint)."""


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """Fail with the file's name if it is not a complete torch checkpoint (a zip archive whose
    central directory, written last, is intact), before Lightning's loader fails obscurely."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as zf:
            zf.infolist()
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointFileError(
            f"{path}: not a readable checkpoint ({size} bytes; truncated or corrupt: {err}). "
            "Use an earlier checkpoint of the run (checkpoints/best-*.ckpt) or start afresh."
        ) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose `save_checkpoint` is atomic (see module docstring)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"AtomicCheckpointIO does not take storage_options (got {storage_options!r})"
            )
        atomic_torch_save(checkpoint, path)
