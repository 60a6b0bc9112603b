"""WF-VAE losses and 3D PatchGAN: closed forms, the reference's formulas written out, GAN gating."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from einops import rearrange
from torch import nn

from tests.test_metrics import write_lpips_files
from wavecast.metrics import weights as W
from wavecast.metrics.lpips import LPIPS
from wfvae.discriminator import PatchDiscriminator3D
from wfvae.distributions import DiagonalGaussian
from wfvae.losses import WFVAELoss


@pytest.fixture(autouse=True)
def _no_weights_env(monkeypatch):
    monkeypatch.delenv(W.WEIGHTS_ENV, raising=False)
    W.reset_notices()
    yield
    W.reset_notices()


def fake_output(x: torch.Tensor, delta: float, mean: float, with_wavelets: bool = True):
    """A model output with known errors: recon = x + delta, posterior N(mean, 1), wavelet
    pairs differing by 0.5 (w2, 12 channels) and 0.25 (w3, 24 channels)."""
    b, _, t, h, w = x.shape
    lat = (b, 4, (t - 1) // 4 + 1, h // 8, w // 8)
    post = DiagonalGaussian(torch.full(lat, mean), torch.zeros(lat))
    w2 = torch.zeros(b, 12, (t - 1) // 2 + 1, h // 4, w // 4)
    w3 = torch.zeros(b, 24, (t - 1) // 4 + 1, h // 8, w // 8)
    return SimpleNamespace(
        recon=x + delta,
        posterior=post,
        w2=w2 if with_wavelets else None,
        w3=w3 if with_wavelets else None,
        w2_hat=w2 + 0.5,
        w3_hat=w3 - 0.25,
    )


class ConstDisc(nn.Module):
    """Logits = k * mean of the input per clip; counts calls."""

    def __init__(self, k: float = 1.0):
        super().__init__()
        self.k = k
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.k * x.mean(dim=(1, 2, 3, 4), keepdim=True)


# ------------------------------------------------------------------------------ discriminator
def test_discriminator_follows_reference_recipe():
    d = PatchDiscriminator3D(in_channels=3, ndf=8, n_layers=4, norm="batch")
    # reference index layout of `main`: conv, lrelu, [conv, bn, lrelu, dropout] x 3,
    # [conv(stride 1), bn, lrelu, dropout], conv -> 1
    convs = {i: m for i, m in enumerate(d.main) if isinstance(m, nn.Conv3d)}
    assert sorted(convs) == [0, 2, 6, 10, 14, 18]
    assert [convs[i].stride for i in sorted(convs)] == [
        (2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2), (1, 1, 1), (1, 1, 1),
    ]  # fmt: skip
    assert [convs[i].out_channels for i in sorted(convs)] == [8, 16, 32, 64, 64, 1]
    assert all(c.kernel_size == (3, 3, 3) for c in convs.values())
    # 3x3x3 zero padding 1 on every axis (time padded outside the conv: same numbers)
    for c in (convs[2], convs[14]):
        x = torch.randn(1, c.in_channels, 2, 6, 6)
        want = torch.nn.functional.conv3d(x, c.weight, c.bias, c.stride, padding=1)
        torch.testing.assert_close(c(x), want, atol=1e-6, rtol=0)
    assert [convs[i].bias is None for i in sorted(convs)] == [False, True, True, True, True, False]
    assert all(isinstance(d.main[i], nn.BatchNorm3d) for i in (3, 7, 11, 15))
    assert all(d.main[i].negative_slope == 0.2 for i in (1, 4, 8, 12, 16))
    assert all(d.main[i].p == 0.3 for i in (5, 9, 13, 17))
    # parameters of that recipe, counted by hand (ndf 8, in 3)
    n = (3 * 8 * 27 + 8) + (8 * 16 * 27 + 32) + (16 * 32 * 27 + 64) + (32 * 64 * 27 + 128)
    n += (64 * 64 * 27 + 128) + (64 * 27 + 1)
    assert sum(p.numel() for p in d.parameters()) == n
    out = d(torch.randn(2, 3, 17, 64, 64))
    assert out.shape == (2, 1, 5, 4, 4)


_BF16_DISC_GRADS = """
import torch
from wfvae.discriminator import PatchDiscriminator3D
torch.manual_seed(0)
d = PatchDiscriminator3D(ndf=4, n_layers=2, norm="batch", dropout=0.0)
x = torch.randn(1, 3, 5, 16, 16).tanh()  # 5 frames: the last two convs see 2 frames
grads = []
for bf16 in (True, False):
    d.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = d(x).float().mean()
    loss.backward()
    grads.append({n: p.grad.clone() for n, p in d.named_parameters()})
for n, g32 in grads[1].items():
    g16 = grads[0][n]
    err = ((g16 - g32).abs().max() / g32.abs().max()).item()
    assert torch.isfinite(g16).all() and err < 0.1, (n, err, g16.abs().max().item())
print("ok")
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_discriminator_bf16_gradients_match_fp32(threads):
    """Under bf16 autocast every discriminator gradient is the fp32 one to bf16 precision. Run
    with oneDNN held to AVX512_CORE (no native bf16: its jit_bf16 weight-gradient kernel),
    where a 2-frame input padded at both ends in time gave |g| ~ 1e37 on one thread."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run(
        [sys.executable, "-c", _BF16_DISC_GRADS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


def test_discriminator_init_and_group_norm():
    torch.manual_seed(0)
    d = PatchDiscriminator3D(ndf=64, n_layers=3)
    w = torch.cat([m.weight.flatten() for m in d.modules() if isinstance(m, nn.Conv3d)])
    assert abs(w.std().item() - 0.02) < 1e-3 and abs(w.mean().item()) < 1e-3
    g = torch.cat([m.weight for m in d.modules() if isinstance(m, nn.BatchNorm3d)])
    assert abs(g.mean().item() - 1.0) < 5e-3 and 0.01 < g.std().item() < 0.03
    assert all((m.bias == 0).all() for m in d.modules() if isinstance(m, nn.BatchNorm3d))
    gd = PatchDiscriminator3D(ndf=8, n_layers=3, norm="group", dropout=0.0).eval()
    assert not any(isinstance(m, nn.BatchNorm3d) for m in gd.modules())
    x = torch.randn(1, 3, 9, 32, 32)
    assert gd(x).shape == (1, 1, 3, 4, 4)  # n_layers 3: one (1, 2, 2) stride
    with pytest.raises(ValueError, match="norm"):
        PatchDiscriminator3D(norm="instance")


# ------------------------------------------------------------------------------ generator loss
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_generator_loss_closed_form(reduction):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 9, 16, 16) * 2 - 1
    out = fake_output(x, delta=0.1, mean=0.5)
    lv = 0.3
    loss_fn = WFVAELoss(
        perceptual_weight=0.0,
        kl_weight=1e-3,
        wavelet_weight=0.1,
        logvar_init=lv,
        reduction=reduction,
    )
    total, logs = loss_fn.generator_loss(x, out, global_step=0)
    n = 3 * 9 * 16 * 16
    rec = 0.1
    nll = rec / math.exp(lv) + lv
    kl_per_elem = 0.5 * 0.5**2  # KL(N(m, 1) || N(0, 1)) = m^2 / 2 per element
    n_lat = 4 * 3 * 2 * 2
    wl_mean = 0.5 + 0.25
    wl_clip = 0.5 * 12 * 5 * 4 * 4 + 0.25 * 24 * 3 * 2 * 2
    expected_sum = n * nll + 1e-3 * kl_per_elem * n_lat + 0.1 * wl_clip
    expected = expected_sum if reduction == "sum" else expected_sum / n
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert logs["rec"].item() == pytest.approx(rec, rel=1e-5)
    assert logs["nll"].item() == pytest.approx(nll, rel=1e-5)
    assert logs["kl"].item() == pytest.approx(kl_per_elem, rel=1e-6)
    assert logs["wavelet"].item() == pytest.approx(wl_mean, rel=1e-6)
    assert logs["perceptual"].item() == 0 and logs["g_gan"].item() == 0
    assert logs["total"].item() == pytest.approx(expected, rel=1e-6)
    assert set(logs) >= {"rec", "perceptual", "nll", "kl", "wavelet", "g_gan", "d_weight"}


def test_l2_and_missing_wavelets():
    x = torch.zeros(1, 3, 5, 8, 8)
    out = fake_output(x, delta=0.2, mean=0.0, with_wavelets=False)
    loss_fn = WFVAELoss(rec_loss="l2", perceptual_weight=0.0, kl_weight=0.0)
    total, logs = loss_fn.generator_loss(x, out, 0)
    assert logs["wavelet"].item() == 0
    assert total.item() == pytest.approx(0.04, rel=1e-5)
    with pytest.raises(ValueError, match="one shape"):
        loss_fn.generator_loss(x, SimpleNamespace(recon=x[:, :, :3], posterior=out.posterior), 0)
    with pytest.raises(ValueError, match="rec_loss"):
        WFVAELoss(rec_loss="huber")


def test_sum_reduction_matches_reference_formula_with_lpips(tmp_path):
    """The reference's generator sum (broadcast LPIPS over pixels, sum, / B) written out."""
    files = write_lpips_files(tmp_path, "vgg")
    torch.manual_seed(0)
    x = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    out = fake_output(x, delta=0.0, mean=0.2)
    out.recon = (x + 0.2 * torch.randn_like(x)).clamp(-1, 1)
    lv = -0.4
    lp = LPIPS("vgg", files.backbone, files.lin)
    kw = dict(lpips_weights=tmp_path, kl_weight=1e-6, wavelet_weight=0.1, logvar_init=lv)
    tot_sum, logs = WFVAELoss(reduction="sum", **kw).generator_loss(x, out, 0)
    tot_mean, _ = WFVAELoss(reduction="mean", **kw).generator_loss(x, out, 0)

    xi = rearrange(x, "b c t h w -> (b t) c h w")
    ri = rearrange(out.recon, "b c t h w -> (b t) c h w")
    with torch.no_grad():
        p = lp(xi, ri).view(-1, 1, 1, 1)  # [BT, 1, 1, 1], broadcast over C, H, W as the reference
    rec = (xi - ri).abs() + p
    nll = torch.sum(rec / math.exp(lv) + lv) / 2
    kl = out.posterior.kl().sum() / 2
    wl = ((out.w2 - out.w2_hat).abs().sum() + (out.w3 - out.w3_hat).abs().sum()) / 2
    ref = nll + 1e-6 * kl + 0.1 * wl
    assert tot_sum.item() == pytest.approx(ref.item(), rel=1e-5)
    assert tot_mean.item() == pytest.approx(ref.item() / (3 * 5 * 32 * 32), rel=1e-5)
    # the perceptual log is the per-frame LPIPS, frame by frame on the [B, 3, T, H, W] video
    per_frame = torch.stack([lp(x[:, :, t], out.recon[:, :, t]) for t in range(5)], dim=1)
    assert logs["perceptual"].item() == pytest.approx(per_frame.mean().item(), rel=1e-5)
    assert logs["perceptual"].item() > 0


def test_perceptual_weights_are_frozen_and_not_saved(tmp_path):
    write_lpips_files(tmp_path, "vgg")
    loss_fn = WFVAELoss(lpips_weights={"backbone": tmp_path / "vgg16-397923af.pth",
                                       "lin": tmp_path / "vgg.pth"})  # fmt: skip
    assert loss_fn.perceptual is not None
    assert [n for n, _ in loss_fn.named_parameters()] == ["logvar"]
    assert list(loss_fn.state_dict()) == ["logvar"]  # no VGG in checkpoints
    assert not list(loss_fn.buffers())  # nothing for DDP to broadcast
    loss_fn.double()  # moves (casts) the hidden LPIPS with the module
    assert loss_fn.perceptual.lpips.net.layers[0].weight.dtype == torch.float64
    loss_fn.float()
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    r = x.clone().requires_grad_(True)
    _, logs = loss_fn.generator_loss(
        x, SimpleNamespace(**{**vars(fake_output(x, 0, 0)), "recon": r}), 0
    )
    assert logs["perceptual"].item() == 0  # LPIPS(x, x) = 0


def test_perceptual_disabled_without_weights_says_so_once(caplog, tmp_path):
    with caplog.at_level(logging.WARNING):
        a = WFVAELoss(lpips_weights=None)
        b = WFVAELoss(lpips_weights=None)
    assert a.perceptual is None and b.perceptual is None
    msgs = [r.getMessage() for r in caplog.records if "LPIPS disabled" in r.getMessage()]
    assert len(msgs) == 1 and "no local weights configured (set" in msgs[0]
    x = torch.zeros(1, 3, 5, 8, 8)
    _, logs = a.generator_loss(x, fake_output(x, 0.1, 0.0), 0)
    assert logs["perceptual"].item() == 0
    with pytest.raises(W.WeightsError, match="vgg16-397923af.pth"):
        WFVAELoss(lpips_weights=tmp_path)  # configured but wrong: an error, not "off"


# ------------------------------------------------------------------------------ GAN
def test_gan_off_before_disc_start_and_without_disc():
    x = torch.rand(1, 3, 5, 8, 8)
    disc = ConstDisc()
    loss_fn = WFVAELoss(perceptual_weight=0.0, disc=disc, disc_start=10)
    total, logs = loss_fn.generator_loss(x, fake_output(x, 0.1, 0.0), 9, last_layer=None)
    assert disc.calls == 0
    assert logs["disc_factor"].item() == 0 and logs["d_weight"].item() == 0
    d_loss, d_logs = loss_fn.discriminator_loss(x, x + 0.1, 9)
    assert d_loss.item() == 0 and d_logs["disc_factor"].item() == 0
    no_gan = WFVAELoss(perceptual_weight=0.0)
    t2, _ = no_gan.generator_loss(x, fake_output(x, 0.1, 0.0), 10**6)
    assert t2.item() == pytest.approx(total.item())
    with pytest.raises(RuntimeError, match="no discriminator"):
        no_gan.discriminator_loss(x, x, 0)


def test_hinge_discriminator_loss_closed_form():
    loss_fn = WFVAELoss(perceptual_weight=0.0, disc=ConstDisc(k=1.0), disc_start=0)
    x = torch.full((2, 3, 5, 8, 8), 0.5)  # real logits 0.5 -> relu(1 - 0.5) = 0.5
    fake = torch.full_like(x, -0.25)  # fake logits -0.25 -> relu(1 - 0.25) = 0.75
    d_loss, logs = loss_fn.discriminator_loss(x, fake, 0)
    assert d_loss.item() == pytest.approx(0.5 * (0.5 + 0.75))
    assert logs["logits_real"].item() == pytest.approx(0.5)
    assert logs["logits_fake"].item() == pytest.approx(-0.25)
    x2 = torch.full_like(x, 2.0)  # real logits beyond the margin: no loss from them
    d2, _ = loss_fn.discriminator_loss(x2, torch.full_like(x, -2.0), 0)
    assert d2.item() == 0


def _linear_gan_case(b: float, k: float, **loss_kwargs):
    """recon = w * b with x = 0 and discriminator logits k * mean(recon): gradients of the
    reconstruction and GAN terms at w are b and -k b (closed forms for the adaptive weight)."""
    w = nn.Parameter(torch.tensor(1.0))
    x = torch.zeros(1, 3, 5, 8, 8)
    out = fake_output(x, 0.0, 0.0, with_wavelets=False)
    out.recon = w * torch.full_like(x, b)
    loss_fn = WFVAELoss(
        perceptual_weight=0.0, kl_weight=0.0, disc=ConstDisc(k), disc_start=0, disc_weight=0.5,
        **loss_kwargs,
    )  # fmt: skip
    return w, x, out, loss_fn


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_adaptive_weight_closed_form(reduction):
    """recon = w * b with x = 0: d rec / d w = b (L1), g = -k w b: d g / d w = -k b.
    So d_weight = disc_weight * (N_scale * b) / (k b + 1e-6)."""
    b, k = 0.5, 4.0
    w, x, out, loss_fn = _linear_gan_case(b, k, reduction=reduction)
    total, logs = loss_fn.generator_loss(x, out, 0, last_layer=w)
    n = 1.0 if reduction == "mean" else float(x[0].numel())
    expected_w = min(0.5 * n * b / (k * b + 1e-6), loss_fn.d_weight_max * 0.5)
    assert logs["d_weight"].item() == pytest.approx(expected_w, rel=1e-5)
    g = -k * b
    assert logs["g_gan"].item() == pytest.approx(g)
    assert total.item() == pytest.approx(n * b + expected_w * g, rel=1e-5)
    # the weight is a constant: d total / d w = n b + d_weight * (-k b)
    total.backward()
    assert w.grad.item() == pytest.approx(n * b + expected_w * g, rel=1e-4)


def test_disc_factor_scales_both_gan_terms():
    """disc_factor = 0.25 multiplies the generator's GAN term (not the adaptive weight) and the
    discriminator loss, as in the reference (d_weight * disc_factor * g_loss)."""
    b, k = 0.5, 4.0
    w, x, out, loss_fn = _linear_gan_case(b, k, disc_factor=0.25)
    total, logs = loss_fn.generator_loss(x, out, 0, last_layer=w)
    # d_weight = 0.5 * |d rec/dw| / |d g/dw| = 0.5 * b / (k b) = 0.125, whatever the factor
    assert logs["d_weight"].item() == pytest.approx(0.125, rel=1e-5)
    assert logs["disc_factor"].item() == 0.25
    # total = rec + d_weight * factor * g = 0.5 + 0.125 * 0.25 * (-2) = 0.4375
    assert total.item() == pytest.approx(0.4375, rel=1e-5)
    total.backward()  # d/dw: b + 0.125 * 0.25 * (-k b) = 0.5 - 0.0625
    assert w.grad.item() == pytest.approx(0.4375, rel=1e-4)
    # the discriminator's hinge loss 0.5 * (relu(1 - 2) + relu(1 + 1)) = 1, times 0.25
    real, fake = torch.full_like(x, 0.5), torch.full_like(x, 0.25)  # logits 2 and 1
    d_loss, _ = loss_fn.discriminator_loss(real, fake, 0)
    assert d_loss.item() == pytest.approx(0.25 * 0.5 * (0.0 + 2.0), rel=1e-6)


def test_adaptive_weight_clamped_and_fallbacks(caplog):
    w = nn.Parameter(torch.tensor(1.0))
    x = torch.zeros(1, 3, 5, 8, 8)
    out = fake_output(x, 0.0, 0.0, with_wavelets=False)
    out.recon = w * torch.full_like(x, 0.5)
    loss_fn = WFVAELoss(perceptual_weight=0.0, disc=ConstDisc(1e-9), disc_start=0, d_weight_max=7.0)
    _, logs = loss_fn.generator_loss(x, out, 0, last_layer=w)
    assert logs["d_weight"].item() == pytest.approx(7.0 * 0.5)
    with caplog.at_level(logging.INFO, logger="wfvae.losses"):
        _, logs = loss_fn.generator_loss(x, out, 0, last_layer=None)
        assert logs["d_weight"].item() == 0 and logs["g_gan"].item() != 0
        loss_fn.generator_loss(x, out, 0, last_layer=None)
        with torch.no_grad():
            _, logs = loss_fn.generator_loss(x, out, 0, last_layer=w)  # validation
        assert logs["d_weight"].item() == 0
    notes = [r.getMessage() for r in caplog.records if r.name == "wfvae.losses"]
    assert sum("no last_layer" in m for m in notes) == 1
    assert sum("validation" in m for m in notes) == 1


def test_gan_with_patch_discriminator_and_wfvae_last_layer():
    from wfvae.model import WFVAE, wfvae_config

    torch.manual_seed(0)
    net = WFVAE(**wfvae_config("tiny"))
    disc = PatchDiscriminator3D(ndf=8, n_layers=3, norm="group")
    loss_fn = WFVAELoss(perceptual_weight=0.0, disc=disc, disc_start=0)
    x = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    out = net(x, sample_posterior=True)
    total, logs = loss_fn.generator_loss(x, out, 0, last_layer=net.get_last_layer())
    assert logs["wavelet"].item() > 0 and logs["kl"].item() > 0
    assert 0 < logs["d_weight"].item() <= 0.5 * 1e4
    total.backward()
    # the generator step trains the generator, not the discriminator
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.requires_grad for p in disc.parameters())
    assert net.get_last_layer().grad is not None
    d_loss, d_logs = loss_fn.discriminator_loss(x, out.recon.detach(), 0)
    d_loss.backward()
    assert all(p.grad is not None for p in disc.parameters())
    assert net.get_last_layer().grad.abs().sum() > 0 and torch.isfinite(d_loss)
