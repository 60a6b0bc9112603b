"""Optional hooks a LightningModule may offer to `wavecast.run` and the callbacks.

None is required: a model without a hook is run without that step. They are Protocols (not a
base class) so that the shared package names what it calls without importing any model
package; `isinstance(model, ChecksData)` is true for any object with that method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
from torch import Tensor


@runtime_checkable
class ChecksData(Protocol):
    """Checks, before training, that the data module fits the model (raises ConfigError)."""

    def check_data(self, datamodule: pl.LightningDataModule) -> None: ...


@runtime_checkable
class CompilesNetworks(Protocol):
    """`torch.compile`s its networks in place (`compile=true` in the config)."""

    def compile_networks(self) -> None: ...


@runtime_checkable
class RunsAnalyses(Protocol):
    """Takes the names of extra analyses to run during test (`analyses=[...]` in eval)."""

    analyses: list[str]


@runtime_checkable
class ReportsEval(Protocol):
    """Adds metrics of its own (not logged through Lightning) to eval's metrics.json."""

    def eval_report(self) -> dict[str, Any]: ...


@runtime_checkable
class LogsMedia(Protocol):
    """Media to log for a validation batch: name -> videos [B, C, T, H, W] or images
    [B, C, H, W], values in [-1, 1] (`wavecast.callbacks.MediaLogger`)."""

    def media_from_batch(self, batch: Mapping[str, Any]) -> dict[str, Tensor]: ...
