"""Checkpoints, in one place: write them atomically, read them with named errors, and check
that one fits the model before a single weight is copied.

Write: `atomic_torch_save` (temp file in the same folder, fsync, `os.replace`: a crash or a full
disk mid-write leaves the previous file intact; Lightning's `TorchCheckpointIO` writes in place),
`AtomicCheckpointIO` (the trainer's plugin), `LastCheckpoint` (the `last.ckpt` policy).

Read: `check_checkpoint_file` (a torn file -> `CheckpointFileError` naming it), `load_checkpoint`
(a file named by a config key -> its dict, or a `ConfigError` naming key and file).

Fit: a LightningModule's `on_load_checkpoint` refuses another model's checkpoint
(`check_model_kind`), another network config (`check_config`, `config_differences`) and state
dicts whose keys or shapes differ (`check_state_dict`, `state_dict_mismatch`), all with a
`ConfigError` that names the config key to change.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from wavecast.config import ConfigError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- write
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


def _same_weights(a: Path, b: Path) -> bool:
    """Whether two checkpoints hold the same state_dict (tensors compared exactly, other entries
    such as extra states with ==)."""

    def same(x: Any, y: Any) -> bool:
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            return (
                isinstance(x, torch.Tensor)
                and isinstance(y, torch.Tensor)
                and x.shape == y.shape
                and x.dtype == y.dtype
                and torch.equal(x, y)
            )
        if isinstance(x, dict) and isinstance(y, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, list | tuple) and isinstance(y, list | tuple):
            return len(x) == len(y) and all(same(u, v) for u, v in zip(x, y, strict=True))
        try:
            return bool(x == y)
        except Exception:  # noqa: BLE001 - incomparable: treat as different
            return False

    load = dict(map_location="cpu", weights_only=False, mmap=True)
    sa = torch.load(a, **load).get("state_dict", {})
    sb = torch.load(b, **load).get("state_dict", {})
    return same(sa, sb)


class LastCheckpoint(pl.Callback):
    """Keeps `<dirpath>/last.ckpt` fresh: every N optimizer steps, after every training epoch and
    at the end of training (the resume point of `ckpt_path=last`).

    Lightning's ModelCheckpoint takes either a step or an epoch trigger, not both, and two
    instances writing `last.ckpt` rename one of them `last-v1.ckpt`; hence this small callback.
    Writes go through the trainer, so the atomic CheckpointIO applies and only rank 0 writes.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int | None = 50) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(
                f"LastCheckpoint.every_n_train_steps must be >= 1 or null, got {every_n_train_steps}"
            )
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps
        # (global_step, where) of the last save: a batch-end save and the epoch-end save of the
        # same step hold different loop states (mid-epoch vs epoch finished), so both are written.
        self._saved_at: tuple[int, str] | None = None

    @property
    def path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def _save(self, trainer: pl.Trainer, where: str) -> None:
        if trainer.sanity_checking or self._saved_at == (trainer.global_step, where):
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_at = (trainer.global_step, where)

    def _share_with_best(self, trainer: pl.Trainer) -> None:
        """When ModelCheckpoint saved its best checkpoint at the step of the last validation-end
        save of last.ckpt and the weights are the same, keep one file under both names: the
        best becomes a hard link to last.ckpt (whose loop state is the resume point). Later
        saves replace last.ckpt atomically (a new file) and removing an old best only drops its
        name, so neither name ever changes what the other holds."""
        if not trainer.is_global_zero or self._saved_at is None:
            return
        step, where = self._saved_at
        if where != "validation" or not self.path.is_file():
            return
        for cb in trainer.checkpoint_callbacks:
            best = Path(getattr(cb, "best_model_path", "") or "")
            if getattr(cb, "save_top_k", None) != 1 or not best.is_file():
                continue
            if getattr(cb, "_last_global_step_saved", None) != step:
                continue  # its best is from another step
            if os.path.samefile(best, self.path) or not _same_weights(best, self.path):
                return
            tmp = best.with_name(f".{best.name}.link.tmp")
            try:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                os.link(self.path, tmp)
                os.replace(tmp, best)
            except OSError as err:  # another file system, no hard links: keep the copy
                log.info("%s kept as a copy of last.ckpt (%s)", best.name, err)
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            return

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._share_with_best(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = self.every_n_train_steps
        if n and trainer.global_step > 0 and trainer.global_step % n == 0:
            self._save(trainer, "batch")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Saved where Lightning's ModelCheckpoint saves epoch-end checkpoints, so the loop state
        # restores to "epoch finished" (on_train_epoch_end would replay one epoch too few).
        if trainer.state.fn == "fit":
            self._save(trainer, "validation")

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Preemption (SIGTERM: Lightning stops at the end of the current batch) or Ctrl-C: the
        # weights are those of a finished optimizer step, so they are saved as the resume point.
        # Any other exception may have left them half-updated: the last good checkpoint stays.
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if trainer.state.fn != "fit" or not isinstance(
            exception, SIGTERMException | KeyboardInterrupt
        ):
            return
        self._save(trainer, "interrupted")
        log.warning("interrupted (%s): saved %s", type(exception).__name__, self.path)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Right after a validation save of this step the state is the same: no second write.
        if self._saved_at != (trainer.global_step, "validation"):
            self._save(trainer, "end")
        self._share_with_best(trainer)


# ----------------------------------------------------------------------------------------- read
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


def load_checkpoint(
    path: str | os.PathLike, what: str, weights_only: bool | None = None
) -> Mapping[str, Any]:
    """The dict stored at ``path`` (on the CPU); ``what`` names the file in errors (a config key
    such as ``model.init_ckpt``).

    weights_only: None tries the safe loader first and falls back to full unpickling (Lightning
    checkpoints may pickle hyper-parameters; the file is the user's own, named in the config);
    True / False use that loader only.
    """
    path = Path(str(path))
    if not path.is_file():
        raise ConfigError(f"{what}: file '{path}' does not exist")
    try:
        if weights_only is None:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - any refusal of the safe loader: try the full one
                log.info("%s: %s needs full unpickling (weights_only=False)", what, path)
                obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 - report any load failure with the file name
        raise ConfigError(f"{what}: '{path}' is not a torch checkpoint ({e})") from e
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{what}: '{path}' holds a {type(obj).__name__}, not a dict")
    return obj


def checkpoint_source(module: pl.LightningModule) -> str:
    """How errors name the checkpoint a module is loading: the trainer's ckpt_path if known."""
    return str(getattr(module._trainer, "ckpt_path", None) or "checkpoint")


# ------------------------------------------------------------------------------------------ fit
def check_model_kind(meta: Mapping[str, Any], expected: str, label: str, source: str) -> None:
    """Refuse a checkpoint whose ``wavecast.model`` tag names another model (an untagged one
    passes: the state-dict check decides). label: how the error names ours ("STDiff")."""
    model = meta.get("model")
    if model not in (None, expected):
        raise ConfigError(
            f"{source} holds a '{model}' model, not {label}: wrong checkpoint or experiment"
        )


def config_differences(
    ours: Mapping[str, Any], theirs: Mapping[str, Any], ignore: Iterable[str] = ()
) -> dict[str, tuple[Any, Any]]:
    """key -> (checkpoint's value, ours) for the keys both configs hold with different values."""
    skip = set(ignore)
    return {
        k: (theirs[k], ours[k])
        for k in sorted(ours.keys() & theirs.keys())
        if k not in skip and theirs[k] != ours[k]
    }


def check_config(diff: Mapping[str, tuple[Any, Any]], message: str, prefix: str) -> None:
    """Raise ``ConfigError(message + ": " + "prefix.key: checkpoint a vs config b, ...")`` when
    ``diff`` (from `config_differences`) is not empty."""
    if diff:
        raise ConfigError(
            f"{message}: "
            + ", ".join(
                f"{prefix}.{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diff.items()
            )
        )


@dataclass
class StateMismatch:
    """How a checkpoint's state dict differs from a model's: keys only ours has (missing), only
    theirs has (unexpected), and ``"key: checkpoint (shape) vs model (shape)"`` entries."""

    missing: list[str]
    unexpected: list[str]
    shape: list[str]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shape)

    def summary(self, n: int = 6) -> str:
        """``missing: a, b (+3 more); unexpected: ...; shape mismatch: ...`` (n names each)."""
        parts = []
        for what, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape mismatch", self.shape),
        ):
            if keys:
                more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
                parts.append(f"{what}: {', '.join(keys[:n])}{more}")
        return "; ".join(parts)


def state_dict_mismatch(
    ours: Mapping[str, Any], theirs: Mapping[str, Any], prefix: str = ""
) -> StateMismatch:
    """Compare two state dicts by keys and tensor shapes; names are reported with ``prefix``."""
    bad = [
        f"{prefix}{k}: checkpoint {tuple(theirs[k].shape)} vs model {tuple(v.shape)}"
        for k, v in ours.items()
        if isinstance(v, torch.Tensor) and k in theirs and tuple(theirs[k].shape) != tuple(v.shape)
    ]
    return StateMismatch(
        missing=[prefix + k for k in sorted(ours.keys() - theirs.keys())],
        unexpected=[prefix + k for k in sorted(theirs.keys() - ours.keys())],
        shape=bad,
    )


def check_state_dict(
    ours: Mapping[str, Any],
    theirs: Mapping[str, Any],
    source: str,
    where: str,
    prefix: str = "",
    hint: str = "",
) -> None:
    """Raise ``ConfigError`` naming ``source`` and the config key ``where`` unless ``theirs``
    has exactly our keys with our shapes (checked before anything is copied)."""
    mismatch = state_dict_mismatch(ours, theirs, prefix)
    if mismatch:
        raise ConfigError(
            f"{source} does not fit the network of {where}: {mismatch.summary()}{hint}"
        )
