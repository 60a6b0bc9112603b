"""EMA of the WF-VAE generator: Lightning's `EMAWeightAveraging`, restricted to `net`.

The reference trains with `--ema --ema_decay 0.999`: a shadow copy of the generator's trainable
weights, updated after every generator step and used for validation. Lightning's
`EMAWeightAveraging` does the averaging (`torch.optim.swa_utils.AveragedModel` with
`get_ema_avg_fn`), the swap for validation and the checkpoint layout; used as is on the VAE-GAN
it gets three things wrong, which is all this subclass changes:

1. It averages every parameter and buffer of the LightningModule, the discriminator included
   (a second copy of it, and at the end of `fit` the live discriminator is overwritten by its
   average). Here only `pl_module.<module_attr>` (default `net`) is averaged.
2. It counts `trainer.global_step`, which with manual optimisation counts the discriminator's
   steps too: a discriminator-only batch would average unchanged generator weights again, and
   `update_every_n_steps` / `update_starting_at_step` would mean something else after
   `disc_start`. Here they count `pl_module.<step_attr>` (default `generator_steps`; the trainer's
   global step for modules without it).
3. After a fit, `trainer.test(ckpt_path=...)` in the same process (train.py with `test: true`)
   reloads the raw weights from `current_model_state`, so the test metrics would not be those of
   the averaged weights. Here a checkpoint loaded outside `fit` keeps its `state_dict`, which
   holds the averaged weights.

Checkpoint layout (same keys as the library's): `state_dict` is the module's state with the
`net.*` entries replaced by their averages (so eval.py and `model.init_ckpt` get the EMA
weights), `current_model_state` the raw module state (for resuming), `averaging_state` the
`AveragedModel`'s counter.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import nn
from torch.optim.swa_utils import AveragedModel

from wavecast.config import ConfigError


class GeneratorEMA(EMAWeightAveraging):
    """EMA of one submodule of the LightningModule (the generator), counted in its steps.

    Args:
        decay: EMA decay per update (reference 0.999).
        update_every_n_steps: update after every n-th generator step.
        update_starting_at_step: first generator step (0-based) that updates the average.
        module_attr: attribute of the LightningModule holding the averaged network.
        step_attr: integer attribute counting the steps that change it (falls back to
            `trainer.global_step` when the module has none).
        device: where the averaged copy lives (default: the module's device).
        use_buffers: average the network's buffers too (the library's default).
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        module_attr: str = "net",
        step_attr: str = "generator_steps",
        device: str | None = None,
        use_buffers: bool = True,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"callbacks.ema.decay must be in [0, 1), got {decay}")
        super().__init__(
            device=device,
            use_buffers=use_buffers,
            decay=decay,
            update_every_n_steps=update_every_n_steps,
            update_starting_at_step=update_starting_at_step,
        )
        self.decay = float(decay)
        self.module_attr = module_attr
        self.step_attr = step_attr
        # Raw weights at the end of fit (the live network then holds the average): checkpoints
        # written after that (ModelCheckpoint's save_last at train end) still resume from them.
        self._raw_after_fit: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ helpers
    def _target(self, pl_module: pl.LightningModule) -> nn.Module:
        target = getattr(pl_module, self.module_attr, None)
        if not isinstance(target, nn.Module):
            raise ConfigError(
                f"callbacks.ema.module_attr={self.module_attr!r}: {type(pl_module).__name__} has "
                "no such submodule"
            )
        return target

    def _steps(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
        return int(getattr(pl_module, self.step_attr, trainer.global_step))

    @property
    def _prefix(self) -> str:
        return f"{self.module_attr}."

    @property
    def average_module(self) -> nn.Module | None:
        """The averaged copy of the network (None outside `fit`)."""
        return None if self._average_model is None else self._average_model.module

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._raw_after_fit = None
        if stage != "fit":
            # Validate / test use the weights they are given (a checkpoint's averaged ones);
            # an average left over from an earlier fit in this process must not be swapped in.
            self._average_model = None
            return
        device = self._device or pl_module.device
        self._average_model = AveragedModel(
            model=self._target(pl_module), device=device, use_buffers=self._use_buffers,
            **self._kwargs,
        )  # fmt: skip

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        steps = self._steps(trainer, pl_module)
        if steps > self._latest_update_step and self.should_update(step_idx=steps - 1):
            assert self._average_model is not None
            self._average_model.update_parameters(self._target(pl_module))
            self._latest_update_step = steps

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, self._target(pl_module))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        target = self._target(pl_module)
        self._raw_after_fit = {k: v.detach().clone() for k, v in target.state_dict().items()}
        super().on_train_end(trainer, target)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        super().on_validation_epoch_start(trainer, self._target(pl_module))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        super().on_validation_epoch_end(trainer, self._target(pl_module))

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._average_model is None:
            return
        raw = checkpoint["state_dict"]
        if self._raw_after_fit is not None:
            raw = {**raw, **{self._prefix + k: v for k, v in self._raw_after_fit.items()}}
        averaged = self._average_model.state_dict()
        state = dict(raw)
        for name, value in averaged.items():
            if name.startswith("module."):
                key = self._prefix + name[len("module.") :]
                if key not in raw:
                    raise RuntimeError(f"GeneratorEMA: averaged entry {key} is not in the module")
                state[key] = value
        checkpoint["current_model_state"] = raw
        checkpoint["state_dict"] = state
        checkpoint["averaging_state"] = {
            k: v for k, v in averaged.items() if not k.startswith("module.")
        }

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._average_model is None:
            return  # not fitting: `state_dict` (the averaged weights) is already loaded
        if "current_model_state" in checkpoint and "averaging_state" in checkpoint:
            n = len(self._prefix)
            averaged = {
                "module." + k[n:]: v
                for k, v in checkpoint["state_dict"].items()
                if k.startswith(self._prefix)
            }
            averaged |= checkpoint["averaging_state"]
            self._average_model.load_state_dict(averaged)
            pl_module.load_state_dict(checkpoint["current_model_state"])
            return
        rank_zero_warn(
            "GeneratorEMA: the checkpoint holds no EMA state; the average restarts from the "
            "loaded weights"
        )
        with torch.no_grad():
            self._average_model.module.load_state_dict(self._target(pl_module).state_dict())
            self._average_model.n_averaged.zero_()
