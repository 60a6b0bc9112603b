"""WFVAEModule: the VAE-GAN recipe in short in-process fits (CPU, one device, tiny networks).

Ground truth comes from the recipe itself (which optimizer steps when, which parameters may hold
gradients), from closed forms (an EMA recomputed from the recorded weight trajectory, clipped
norms), from bit-identity (skipped steps) and from the published code's fixture (converted
reference weights reproduce its reconstruction).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import math
import pickle
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, Dataset

from tests.conftest import REFERENCE_DIR, ROOT, require_reference
from wavecast.config import ConfigError
from wavecast.guards import NonFiniteLossError
from wavecast.metrics import weights as W
from wfvae.causal_conv import FrameConv2d
from wfvae.discriminator import PatchDiscriminator3D
from wfvae.ema import GeneratorEMA
from wfvae.losses import WFVAELoss
from wfvae.model import WFVAE, wfvae_config
from wfvae.module import WFVAEModule

FIXTURE = REFERENCE_DIR / "wfvae" / "wfvae_v1_tiny.pt"


@pytest.fixture(autouse=True)
def _quiet_weights(monkeypatch):
    monkeypatch.delenv(W.WEIGHTS_ENV, raising=False)
    W.reset_notices()
    yield
    W.reset_notices()


# ----------------------------------------------------------------------------- helpers
class Clips(Dataset):
    """Smooth random clips [3, T, H, W] in [-1, 1]; indices in `nan_at` are all-NaN."""

    def __init__(self, n: int = 6, frames: int = 5, size: int = 16, nan_at=()) -> None:
        self.n, self.frames, self.size, self.nan_at = n, frames, size, set(nan_at)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(100 + i)
        low = torch.randn(1, 3, 2, 4, 4, generator=g)
        v = torch.nn.functional.interpolate(
            low, size=(self.frames, self.size, self.size), mode="trilinear"
        )[0]
        v = (v + 0.1 * torch.randn(v.shape, generator=g)).tanh()
        if i in self.nan_at:
            v = torch.full_like(v, float("nan"))
        return {"video": v}


def loader(**kw) -> DataLoader:
    return DataLoader(Clips(**kw), batch_size=1, shuffle=False)


def make_module(
    disc: bool = True, disc_start: int = 2, config: dict | None = None, **kw
) -> WFVAEModule:
    torch.manual_seed(0)
    net = WFVAE(**(config or wfvae_config("tiny")))
    d = PatchDiscriminator3D(ndf=4, n_layers=2, norm="batch", dropout=0.0) if disc else None
    loss = WFVAELoss(perceptual_weight=0.0, disc=d, disc_start=disc_start)
    opt = partial(torch.optim.AdamW, lr=1e-3)
    return WFVAEModule(net, loss, opt, opt if disc else None, **kw)


def make_trainer(tmp_path: Path, callbacks=(), **kw) -> pl.Trainer:
    args = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )
    args.update(kw)
    if any(isinstance(c, ModelCheckpoint) for c in args["callbacks"]):
        args["enable_checkpointing"] = True
    return pl.Trainer(**args)


def net_state(m: WFVAEModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.net.state_dict().items()}


def disc_params(m: WFVAEModule) -> list[torch.nn.Parameter]:
    return list(m.discriminator.parameters())


def gen_params(m: WFVAEModule) -> list[torch.nn.Parameter]:
    return list(m.net.parameters())


class StepRecorder(pl.Callback):
    """Which optimizer steps, which parameters hold gradients then, their (clipped) norm."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.batches: list[dict] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        which = trainer.optimizers.index(optimizer)
        own = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.steps.append(
            {
                "opt": which,
                "gen_grads": sum(p.grad is not None for p in gen_params(pl_module)),
                "disc_grads": sum(p.grad is not None for p in disc_params(pl_module)),
                "norm": torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(p.grad) for p in own])
                ).item(),
            }
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches.append(
            {
                "gen_steps": pl_module.generator_steps,
                "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            }
        )


# ----------------------------------------------------------------------------- VAE-GAN recipe
@pytest.mark.parametrize("schedule", ["alternate", "joint"])
def test_gan_alternation_gradient_isolation_and_step_counts(tmp_path, schedule):
    m = make_module(disc_start=2, gan_schedule=schedule)
    disc_calls = []
    m.discriminator.register_forward_hook(lambda mod, i, o: disc_calls.append(m.generator_steps))
    last_layers = []
    original = m.loss.adaptive_weight

    def spy(nll, g_loss, last_layer):
        last_layers.append(last_layer)
        return original(nll, g_loss, last_layer)

    m.loss.adaptive_weight = spy
    rec = StepRecorder()
    trainer = make_trainer(tmp_path, [rec], max_steps=8)
    trainer.fit(m, loader(n=8))

    # max_steps counts both optimizers: 2 generator-only steps, then 3 generator + 3 disc.
    assert trainer.global_step == 8
    assert (m.generator_steps, m.discriminator_steps) == (5, 3)
    assert [s["opt"] for s in rec.steps] == [0, 0, 0, 1, 0, 1, 0, 1]
    assert len(rec.batches) == (8 if schedule == "alternate" else 5)
    # The discriminator is not run before disc_start (generator steps 0 and 1).
    assert disc_calls and min(disc_calls) >= 2
    for s in rec.steps:
        if s["opt"] == 0:  # generator step: gradients in the generator, none in the disc
            assert s["gen_grads"] > 0 and s["disc_grads"] == 0
        else:  # discriminator step: gradients in the disc, none in the generator
            assert s["disc_grads"] == len(disc_params(m)) and s["gen_grads"] == 0
    # Adaptive weight at the decoder's last layer, once per GAN generator step.
    assert len(last_layers) == 3 and all(w is m.net.decoder.conv_out.weight for w in last_layers)
    final = rec.batches[-1]["metrics"]
    assert final["train/d_weight"] > 0 and final["train/disc_factor"] == 1.0
    first = rec.batches[0]["metrics"]
    assert first["train/d_weight"] == 0 and first["train/g_gan"] == 0
    # Every term is logged, on a per-element scale (a sum over 3*5*16*16 pixels would be ~1e3).
    for key in ("rec", "perceptual", "nll", "kl", "wavelet", "g_gan", "d_weight", "logvar",
                "total", "d_loss", "logits_real", "logits_fake", "grad_norm/generator",
                "grad_norm/discriminator", "nonfinite_skips", "loss"):  # fmt: skip
        assert f"train/{key}" in final, key
    assert 0 < final["train/rec"] < 2 and abs(final["train/loss"]) < 10


def test_gradients_clipped_by_hand_for_both_optimizers(tmp_path):
    clip = 1e-3
    m = make_module(disc_start=0, gan_schedule="joint", grad_clip=clip)
    rec = StepRecorder()
    make_trainer(tmp_path, [rec], max_steps=4).fit(m, loader(n=4))
    assert {s["opt"] for s in rec.steps} == {0, 1}
    for s in rec.steps:  # what the optimizer sees
        assert s["norm"] <= clip * (1 + 1e-4), s
    logged = rec.batches[-1]["metrics"]  # the norm before clipping
    assert logged["train/grad_norm/generator"] > 10 * clip
    assert logged["train/grad_norm/discriminator"] > clip


def test_lightning_gradient_clip_val_refused_at_start(tmp_path):
    m = make_module()
    before = net_state(m)
    trainer = make_trainer(tmp_path, max_steps=2, gradient_clip_val=1.0)
    with pytest.raises(ConfigError, match="model.grad_clip"):
        trainer.fit(m, loader(n=2))
    assert m.generator_steps == 0
    assert all(torch.equal(v, before[k]) for k, v in m.net.state_dict().items())


# ----------------------------------------------------------------------------- non-finite guard
class Snapshots(pl.Callback):
    """Full module + optimizer state before and after chosen batches."""

    def __init__(self, batches) -> None:
        self.batches, self.before, self.after = set(batches), {}, {}

    @staticmethod
    def _state(trainer, pl_module):
        opt = [copy.deepcopy(o.state_dict()) for o in trainer.optimizers]
        return {k: v.clone() for k, v in pl_module.state_dict().items()}, None, opt

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx in self.batches:
            self.before[batch_idx] = (self._state(trainer, pl_module), pl_module.generator_steps)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx in self.batches:
            self.after[batch_idx] = (self._state(trainer, pl_module), pl_module.generator_steps)


def _same_state(a, b) -> bool:
    (sd_a, _, opt_a), (sd_b, _, opt_b) = a, b
    same_sd = sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    same_opt = all(
        torch.equal(x, y)
        for oa, ob in zip(opt_a, opt_b)
        for sa, sb in zip(oa["state"].values(), ob["state"].values())
        for x, y in zip(sa.values(), sb.values())
    ) and [len(o["state"]) for o in opt_a] == [len(o["state"]) for o in opt_b]
    return same_sd and same_opt


@pytest.mark.parametrize("kind", ["nan_batch", "nan_grad"])
def test_nonfinite_generator_step_is_skipped_bit_identically(tmp_path, kind):
    # NaN batch: joint schedule with the GAN on from step 0, so the bad batch also runs the
    # discriminator's BatchNorm on a NaN reconstruction, whose running statistics must be
    # restored. NaN gradient (finite loss): GAN off, so only the gradient is poisoned.
    m = make_module(disc_start=0 if kind == "nan_batch" else 100, gan_schedule="joint")
    bad = 2
    snap_cb = Snapshots([bad, bad + 1])
    if kind == "nan_grad":

        def poison(grad):
            return grad * float("nan") if snap_cb.current == bad else grad

        m.net.get_last_layer().register_hook(poison)

    class Current(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            snap_cb.current = batch_idx

    rec = StepRecorder()
    make_trainer(tmp_path, [Current(), snap_cb, rec], max_epochs=1).fit(
        m, loader(n=5, nan_at=[bad] if kind == "nan_batch" else [])
    )
    (before, g0), (after, g1) = snap_cb.before[bad], snap_cb.after[bad]
    assert _same_state(before, after), "a skipped step changed the weights / buffers / optimizer"
    assert g1 == g0
    assert rec.batches[bad]["metrics"]["train/nonfinite_skips"] == 1.0
    # The next (finite) batch trains normally.
    (b2, _), (a2, _) = snap_cb.before[bad + 1], snap_cb.after[bad + 1]
    assert not _same_state(b2, a2)
    assert m.generator_steps == 4 and m.guard.skipped == 1
    assert all(torch.isfinite(v).all() for v in m.state_dict().values() if v.is_floating_point())


def test_nonfinite_discriminator_loss_skips_only_the_discriminator(tmp_path, monkeypatch):
    m = make_module(disc_start=0, gan_schedule="joint")
    original = m.loss.discriminator_loss
    monkeypatch.setattr(
        m.loss,
        "discriminator_loss",
        lambda *a, **k: (lambda r: (r[0] * float("inf"), r[1]))(original(*a, **k)),
    )
    disc_before = [p.clone() for p in disc_params(m)]
    net_before = net_state(m)
    make_trainer(tmp_path, max_steps=6, max_epochs=1).fit(m, loader(n=3))
    assert all(torch.equal(p, b) for p, b in zip(disc_params(m), disc_before))
    assert not all(torch.equal(v, net_before[k]) for k, v in m.net.state_dict().items())
    assert (m.generator_steps, m.discriminator_steps) == (3, 0)
    assert m.disc_guard.skipped == 3 and m.guard.skipped == 0


def test_consecutive_nonfinite_steps_stop_the_run_and_keep_the_last_checkpoint(tmp_path):
    m = make_module(disc=False, max_nonfinite_skips=2)
    ckpt_dir = tmp_path / "ckpt"
    periodic = ModelCheckpoint(
        dirpath=ckpt_dir, save_top_k=0, save_last=True, every_n_train_steps=2
    )

    class Weights(pl.Callback):
        def __init__(self):
            self.at = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.at[trainer.global_step] = net_state(pl_module)

    rec = Weights()
    trainer = make_trainer(tmp_path, [rec, periodic], max_epochs=1)
    with pytest.raises(NonFiniteLossError, match="max_nonfinite_skips=2"):
        trainer.fit(m, loader(n=10, nan_at=range(4, 10)))
    assert m.guard.consecutive == 3 and m.generator_steps == 4
    state = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 4 and state["wavecast"]["generator_steps"] == 4
    for k, v in rec.at[4].items():
        assert torch.equal(state["state_dict"][f"net.{k}"], v), k


# ----------------------------------------------------------------------------- EMA
class Reseed(pl.Callback):
    """Each batch's random stream (posterior samples) depends on its position only."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        torch.manual_seed(1000 * trainer.current_epoch + batch_idx)


class Trajectory(pl.Callback):
    """Raw generator weights after every generator step, and what validation runs with."""

    def __init__(self) -> None:
        self.raw: list[dict] = []
        self.val: list[dict] = []
        self.start: dict | None = None
        self._last = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._last = pl_module.generator_steps
        self.start = net_state(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.generator_steps != self._last:
            self._last = pl_module.generator_steps
            self.raw.append(net_state(pl_module))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.val.append(net_state(pl_module))


def _ema(trajectory: list[dict], decay: float) -> dict:
    avg = None
    for w in trajectory:
        avg = dict(w) if avg is None else {k: decay * avg[k] + (1 - decay) * w[k] for k in w}
    return avg


def _close(a: dict, b: dict, atol: float = 1e-6) -> bool:
    return all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def _ema_fit(tmp_path, name, max_epochs, ckpt_path=None):
    m = make_module(disc_start=1)
    ema = GeneratorEMA(decay=0.5)
    traj = Trajectory()
    ckpt = ModelCheckpoint(dirpath=tmp_path / name, save_last=True, save_top_k=0)
    trainer = make_trainer(
        tmp_path, [Reseed(), traj, ema, ckpt], max_epochs=max_epochs, limit_val_batches=1
    )
    trainer.fit(m, loader(n=6), loader(n=1), ckpt_path=ckpt_path)
    return m, ema, traj, tmp_path / name / "last.ckpt"


def test_generator_ema_validation_checkpoint_and_resume(tmp_path):
    m, ema, traj, last = _ema_fit(tmp_path, "a", max_epochs=2)
    # disc_start=1, alternating, 6 batches per epoch: g g d g d g | d g d g d g.
    assert (m.generator_steps, m.discriminator_steps) == (7, 5) and len(traj.raw) == 7
    expected = _ema(traj.raw, 0.5)
    state = torch.load(last, map_location="cpu", weights_only=False)
    ema_sd = {k[4:]: v for k, v in state["state_dict"].items() if k.startswith("net.")}
    raw_sd = {k[4:]: v for k, v in state["current_model_state"].items() if k.startswith("net.")}
    assert _close(ema_sd, expected)  # the average of the generator-step weights
    assert _close(raw_sd, traj.raw[-1], atol=0)
    assert not _close(ema_sd, raw_sd, atol=1e-4)
    assert int(state["averaging_state"]["n_averaged"]) == 7
    # Only the generator is averaged: the discriminator is the raw one in both entries.
    for k, v in state["current_model_state"].items():
        if k.startswith("loss."):
            assert torch.equal(state["state_dict"][k], v), k
    # Validation ran with the averaged weights (after 4 generator steps, then after 7).
    assert len(traj.val) == 2
    assert _close(traj.val[0], _ema(traj.raw[:4], 0.5)) and _close(traj.val[1], expected)
    assert not _close(traj.val[1], traj.raw[-1], atol=1e-4)
    # After fit the module holds the averaged weights.
    assert _close(net_state(m), expected)

    # Interrupted after one epoch and resumed: the average and the raw weights come back from
    # the checkpoint, and the run ends where the uninterrupted one did.
    _, _, traj_b, last_b = _ema_fit(tmp_path, "b", max_epochs=1)
    saved = torch.load(last_b, map_location="cpu", weights_only=False)
    m_c, ema_c, traj_c, last_c = _ema_fit(tmp_path, "b", max_epochs=2, ckpt_path=last_b)
    raw_saved = {k[4:]: v for k, v in saved["current_model_state"].items() if k.startswith("net.")}
    assert _close(traj_c.start, raw_saved, atol=0)
    state_c = torch.load(last_c, map_location="cpu", weights_only=False)
    ema_c_sd = {k[4:]: v for k, v in state_c["state_dict"].items() if k.startswith("net.")}
    assert m_c.generator_steps == 7
    assert _close(ema_c_sd, ema_sd, atol=1e-5)
    assert _close(traj_c.raw[-1], traj.raw[-1], atol=1e-5)


def test_stock_ema_callback_is_flagged(tmp_path):
    from lightning.pytorch.callbacks import EMAWeightAveraging

    m = make_module(disc=False)
    with pytest.warns(UserWarning, match="use wfvae.ema.GeneratorEMA"):
        make_trainer(tmp_path, [EMAWeightAveraging()], max_steps=1).fit(m, loader(n=1))


# ----------------------------------------------------------------------------- bf16
def test_bf16_mixed_fit_with_gan(tmp_path):
    m = make_module(disc_start=0, gan_schedule="joint")
    dtypes = set()
    m.net.decoder.conv_out.register_forward_hook(lambda mod, i, o: dtypes.add(o.dtype))
    m.discriminator.register_forward_hook(lambda mod, i, o: dtypes.add(o.dtype))
    before, disc_before = net_state(m), [p.clone() for p in disc_params(m)]
    rec = StepRecorder()
    make_trainer(tmp_path, [rec], max_steps=6, precision="bf16-mixed").fit(m, loader(n=3))
    assert torch.bfloat16 in dtypes  # autocast really was on
    assert (m.generator_steps, m.discriminator_steps) == (3, 3) and m.guard.skipped == 0
    metrics = rec.batches[-1]["metrics"]
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["train/d_weight"] > 0
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert not all(torch.equal(v, before[k]) for k, v in m.net.state_dict().items())
    assert not all(torch.equal(a, b) for a, b in zip(disc_params(m), disc_before))


# ----------------------------------------------------------------------------- metrics
def test_chunked_validation_reconstructs_from_the_posterior_mode(tmp_path):
    """val_chunk_size: the streamed encode / decode scores the deterministic reconstruction
    (posterior mode), the same as a full-clip forward without sampling; a posterior sample
    would score noise. Expected values from the full forward and the L1 written out here."""
    m = make_module(disc=False, val_chunk_size=4)
    (res,) = make_trainer(tmp_path, limit_val_batches=None).validate(m, loader(n=2, frames=9))
    with torch.no_grad():
        expected = [
            (m.net(b["video"], sample_posterior=False).recon - b["video"]).abs().mean()
            for b in loader(n=2, frames=9)
        ]
    assert res["val/rec_l1"] == pytest.approx(torch.stack(expected).mean().item(), rel=1e-4)
    # and it really streamed: 9 frames encode as chunks of 5 and 4 (3 latent frames)
    enc_calls: list[int] = []
    m.net.encoder.register_forward_pre_hook(lambda mod, args: enc_calls.append(args[0].shape[2]))
    m._reconstruct(loader(n=1, frames=9).dataset[0]["video"][None])
    assert enc_calls == [5, 4]


def test_lpips_metric_from_local_weights(tmp_path, caplog):
    from tests.test_metrics import write_lpips_files
    from wavecast.metrics.lpips import LPIPS

    files = write_lpips_files(tmp_path / "alex", "alex")
    m = make_module(disc=False, metric_lpips_weights=str(tmp_path / "alex"))
    assert not any(k.startswith("lpips") for k in m.state_dict())  # not saved in checkpoints
    trainer = make_trainer(tmp_path, limit_val_batches=None)
    (res,) = trainer.validate(m, loader(n=2, size=32))
    lpips = LPIPS.from_weights(files)
    expected = []
    with torch.no_grad():
        for batch in loader(n=2, size=32):
            x = batch["video"]
            r = m.net(x, sample_posterior=False).recon.clamp(-1, 1)
            expected.append(lpips(r[0].transpose(0, 1), x[0].transpose(0, 1)).mean())
    assert res["val/lpips"] == pytest.approx(torch.stack(expected).mean().item(), rel=1e-4)
    for key in ("val/psnr", "val/ssim", "val/flicker", "val/loss"):
        assert key in res
    # Without weights: no LPIPS, and one notice however many modules are built.
    with caplog.at_level(logging.WARNING):
        make_module(disc=False)
        m2 = make_module(disc=False)
    assert m2.lpips_metric is None
    assert sum("LPIPS disabled" in r.getMessage() for r in caplog.records) == 1


def test_fvd_skipped_with_one_notice_when_no_i3d(tmp_path, caplog):
    m = make_module(disc=False)
    with caplog.at_level(logging.WARNING):
        make_trainer(tmp_path).test(m, loader(n=2))
        make_trainer(tmp_path).test(m, loader(n=2))
    assert m.eval_report() == {}
    assert sum("FVD disabled" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(W.WeightsError, match="nope.pt"):
        make_module(disc=False, fvd_i3d=str(tmp_path / "nope.pt"))


# ----------------------------------------------------------------------------- checkpoints
def _convert(tmp_path: Path, plain: bool = False) -> tuple[Path, dict]:
    require_reference(FIXTURE)
    spec = importlib.util.spec_from_file_location(
        "convert_reference", ROOT / "scripts" / "convert_reference.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / ("fixture_plain.pt" if plain else "fixture.ckpt")
    config = mod.convert(FIXTURE, out, plain=plain)
    return out, config


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(require_reference(FIXTURE), weights_only=True)


def test_converted_reference_loads_for_finetuning_and_eval(tmp_path, fixture):
    conv, config = _convert(tmp_path)
    assert config["haar_scale"] == "reference"
    # model.init_ckpt: reference weights, fresh optimizer, counters at zero.
    m = make_module(disc=True, config=config, init_ckpt=str(conv))
    with torch.no_grad():
        recon = m.net(fixture["x"], sample_posterior=False).recon
    assert (recon - fixture["recon"]).abs().max().item() <= 1e-4
    plain, _ = _convert(tmp_path, plain=True)
    m_plain = make_module(disc=False, config=config, init_ckpt=str(plain))
    assert _close(net_state(m_plain), net_state(m), atol=0)

    class Start(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.opt_state = [len(o.state) for o in trainer.optimizers]
            self.steps = pl_module.generator_steps
            self.weights = net_state(pl_module)

    start = Start()
    reference_weights = net_state(m)
    make_trainer(tmp_path, [start], max_steps=1).fit(m, loader(n=1, size=32, frames=9))
    assert start.opt_state == [0, 0] and start.steps == 0
    assert _close(start.weights, reference_weights, atol=0)

    # eval.py path: Lightning's ckpt_path with the converted file as written (weights only).
    lightning_conv = conv
    fresh = make_module(disc=False, config=config)
    make_trainer(tmp_path).test(fresh, loader(n=1, size=32, frames=9), ckpt_path=lightning_conv)
    with torch.no_grad():
        recon = fresh.net(fixture["x"], sample_posterior=False).recon
    assert (recon - fixture["recon"]).abs().max().item() <= 1e-4
    # train.py ckpt_path= resumes runs only: a weights-only file is pointed to init_ckpt.
    again = make_module(disc=False, config=config)
    with pytest.raises(ConfigError, match="model.init_ckpt"):
        make_trainer(tmp_path, max_steps=1).fit(
            again, loader(n=1, size=32), ckpt_path=lightning_conv
        )
    # The fixture's Haar scale is part of the config check.
    with pytest.raises(ConfigError, match="model.net.haar_scale: checkpoint 'reference'"):
        make_module(disc=False, config={**config, "haar_scale": "orthonormal"}, init_ckpt=str(conv))


def test_foreign_or_incompatible_checkpoints_are_refused_without_partial_load(tmp_path, fixture):
    conv, config = _convert(tmp_path)
    raw = torch.load(conv, weights_only=False)
    raw["pytorch-lightning_version"] = pl.__version__

    def variant(name: str, edit) -> Path:
        ckpt = json.loads(json.dumps({"wavecast": raw["wavecast"]}, default=str))
        ckpt["state_dict"] = dict(raw["state_dict"])
        ckpt["pytorch-lightning_version"] = raw["pytorch-lightning_version"]
        edit(ckpt)
        path = tmp_path / f"{name}.ckpt"
        torch.save(ckpt, path)
        return path

    other_model = variant("stdiff", lambda c: c["wavecast"].update(model="stdiff"))
    other_config = variant("bc16", lambda c: c["wavecast"]["net_config"].update(base_channels=16))
    key = "net.decoder.conv_out.weight"
    no_meta_bad_shape = variant(
        "shape",
        lambda c: (c.pop("wavecast"), c["state_dict"].update({key: torch.zeros(1, 2, 3)})),
    )
    cases = [
        (other_model, "holds a 'stdiff' model"),
        (other_config, "model.net.base_channels: checkpoint 16 vs config 8"),
        (no_meta_bad_shape, r"shape mismatch: net.decoder.conv_out.weight"),
    ]
    for path, message in cases:
        m = make_module(disc=False, config=config)
        before = {k: v.clone() for k, v in m.state_dict().items()}
        with pytest.raises(ConfigError, match=message):
            make_trainer(tmp_path).validate(m, loader(n=1, size=32, frames=9), ckpt_path=path)
        with pytest.raises(ConfigError, match=message):
            m.load_init_checkpoint(path)
        # Nothing was copied, although all other tensors of the file would have fitted.
        assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    with pytest.raises(ConfigError, match="does not exist"):
        make_module(disc=False, init_ckpt=str(tmp_path / "missing.ckpt"))


def test_training_checkpoint_resumes_counters_and_loads_for_eval_without_disc(tmp_path):
    m = make_module(disc_start=1)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "c", save_last=True, save_top_k=0)
    make_trainer(tmp_path, [ckpt], max_epochs=1).fit(m, loader(n=4))
    state = torch.load(tmp_path / "c" / "last.ckpt", weights_only=False)
    assert state["wavecast"]["generator_steps"] == 3
    assert state["wavecast"]["discriminator_steps"] == 1
    # Evaluating a GAN checkpoint with the plain VAE config takes the network only.
    plain = make_module(disc=False)
    make_trainer(tmp_path).validate(plain, loader(n=1), ckpt_path=tmp_path / "c" / "last.ckpt")
    assert _close(net_state(plain), net_state(m), atol=0)
    assert plain.generator_steps == 3
    # Resuming it without the discriminator would lose training state: refused.
    with pytest.raises(ConfigError, match="model.loss"):
        make_trainer(tmp_path, max_epochs=2).fit(
            make_module(disc=False), loader(n=4), ckpt_path=tmp_path / "c" / "last.ckpt"
        )


class _CountConvBackward(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func is torch.ops.aten.convolution_backward.default
        return func(*args, **(kwargs or {}))


def test_compiled_network_traces_fp32_and_keeps_the_adaptive_weight_gradient_local():
    # compile=true. The GAN's adaptive weight takes the gradient w.r.t. the decoder's last conv
    # alone; eager autograd runs only the backward below that conv. Inside one compiled graph,
    # whose backward computes every input's gradient, it would run the whole network's (56
    # conv backwards here against 2). aot_eager: AOTAutograd's joint graph, as inductor
    # builds it, without the C++ compile. The fp32 input also checks that tracing works at all
    # (conv3d()'s direct oneDNN op cannot be traced).
    x = Clips(n=1)[0]["video"][None]
    results = []
    for compiled in (False, True):
        module = make_module()
        if compiled:
            module.compile_networks(backend="aot_eager")
        out = module.net(x, sample_posterior=False)
        loss = out.recon.abs().mean()
        with _CountConvBackward() as count:
            (grad,) = torch.autograd.grad(loss, module.net.get_last_layer())
        results.append((out.recon.detach(), grad, count.calls))
    (recon_e, grad_e, calls_e), (recon_c, grad_c, calls_c) = results
    # Other conv kernels than eager (F.conv3d, not oneDNN direct): fp32 rounding apart.
    torch.testing.assert_close(recon_c, recon_e, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_c, grad_e, rtol=1e-4, atol=1e-6)
    assert calls_c == calls_e
    # The state-dict keys do not depend on compile (checkpoints load either way).
    assert all(k.startswith(("net.", "loss.")) for k in module.state_dict())
    # A deep copy (weight averaging) computes with its own last conv, and the net pickles.
    twin = copy.deepcopy(module.net).decoder.conv_out
    with torch.no_grad():
        twin.weight.zero_()
        twin.bias.zero_()
        assert twin(torch.randn(1, twin.in_channels, 2, 4, 4)).abs().max() == 0
    pickle.dumps(module.net)
    # Without a discriminator nothing asks for that gradient: the whole network is one graph.
    plain = make_module(disc=False)
    plain.compile_networks(backend="aot_eager")
    assert type(plain.net.decoder.conv_out) is FrameConv2d
