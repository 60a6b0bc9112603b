"""AlphaWarmup in a real (single-device, in-process) Lightning fit, checked from the CSV logger."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from temporal.callbacks import AlphaWarmup, alpha_ramp
from temporal.temporal_module import MultiScaleTemporalFusion, TemporalModule


class _TinyFusion(pl.LightningModule):
    def __init__(self, alpha_init: float = 0.3) -> None:
        super().__init__()
        self.temporal = TemporalModule(2, alpha_init=alpha_init, refiner_hidden=4)
        self.alpha_param_trace: list[float] = []
        self.requires_grad_trace: list[bool] = []

    def training_step(self, batch, batch_idx):
        z_prev, z_cur, target = batch
        self.alpha_param_trace.append(float(self.temporal.alpha_param.detach()))
        self.requires_grad_trace.append(self.temporal.alpha_param.requires_grad)
        z_fused, _, aux = self.temporal(z_prev, z_cur)
        # what the forward really used, logged by the model itself
        self.log("alpha/used", aux["alpha"].detach(), on_step=True, on_epoch=False)
        return ((z_fused - target) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


def _loader(n: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(n, 2, 4, 4, generator=g) for _ in range(3)]
    data[2] = data[0]  # target = previous frame: the loss pulls alpha up
    return DataLoader(TensorDataset(*data), batch_size=2)


def _fit(
    tmp_path: Path, model: pl.LightningModule, warmup: AlphaWarmup, max_steps: int
) -> list[dict]:
    trainer = _trainer(tmp_path, "alpha", max_steps, warmup)
    trainer.fit(model, _loader())
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def test_linear_ramp_logged_then_learned_alpha_takes_over(tmp_path: Path) -> None:
    steps, start, target = 4, 0.1, 0.5
    model = _TinyFusion(alpha_init=0.3)
    init_param = float(model.temporal.alpha_param.detach())
    rows = _fit(tmp_path, model, AlphaWarmup(steps=steps, start=start, target=target), max_steps=7)
    logged = {int(r["step"]): float(r["alpha/value"]) for r in rows if r.get("alpha/value")}
    used = {int(r["step"]): float(r["alpha/used"]) for r in rows if r.get("alpha/used")}
    assert sorted(logged) == list(range(7))
    # 0.1 -> 0.5 over 4 steps, by hand: +0.1 per step
    for s, expected in enumerate([0.1, 0.2, 0.3, 0.4]):
        assert logged[s] == pytest.approx(expected, abs=1e-6), s
        assert used[s] == pytest.approx(expected, abs=1e-6), s
    # handover at step 4, the end of the warmup: the learned alpha starts at the target ...
    assert logged[steps] == pytest.approx(target, abs=1e-6)
    assert used[steps] == pytest.approx(target, abs=1e-6)
    # ... and step 4 already trains it: at step 5 it has moved (the loss pulls it up). A warmup
    # one step too long would still hold the ramp's last value, 0.5, at step 5.
    assert logged[steps + 1] > target + 1e-3
    assert logged[6] > logged[5]
    assert used == pytest.approx(logged, abs=1e-6)
    # alpha_param got zero gradient during the warmup (Adam leaves it unchanged) and
    # requires_grad was never toggled
    assert model.alpha_param_trace[:steps] == pytest.approx([init_param] * steps, abs=0)
    assert all(model.requires_grad_trace)
    assert model.temporal.alpha_override is None


def test_cosine_ramp_and_multiple_modules(tmp_path: Path) -> None:
    class _Multi(_TinyFusion):
        def __init__(self) -> None:
            super().__init__()
            self.fusion = MultiScaleTemporalFusion({"a": 2, "b": 2}, num_frames=2, refiner=False)

    model = _Multi()
    warmup = AlphaWarmup(steps=3, start=0.0, target=0.6, mode="cosine", module_attr="fusion")
    rows = _fit(tmp_path, model, warmup, max_steps=3)
    for key in ("alpha/value/fusions.a", "alpha/value/fusions.b"):
        logged = {int(r["step"]): float(r[key]) for r in rows if r.get(key)}
        # 0.6 * (1 - cos(pi s / 3)) / 2 by hand: cos 0 = 1, cos(pi/3) = 1/2, cos(2 pi/3) = -1/2
        for s, expected in enumerate([0.0, 0.15, 0.45]):
            assert logged[s] == pytest.approx(expected, abs=1e-6)


def test_ramp_values_and_argument_checks() -> None:
    assert alpha_ramp(0, 10, 0.1, 0.8) == pytest.approx(0.1)
    assert alpha_ramp(5, 10, 0.1, 0.8) == pytest.approx(0.45)
    assert alpha_ramp(25, 10, 0.1, 0.8) == pytest.approx(0.8)
    assert alpha_ramp(5, 10, 0.0, 0.8, "cosine") == pytest.approx(0.4)
    for kwargs in (
        {"steps": -1},
        {"start": 1.0},
        {"target": 1.0},
        {"mode": "exp"},
        {"grad": "none"},
    ):
        with pytest.raises(ValueError):
            AlphaWarmup(**kwargs)
    with pytest.raises(AttributeError, match="nothere"):
        AlphaWarmup(module_attr="nothere").temporal_modules(_TinyFusion())


def test_state_round_trip_prevents_second_handover() -> None:
    warmup = AlphaWarmup(steps=2)
    warmup.handed_over = True
    other = AlphaWarmup(steps=2)
    other.load_state_dict(warmup.state_dict())
    assert other.handed_over


def _trainer(tmp_path: Path, name: str, max_steps: int, warmup: AlphaWarmup) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(tmp_path, name=name, version=0),
        callbacks=[warmup],
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def _logged(trainer: pl.Trainer) -> dict[int, float]:
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return {int(r["step"]): float(r["alpha/value"]) for r in rows if r.get("alpha/value")}


def test_resume_mid_warmup_and_after_handover(tmp_path: Path) -> None:
    kwargs = {"steps": 4, "start": 0.1, "target": 0.5}
    first = _trainer(tmp_path, "a", 2, AlphaWarmup(**kwargs))
    first.fit(_TinyFusion(), _loader())
    mid = tmp_path / "mid.ckpt"
    first.save_checkpoint(mid)

    # resumed mid-warmup: the ramp continues from step 2 and hands over at step 4
    second = _trainer(tmp_path, "b", 6, AlphaWarmup(**kwargs))
    model = _TinyFusion()
    second.fit(model, _loader(), ckpt_path=mid)
    logged = _logged(second)
    assert logged[2] == pytest.approx(0.3, abs=1e-6) and logged[3] == pytest.approx(0.4, abs=1e-6)
    assert logged[4] == pytest.approx(0.5, abs=1e-6)
    after = tmp_path / "after.ckpt"
    second.save_checkpoint(after)
    learned = float(model.temporal.alpha.detach())
    assert learned != pytest.approx(0.5, abs=1e-4)

    # resumed after the handover: no second handover, the learned alpha continues
    third = _trainer(tmp_path, "c", 7, AlphaWarmup(**kwargs))
    model3 = _TinyFusion()
    third.fit(model3, _loader(), ckpt_path=after)
    assert _logged(third)[6] == pytest.approx(learned, abs=1e-6)
    assert model3.temporal.alpha_override is None
