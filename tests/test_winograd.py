"""Winograd F(2x2, 3x3) convolution (wfvae/winograd.py) against PyTorch's direct convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import wfvae.winograd as winograd
from wfvae.model import WFVAE, wfvae_config
from wfvae.winograd import winograd_applies, winograd_conv3d


@pytest.mark.parametrize(
    ("batch", "kt", "bias", "channels_last"),
    [(1, 3, True, True), (2, 3, False, False), (2, 1, True, True), (1, 2, True, False)],
)
@pytest.mark.parametrize("hw", [(8, 12), (6, 9), (3, 2)])  # whole tiles, partial tiles, one tile
def test_matches_conv3d_and_its_gradients_in_float64(batch, kt, bias, channels_last, hw):
    torch.manual_seed(0)
    x = torch.randn(batch, 5, kt + 3, *hw, dtype=torch.float64)
    w = torch.randn(4, 5, kt, 3, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64) if bias else None
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
        w = w.contiguous(memory_format=torch.channels_last_3d)
    params = [t.requires_grad_() for t in (x, w, b) if t is not None]
    ours = winograd_conv3d(x, w, b)
    ref = F.conv3d(x, w, b, padding=(0, 1, 1))
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(ref)
    for g_ours, g_ref in zip(
        torch.autograd.grad(ours, params, grad), torch.autograd.grad(ref, params, grad), strict=True
    ):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-12)


def test_float32_error_is_about_ten_times_the_direct_convs():
    """Against float64, F(4x4, 3x3)'s float32 error (rms, relative to the output's) stays within
    20x the direct conv's and 1e-5 (measured: 3.5e-6 against the direct 3.5e-7)."""
    torch.manual_seed(0)
    x = torch.randn(1, 256, 5, 8, 8, dtype=torch.float64)
    w = torch.randn(64, 256, 3, 3, 3, dtype=torch.float64) / 48
    exact = F.conv3d(x, w, padding=(0, 1, 1))

    def rms_error(y: torch.Tensor) -> float:
        return ((y.double() - exact).square().mean() / exact.square().mean()).sqrt().item()

    err_direct = rms_error(F.conv3d(x.float(), w.float(), padding=(0, 1, 1)))
    err_ours = rms_error(winograd_conv3d(x.float(), w.float()))
    assert err_ours <= 20 * err_direct
    assert err_ours <= 1e-5


def test_applies_only_where_it_computes_the_same_conv_and_pays():
    x = torch.randn(1, 256, 6, 32, 32)
    w = torch.randn(256, 256, 3, 3, 3)
    ok = ((1, 1, 1), (0, 1, 1), (1, 1, 1), 1)
    assert winograd_applies(x, w, *ok)
    assert not winograd_applies(x, w, (1, 2, 2), (0, 1, 1), (1, 1, 1), 1)  # strided
    assert not winograd_applies(x, w, (1, 1, 1), (1, 1, 1), (1, 1, 1), 1)  # time padding
    assert not winograd_applies(x, w, (1, 1, 1), (0, 0, 0), (1, 1, 1), 1)  # no space padding
    assert not winograd_applies(x, w, (1, 1, 1), (0, 1, 1), (1, 2, 2), 1)  # dilated
    assert winograd_applies(x[..., :31], w, *ok)  # any width: partial tiles
    assert not winograd_applies(x[:, :64], w[:, :64], *ok)  # too few channels for inference
    assert not winograd_applies(x[:, :, :3, :16, :16], w, *ok)  # too few output positions
    # Training at batch 1 takes it from fewer channels / positions (oneDNN's batch-1 backward
    # is slow there); at batch 2 that backward is fast and narrow convs stay direct.
    assert not winograd_applies(torch.randn(2, 32, 3, 16, 48).requires_grad_(), w[:32, :32], *ok)
    assert winograd_applies(torch.randn(2, 128, 3, 64, 64).requires_grad_(), w[:, :128], *ok)
    narrow, wn = torch.randn(1, 32, 3, 16, 48), w[:32, :32]  # 768 output positions
    assert not winograd_applies(narrow, wn, *ok)
    assert winograd_applies(narrow.clone().requires_grad_(), wn, *ok)
    assert winograd_applies(narrow, wn.clone().requires_grad_(), *ok)
    with torch.no_grad():
        assert not winograd_applies(narrow, wn.clone().requires_grad_(), *ok)
    assert not winograd_applies(x[:, :16].requires_grad_(), w[:, :16], *ok)
    assert not winograd_applies(x.bfloat16(), w.bfloat16(), *ok)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not winograd_applies(x, w, *ok)
    # Not while torch.compile traces (compile=true): the compiler picks its own kernels.
    seen = []

    @torch.compile(backend="eager", fullgraph=True)
    def traced(x):
        seen.append(winograd_applies(x, w, *ok))
        return x + 1

    traced(x)
    assert seen == [False]


def test_refuses_shapes_it_cannot_compute():
    with pytest.raises(ValueError, match=r"\(1, 4, 2, 5, 6\)"):
        winograd_conv3d(torch.randn(1, 4, 2, 5, 6), torch.randn(2, 4, 3, 3, 3))
    with pytest.raises(ValueError, match="weight"):
        winograd_conv3d(torch.randn(1, 4, 3, 6, 6), torch.randn(2, 4, 3, 5, 5))


def _assert_close_to_scale(a: torch.Tensor, b: torch.Tensor, tol: float, what: str = "") -> None:
    """max |a - b| <= tol * max |b|: float32 Winograd's error scales with the values (a floor of
    1e-6 for gradients that are zero in exact arithmetic, e.g. attention's key bias)."""
    err, scale = (a - b).abs().max().item(), max(b.abs().max().item(), 1e-6)
    assert err <= tol * scale, f"{what}: max diff {err:.2e} against scale {scale:.2e}"


def _tiny_vae(algorithm: str) -> WFVAE:
    torch.manual_seed(0)
    return WFVAE(**wfvae_config("tiny", conv_algorithm=algorithm))


def test_model_trains_and_streams_the_same_with_winograd(monkeypatch):
    """With the thresholds lowered so that every stride-1 3x3 conv of a tiny WF-VAE takes
    Winograd: the same reconstruction and gradients as conv_algorithm="direct", and chunked
    decoding still equals the full decode."""
    for limits in ("TRAINING_MIN", "TRAINING_MIN_BATCH1", "INFERENCE_MIN"):
        monkeypatch.setattr(winograd, limits, (1, 1))
    calls = []
    apply = winograd._OutputTransform.apply
    monkeypatch.setattr(
        winograd._OutputTransform, "apply", lambda *a: calls.append(1) or apply(*a), raising=True
    )
    x = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    runs = {}
    for algorithm in ("auto", "direct"):
        vae = _tiny_vae(algorithm)
        out = vae(x, sample_posterior=False)
        out.recon.square().mean().backward()
        runs[algorithm] = (out.recon.detach(), {k: p.grad for k, p in vae.named_parameters()})
        if algorithm == "auto":
            assert len(calls) > 10
            n_calls = len(calls)
    assert len(calls) == n_calls  # "direct" never takes it
    _assert_close_to_scale(runs["auto"][0], runs["direct"][0], 1e-4)
    for k, g in runs["direct"][1].items():
        _assert_close_to_scale(runs["auto"][1][k], g, 1e-3, k)

    vae = _tiny_vae("auto").eval()
    with torch.no_grad():
        z = vae.encode(x).posterior.mode()
        full = vae.decode(z).video
        chunked = vae.decode(z, chunk_size=1).video
    _assert_close_to_scale(chunked, full, 1e-4)


def test_conv_algorithm_is_checked():
    with pytest.raises(ValueError, match="conv_algorithm"):
        _tiny_vae("winograd")


def test_a_weight_only_gradient_skips_the_input_transforms_backward(monkeypatch):
    """The GAN's adaptive weight asks for the last layer's weight gradient alone: the input
    gradient (the costly half of the backward) must not be computed for it."""
    calls = []
    grad_fn = winograd._input_transform_grad
    monkeypatch.setattr(
        winograd, "_input_transform_grad", lambda *a: calls.append(1) or grad_fn(*a)
    )
    x = torch.randn(1, 4, 5, 8, 8, requires_grad=True)
    w = torch.randn(3, 4, 3, 3, 3, requires_grad=True)
    y = winograd_conv3d(x * 1, w)
    (gw,) = torch.autograd.grad(y.sum(), w, retain_graph=True)
    assert calls == []
    torch.testing.assert_close(
        gw, torch.autograd.grad(F.conv3d(x, w, padding=(0, 1, 1)).sum(), w)[0], rtol=1e-4, atol=1e-4
    )
    y.sum().backward()
    assert calls == [1]


def test_benchmark_counts_winograd_convs_as_the_direct_convs_they_compute(monkeypatch):
    """FLOP counts (and so GFLOP/s and fractions of the conv peak) use the direct conv's count:
    FlopCounterMode alone would count Winograd's 4x smaller GEMMs."""
    from scripts.bench.harness import count_flops
    from scripts.bench.winograd import conv_case

    monkeypatch.setattr(winograd, "INFERENCE_MIN", (1, 1))
    vae = _tiny_vae("auto").eval()
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1

    def run():
        with torch.no_grad():
            vae(x, sample_posterior=False)

    vae.set_conv_algorithm("direct")
    direct = count_flops(run)
    vae.set_conv_algorithm("auto")
    assert count_flops(run) < direct  # Winograd's own GEMMs
    assert count_flops(run, vae) == direct
    assert vae.config["conv_algorithm"] == "auto"  # restored after counting

    row = conv_case(64, 64, 5, 8, 12, 3, 1, 1)
    assert row["forward_gflop"] == pytest.approx(2 * 64 * 3 * 8 * 12 * 64 * 27 / 1e9)
    assert row["max_rel_diff"] < 1e-4
    assert row["train_direct_s"] > 0 and row["train_winograd_s"] > 0


def test_reused_workspace_leaves_no_stale_values_between_calls():
    """Without a graph the transforms run in reused scratch buffers: calls of other sizes in
    between (larger, smaller, partial tiles) must not leak into a result, and results stay
    valid while later calls run."""
    torch.manual_seed(0)
    shapes = [(2, 6, 5, 13, 11), (1, 6, 3, 4, 4), (1, 6, 7, 16, 20), (2, 6, 5, 13, 11)]
    w = torch.randn(3, 6, 3, 3, 3, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    with torch.no_grad():
        pairs = []
        for shape in shapes:
            x = torch.randn(shape, dtype=torch.float64)
            pairs.append((winograd_conv3d(x, w, b), F.conv3d(x, w, b, padding=(0, 1, 1))))
    for ours, ref in pairs:
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    winograd.clear_workspace()
    x = torch.randn(shapes[0], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            winograd_conv3d(x, w), F.conv3d(x, w, padding=(0, 1, 1)), rtol=1e-12, atol=1e-12
        )
