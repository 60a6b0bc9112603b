"""Parity with the published WF-VAE code through its fixture (tiny model) and key list (L)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import REFERENCE_DIR, require_reference
from wfvae import WFVAE
from wfvae.reference import (
    REFERENCE_DEFAULTS,
    convert_reference_state_dict,
    reference_config,
    reference_haar_entries,
    translate_config,
)

torch.set_num_threads(2)

REF_DIR = REFERENCE_DIR / "wfvae"
ROOT = Path(__file__).resolve().parents[1]
GROUPNORM_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "wfvae_v1_groupnorm.pt"

# Latents / wavelet coefficients and decoded video (fp32 CPU float noise is ~1e-6 / ~3e-6).
TOL_LATENT = 1e-5
TOL_VIDEO = 3e-5


@pytest.fixture(scope="module")
def fixture() -> dict:
    path = REF_DIR / "wfvae_v1_tiny.pt"
    if not path.exists():
        require_reference(path)
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def model(fixture: dict) -> WFVAE:
    return WFVAE.from_reference(fixture["state_dict"], json.loads(fixture["config"])).eval()


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@torch.no_grad()
def test_full_encode_decode_parity(model: WFVAE, fixture: dict) -> None:
    enc = model.encode(fixture["x"])
    assert _maxdiff(enc.posterior.mean, fixture["posterior_mean"]) <= TOL_LATENT
    assert _maxdiff(enc.posterior.logvar, fixture["posterior_logvar"]) <= TOL_LATENT
    assert _maxdiff(enc.w2, fixture["enc_w2"]) <= TOL_LATENT
    assert _maxdiff(enc.w3, fixture["enc_w3"]) <= TOL_LATENT
    dec = model.decode(fixture["posterior_mean"])
    assert _maxdiff(dec.video, fixture["recon"]) <= TOL_VIDEO
    assert _maxdiff(dec.w2_hat, fixture["dec_w2"]) <= TOL_LATENT
    assert _maxdiff(dec.w3_hat, fixture["dec_w3"]) <= TOL_LATENT


@torch.no_grad()
def test_long_full_and_chunked_parity(model: WFVAE, fixture: dict) -> None:
    x, z = fixture["x_long"], fixture["posterior_mean_long"]
    enc = model.encode(x)
    assert _maxdiff(enc.posterior.mean, fixture["posterior_mean_long"]) <= TOL_LATENT
    assert _maxdiff(enc.posterior.logvar, fixture["posterior_logvar_long"]) <= TOL_LATENT
    assert _maxdiff(model.decode(z).video, fixture["recon_long"]) <= TOL_VIDEO
    enc_c = model.encode(x, chunk_size=fixture["t_chunk_enc"])
    assert enc_c.w2 is None and enc_c.w3 is None
    assert _maxdiff(enc_c.posterior.mean, fixture["posterior_mean_long_chunked"]) <= TOL_LATENT
    assert _maxdiff(enc_c.posterior.logvar, fixture["posterior_logvar_long_chunked"]) <= TOL_LATENT
    dec_c = model.decode(z, chunk_size=fixture["t_chunk_dec"])
    assert _maxdiff(dec_c.video, fixture["recon_long_chunked"]) <= TOL_VIDEO
    # Chunk sizes that crash the reference (decoder chunk 1; last chunk of 1 latent frame).
    for chunk in (1, 3):
        assert _maxdiff(model.decode(z, chunk_size=chunk).video, fixture["recon_long"]) <= TOL_VIDEO


@torch.no_grad()
def test_forward_deterministic_matches_fixture(model: WFVAE, fixture: dict) -> None:
    out = model(fixture["x"], sample_posterior=False)
    assert _maxdiff(out.recon, fixture["recon"]) <= TOL_VIDEO
    assert _maxdiff(out.w2_hat, fixture["dec_w2"]) <= TOL_LATENT


def _seeded_weights(keys: list, haar_keys: set[str], seed: int) -> dict[str, torch.Tensor]:
    """The fixture's weight recipe (tests/fixtures/README.md): every non-Haar reference tensor in
    sorted key order, from one generator: N(0, 1/fan_in) for >= 2D, 1 + 0.1 N for 1D weights
    (norms), 0.1 N for biases."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in sorted(keys):
        if name in haar_keys:
            continue
        if len(shape) >= 2:
            w = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif name.endswith(".weight"):
            w = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            w = 0.1 * torch.randn(shape, generator=g)
        out[name] = w
    return out


def _seeded_video(seed: int) -> torch.Tensor:
    """The fixture's input ``[1, 3, 9, 32, 32]``: smooth noise with a per-frame brightness and
    contrast, so per-frame and clip-wide norm statistics differ."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(1, 3, 9, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(low, size=(9, 32, 32), mode="trilinear", align_corners=True)
    x = x + 0.1 * torch.randn(1, 3, 9, 32, 32, generator=g)
    ramp = torch.linspace(-0.6, 0.6, 9).view(1, 1, 9, 1, 1)
    gain = torch.linspace(0.5, 1.5, 9).view(1, 1, 9, 1, 1)
    return torch.tanh(gain * x + ramp)


@torch.no_grad()
def test_groupnorm_parity() -> None:
    """norm_type='groupnorm' (the published default): the published 2D ResNet blocks normalise
    every frame alone, the 3D blocks, attention and output norms the whole clip."""
    fx = torch.load(GROUPNORM_FIXTURE, weights_only=True)
    sd = _seeded_weights(fx["keys"], set(fx["haar_keys"]), fx["weight_seed"])
    sd.update(reference_haar_entries())
    model = WFVAE.from_reference(sd, json.loads(fx["config"])).eval()
    enc = model.encode(_seeded_video(fx["x_seed"]))
    assert _maxdiff(enc.posterior.mean, fx["posterior_mean"]) <= 1e-4
    assert _maxdiff(enc.posterior.logvar, fx["posterior_logvar"]) <= 1e-4
    # |recon| reaches 3.7 here: 1e-4 is still ~30x the float noise.
    assert _maxdiff(model.decode(fx["posterior_mean"]).video, fx["recon"]) <= 1e-4


def test_reference_haar_entries_match_fixture(fixture: dict) -> None:
    sd = fixture["state_dict"]
    haar = reference_haar_entries()
    assert len(haar) == 40
    for key, value in haar.items():
        assert torch.equal(sd[key], value), key


def test_unmapped_keys_are_errors(fixture: dict) -> None:
    cfg = json.loads(fixture["config"])
    sd = dict(fixture["state_dict"])
    sd["encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"encoder\.extra\.weight"):
        WFVAE.from_reference(sd, cfg)
    sd = dict(fixture["state_dict"])
    del sd["decoder.up1.1.conv.weight"]
    with pytest.raises(ValueError, match=r"decoder\.up1\.upsample\.conv\.weight"):
        WFVAE.from_reference(sd, cfg)
    sd = dict(fixture["state_dict"])
    del sd["decoder.inverse_wavelet_transform_l1.aa"]
    with pytest.raises(ValueError, match="Haar entries missing"):
        WFVAE.from_reference(sd, cfg)
    sd = dict(fixture["state_dict"])
    sd["encoder.wavelet_transform_in.g_conv.conv.weight"] = -sd[
        "encoder.wavelet_transform_in.g_conv.conv.weight"
    ]
    with pytest.raises(ValueError, match="differs from the reference kernel"):
        WFVAE.from_reference(sd, cfg)
    sd = dict(fixture["state_dict"])
    sd["encoder.conv_out.conv.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"shape of encoder\.conv_out\.bias"):
        WFVAE.from_reference(sd, cfg)


def test_translate_config_rejects_unsupported(fixture: dict) -> None:
    cfg = json.loads(fixture["config"])
    ours = translate_config(cfg)
    assert ours["haar_scale"] == "reference" and ours["latent_dim"] == 4
    with pytest.raises(ValueError, match="attention_type"):
        translate_config({**cfg, "attention_type": "AttnBlock3D"})
    with pytest.raises(ValueError, match="l1_dowmsample_block"):
        translate_config({**cfg, "l1_dowmsample_block": "Spatial2x3DDownsample"})
    with pytest.raises(ValueError, match="unknown keys"):
        translate_config({**cfg, "hidden_size": 3})
    with pytest.raises(ValueError, match="_class_name"):
        translate_config({**cfg, "_class_name": "WFVAE2Model"})


def test_wfvae_l_keys_and_parameter_counts() -> None:
    path = REF_DIR / "wfvae_l_keys.json"
    if not path.exists():
        require_reference(path)
    info = json.loads(path.read_text())
    cfg = translate_config(info["config"])
    with torch.device("meta"):
        model = WFVAE(**cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    ref = {name: torch.empty(shape, device="meta") for name, shape in info["keys"]}
    assert len(ref) == info["n_state_dict_entries"] == 244
    ours = convert_reference_state_dict(ref, cfg, expected, strict=True)
    assert set(ours) == set(expected)
    assert len(ours) + len(info["haar_keys"]) == len(ref)
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    n_dec = sum(p.numel() for p in model.decoder.parameters())
    assert n_enc == info["n_params_encoder_trainable"] == 84_586_912
    assert n_dec == info["n_params_decoder_trainable"] == 232_494_332


def test_reference_config_inverts_translate_config(fixture: dict) -> None:
    """Our presets name the published architectures: wfvae_l_16ch gives the released L config."""
    from wfvae import wfvae_config

    def ref_arch(cfg: dict) -> dict:
        full = {**REFERENCE_DEFAULTS, **cfg}
        return {k: full[k] for k in REFERENCE_DEFAULTS if k not in ("scale", "shift")}

    tiny = json.loads(fixture["config"])
    assert reference_config(translate_config(tiny)) == ref_arch(tiny)
    path = REF_DIR / "wfvae_l_keys.json"
    if not path.exists():
        require_reference(path)
    released = json.loads(path.read_text())["config"]
    assert reference_config(wfvae_config("wfvae_l_16ch")) == ref_arch(released)
    with pytest.raises(ValueError, match="base_channels"):
        reference_config({"latent_dim": 4})


def _convert_script():
    spec = importlib.util.spec_from_file_location(
        "convert_reference", ROOT / "scripts" / "convert_reference.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@torch.no_grad()
def test_convert_script_lightning_and_plain(tmp_path: Path, fixture: dict) -> None:
    script = _convert_script()
    src = REF_DIR / "wfvae_v1_tiny.pt"
    dst = tmp_path / "out.ckpt"
    assert script.main([str(src), str(dst)]) == 0
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt["wavecast"]["model"] == "wfvae"
    config = ckpt["wavecast"]["net_config"]
    model = WFVAE(**config).eval()
    sd = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()}
    assert all(k.startswith("net.") for k in ckpt["state_dict"])
    model.load_state_dict(sd, strict=True)
    recon = model.decode(fixture["posterior_mean"]).video
    assert _maxdiff(recon, fixture["recon"]) <= TOL_VIDEO
    plain = tmp_path / "plain.pt"
    assert script.main([str(src), str(plain), "--plain"]) == 0
    sd_plain = torch.load(plain, weights_only=True)
    assert sd_plain.keys() == sd.keys()
    assert not list(tmp_path.glob("*.tmp"))
    # A file without a usable config is an error, not a partial output.
    bad = tmp_path / "bad.ckpt"
    assert script.main([str(REF_DIR / "haar.pt"), str(bad)]) == 1
    assert not bad.exists()
