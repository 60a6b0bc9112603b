"""WFVAE public API: shapes, input validation, frames policy, posterior, training hooks."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from wfvae import WFVAE, DiagonalGaussian, wfvae_config

torch.set_num_threads(2)


def _tiny(**overrides) -> WFVAE:
    torch.manual_seed(0)
    model = WFVAE(**wfvae_config("tiny", **overrides))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            std = p.std().item() if p.numel() > 1 else 0.0
            p.add_((0.05 * std if std > 0 else 0.1) * torch.randn(p.shape, generator=g))
    return model


def test_forward_shapes_batch_and_non_square() -> None:
    model = _tiny().eval()
    x = torch.tanh(torch.randn(2, 3, 9, 16, 40))
    with torch.no_grad():
        out = model(x, sample_posterior=False)
    assert out.recon.shape == x.shape
    assert out.z.shape == (2, 4, 3, 2, 5)
    assert out.posterior.mean.shape == out.posterior.logvar.shape == (2, 4, 3, 2, 5)
    assert out.w2.shape == out.w2_hat.shape == (2, 12, 5, 4, 10)
    assert out.w3.shape == out.w3_hat.shape == (2, 24, 3, 2, 5)
    assert torch.equal(out.z, out.posterior.mean)
    # Batch items are independent.
    with torch.no_grad():
        single = model(x[1:], sample_posterior=False).recon
    assert (single - out.recon[1:]).abs().max() <= 1e-5


def test_encoder_is_causal() -> None:
    model = _tiny().eval()
    x = torch.tanh(torch.randn(1, 3, 17, 16, 16))
    with torch.no_grad():
        z_full = model.encode(x).posterior.mean
        z_head = model.encode(x[:, :, :9]).posterior.mean
        v_full = model.decode(z_full).video
        v_head = model.decode(z_full[:, :, :3]).video
    # The first 9 frames determine the first 3 latents exactly (causal convs).
    assert (z_full[:, :, :3] - z_head).abs().max() <= 1e-5
    # Decoding is causal up to the time interpolation's one-frame look-ahead: level-2 frame 4
    # is 0.75 z2 + 0.25 z3 (clamped to z2 when z3 is absent) and becomes video frames 7 and 8;
    # frames 0..6 do not depend on latents after z2.
    assert (v_full[:, :, :7] - v_head[:, :, :7]).abs().max() <= 1e-5
    assert (v_full[:, :, 7] - v_head[:, :, 7]).abs().max() > 1e-4


def test_check_input_messages() -> None:
    model = _tiny()
    with pytest.raises(ValueError, match=r"T \(dim 2\) = 16 .*13 and 17.*frames_policy='pad'"):
        model.check_input(torch.zeros(1, 3, 16, 16, 16))
    with pytest.raises(ValueError, match=r"H \(dim 3\) = 20"):
        model.check_input(torch.zeros(1, 3, 9, 20, 16))
    with pytest.raises(ValueError, match=r"W \(dim 4\) = 12"):
        model.check_input(torch.zeros(1, 3, 9, 16, 12))
    with pytest.raises(ValueError, match="3 channels"):
        model.check_input(torch.zeros(1, 4, 9, 16, 16))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        model.check_input(torch.zeros(3, 9, 16, 16))
    with pytest.raises(ValueError, match="floating-point"):
        model.check_input(torch.zeros(1, 3, 9, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"z \[B, 4, t, h, w\]"):
        model.decode(torch.zeros(1, 5, 3, 2, 2))
    model.check_input(torch.zeros(1, 3, 1, 8, 8))  # a single image is a valid clip
    with pytest.raises(ValueError, match="frames_policy"):
        WFVAE(**wfvae_config("tiny", frames_policy="drop"))


def test_pad_policy_replicates_last_frame_and_crops() -> None:
    model = _tiny(frames_policy="pad").eval()
    x = torch.tanh(torch.randn(1, 3, 11, 16, 16))
    padded = torch.cat([x, x[:, :, -1:].expand(-1, -1, 2, -1, -1)], dim=2)
    with torch.no_grad():
        out = model(x, sample_posterior=False)
        ref = model(padded, sample_posterior=False)
    assert out.recon.shape == x.shape
    assert (out.recon - ref.recon[:, :, :11]).abs().max() <= 1e-6
    assert (out.z - ref.z).abs().max() <= 1e-6
    for t in (1, 5, 9):  # valid lengths pass through unchanged
        with torch.no_grad():
            assert model(torch.zeros(1, 3, t, 8, 8)).recon.shape[2] == t


def test_diagonal_gaussian_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(2, 4, 3, 2, 2, generator=g)
    logvar = torch.randn(2, 4, 3, 2, 2, generator=g)
    post = DiagonalGaussian(mean, logvar)
    ref = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    assert torch.allclose(post.kl(), ref.sum(dim=(1, 2, 3, 4)), rtol=1e-5)
    assert post.kl().shape == (2,)
    assert torch.allclose(post.kl_mean(), ref.mean(), rtol=1e-5)
    assert torch.allclose(post.std, torch.exp(0.5 * logvar)) and torch.allclose(
        post.var, logvar.exp()
    )
    assert torch.equal(post.mode(), mean)
    s1 = post.sample(torch.Generator().manual_seed(7))
    s2 = post.sample(torch.Generator().manual_seed(7))
    assert torch.equal(s1, s2) and not torch.equal(s1, mean)
    big = DiagonalGaussian(torch.zeros(20000), torch.full((20000,), math.log(4.0)))
    s = big.sample(torch.Generator().manual_seed(1))
    assert abs(s.std().item() - 2.0) < 0.05 and abs(s.mean().item()) < 0.05
    clamped = DiagonalGaussian(torch.zeros(3), torch.tensor([-100.0, 0.0, 100.0]))
    assert clamped.logvar.tolist() == [-30.0, 0.0, 20.0]
    with pytest.raises(ValueError, match="differ in shape"):
        DiagonalGaussian(torch.zeros(2), torch.zeros(3))


def test_posterior_sample_is_randn_in_any_layout_and_compiles_with_dynamic_shapes() -> None:
    # eps is torch.randn(shape, generator)'s, element for element, also for a channels-last
    # mean; and torch.compile traces the sampling when shapes change between calls (validation
    # clips of another length), where randn with a generator argument fails.
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(2, 2, 4, 3, 5, 5, generator=g).unbind(0)
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        post = DiagonalGaussian(
            mean.contiguous(memory_format=layout), logvar.contiguous(memory_format=layout)
        )
        eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
        expected = mean + torch.exp(0.5 * logvar) * eps
        torch.testing.assert_close(post.sample(torch.Generator().manual_seed(3)), expected)

    @torch.compile(backend="aot_eager", dynamic=True, fullgraph=True)
    def sample(m: torch.Tensor) -> torch.Tensor:
        return DiagonalGaussian(m, torch.zeros_like(m)).sample()

    for shape in ((1, 4, 3, 5, 5), (2, 4, 2, 3, 3)):
        assert sample(torch.zeros(shape)).shape == shape


def test_backward_last_layer_and_checkpointing_grads() -> None:
    x = torch.tanh(torch.randn(1, 3, 5, 16, 16))
    grads = []
    for ckpt in (False, True):
        model = _tiny(gradient_checkpointing=ckpt).train()
        out = model(x, generator=torch.Generator().manual_seed(0))
        loss = (out.recon - x).abs().mean() + 1e-3 * out.posterior.kl_mean()
        loss = loss + (out.w2 - out.w2_hat).abs().mean() + (out.w3 - out.w3_hat).abs().mean()
        last = model.get_last_layer()
        assert last is model.decoder.conv_out.weight
        (g_last,) = torch.autograd.grad(loss, last, retain_graph=True)
        assert g_last.abs().sum() > 0
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        assert all(torch.isfinite(g).all() for g in grads[-1].values())
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-6, rtol=1e-4), name


def test_channels_last_and_bf16_autocast() -> None:
    model = _tiny().eval()
    x = torch.tanh(torch.randn(1, 3, 9, 32, 32))
    with torch.no_grad():
        ref = model(x, sample_posterior=False).recon
        model_cl = model.to(memory_format=torch.channels_last_3d)
        cl = model_cl(x.contiguous(memory_format=torch.channels_last_3d), sample_posterior=False)
        assert (cl.recon - ref).abs().max() <= 1e-5
        assert cl.recon.is_contiguous()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = model_cl(x, sample_posterior=False)
            z = model_cl.encode(x, chunk_size=4).posterior.mean
            chunked = model_cl.decode(z, chunk_size=1).video
    assert bf.recon.dtype == torch.float32 and bf.posterior.mean.dtype == torch.float32
    assert bf.w2_hat.dtype == bf.w3_hat.dtype == bf.w2.dtype == torch.float32
    rel = (bf.recon - ref).norm() / ref.norm()
    assert rel < 0.05, rel
    assert chunked.shape == x.shape and torch.isfinite(chunked).all()


def test_state_dict_round_trip_and_no_haar_keys() -> None:
    model = _tiny()
    sd = model.state_dict()
    assert not any("haar" in k for k in sd)
    other = WFVAE(**wfvae_config("tiny"))
    other.load_state_dict(sd, strict=True)
    x = torch.tanh(torch.randn(1, 3, 5, 8, 8))
    with torch.no_grad():
        a = model.eval()(x, sample_posterior=False).recon
        b = other.eval()(x, sample_posterior=False).recon
    assert torch.equal(a, b)


def test_configs() -> None:
    assert set(WFVAE.configs) >= {"wfvae_l_16ch", "wfvae_s", "bc64", "tiny"}
    with torch.device("meta"):
        bc64 = WFVAE(**wfvae_config("bc64"))
    n = sum(p.numel() for p in bc64.parameters())
    assert 36e6 < n < 38e6  # the spec's "bc 64, efs 64 (37 M)"
    with pytest.raises(ValueError, match="unknown WF-VAE config"):
        wfvae_config("huge")
    assert wfvae_config("tiny", latent_dim=2)["latent_dim"] == 2


def test_bf16_weights_inference_with_chunks() -> None:
    """The low-memory inference recipe of the README: bf16 weights and input, channels-last."""
    model = _tiny().eval()
    x = torch.tanh(torch.randn(1, 3, 9, 32, 32))
    with torch.no_grad():
        ref = model(x, sample_posterior=False).recon
        fast = model.to(memory_format=torch.channels_last_3d).to(torch.bfloat16)
        xb = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
        z = fast.encode(xb).posterior.mode()
        recon = fast.decode(z).video
        chunked = fast.decode(fast.encode(xb, chunk_size=4).posterior.mode(), chunk_size=1).video
    assert recon.shape == chunked.shape == x.shape
    rel = (recon.float() - ref).norm() / ref.norm()
    assert rel < 0.05, rel
    assert (chunked.float() - recon.float()).abs().max() < 0.05


@pytest.mark.parametrize("grad", [False, True])
def test_compiles_as_one_graph(grad: bool) -> None:
    # compile=true / eval.py compile: one graph without breaks, in training and in no-grad
    # evaluation. A break in every conv (the no-grad SiLU written into the padded buffer
    # through an out= view) made dynamo recompile per shape until its limit, then run eager.
    model = _tiny().train(grad)
    x = torch.tanh(torch.randn(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0)))
    with torch.set_grad_enabled(grad):
        eager = model(x, sample_posterior=False).recon
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        out = compiled(x, sample_posterior=False).recon
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
