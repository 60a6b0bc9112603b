"""Streaming fusion and the warping error, against closed forms and the synthetic ground truth."""

from __future__ import annotations

import pytest
import torch

from temporal.module import TemporalFusionModule
from temporal.streaming import perturb_latents, stream_decode, warping_error
from temporal.temporal_module import TemporalModule
from wavecast.config import ConfigError
from wavecast.data.flow_pairs import KittiFlowPairs


class _IdentityVAE(torch.nn.Module):
    """decode(z [B, C, 1, h, w]) returns z as the 'video': fusion is then visible directly."""

    def decode(self, z: torch.Tensor):
        return type("Out", (), {"video": z})()


def test_stream_decode_is_the_online_recursion() -> None:
    # Scalar alpha, no refiner, identity warp: z_f[t] = a z_f[t-1] + (1 - a) z[t].
    a = 0.3
    tm = TemporalModule(2, alpha_init=a, refiner=False).eval()
    z = torch.randn(5, 2, 3, 4, generator=torch.Generator().manual_seed(0))
    out = stream_decode(_IdentityVAE(), z, tm, flows=None)
    expected = [z[0]]
    for t in range(1, 5):
        expected.append(a * expected[-1] + (1 - a) * z[t])
    torch.testing.assert_close(out, torch.stack(expected))
    torch.testing.assert_close(stream_decode(_IdentityVAE(), z, None), z)


def test_perturbation_strength_and_repeatability() -> None:
    z = torch.randn(4, 8, 16, 16, generator=torch.Generator().manual_seed(1)) * 3.0
    p = perturb_latents(z, 0.25, latent_std=3.0, seed=7)
    assert torch.equal(p, perturb_latents(z, 0.25, latent_std=3.0, seed=7))
    assert (p - z).std().item() == pytest.approx(0.75, rel=0.05)
    assert torch.equal(perturb_latents(z, 0.0, latent_std=3.0), z)


def test_warping_error_of_the_synthetic_video_with_its_true_flow(synthetic_kitti) -> None:
    pairs = KittiFlowPairs(synthetic_kitti, ["2011_09_26_drive_0002_sync"], image_size=(64, 192))
    items = [pairs[i] for i in range(6)]
    frames = torch.stack([items[0]["frames"][0]] + [it["frames"][1] for it in items])
    flows = torch.stack([it["flow"] for it in items])
    valid = torch.stack([it["flow_valid"] for it in items])
    err = warping_error(frames, flows, valid)
    # Carrying frame t-1 along the true flow explains frame t up to resampling blur; the same
    # frames carried along a zero flow (the camera moves) do not; nor do frames in reverse order.
    still = warping_error(frames, torch.zeros_like(flows), valid)
    reverse = warping_error(frames.flip(0), flows, valid)
    assert err < 0.05
    assert err < 0.6 * still
    assert err < 0.6 * reverse
    # A constant frame has no warping error wherever it is defined.
    flat = torch.zeros_like(frames)
    assert warping_error(flat, flows, valid) == 0


def test_z_noise_perturbs_only_the_current_latent_and_is_checked() -> None:
    from wfvae.model import WFVAE

    vae = WFVAE(latent_dim=4, base_channels=32, encoder_num_resblocks=1, decoder_num_resblocks=1,
                encoder_energy_flow_hidden_size=8, decoder_energy_flow_hidden_size=8)  # fmt: skip
    opt = torch.optim.AdamW
    with pytest.warns(UserWarning, match="vae_ckpt is null"):
        m = TemporalFusionModule(vae, TemporalModule(4), opt, z_noise=0.5)
    z = torch.randn(2, 4, 3, 5)
    assert torch.equal(m.perturb(z, seed=3), m.perturb(z, seed=3))
    assert not torch.equal(m.perturb(z, seed=3), z)
    with pytest.raises(ConfigError, match="flow_predictor"):
        TemporalFusionModule(vae, TemporalModule(4), opt, flow_input="predicted")
    with pytest.raises(ConfigError, match="z_noise"):
        TemporalFusionModule(vae, TemporalModule(4), opt, z_noise=-1.0)
