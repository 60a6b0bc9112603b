"""Chunked (streaming) encode / decode equal the full pass, for any length, call by call."""

from __future__ import annotations

import pytest
import torch

from wfvae import WFVAE, ChunkCache, wfvae_config

torch.set_num_threads(2)

TOL = 1e-5


def _perturb(model: WFVAE, seed: int) -> WFVAE:
    # Default LayerNorm affine is the identity and biases are 0: give every tensor structure
    # (the fixture's recipe), keeping activations O(1).
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            std = p.std().item() if p.numel() > 1 else 0.0
            p.add_((0.05 * std if std > 0 else 0.1) * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> WFVAE:
    torch.manual_seed(0)
    return _perturb(WFVAE(**wfvae_config("tiny")), 1)


def _video(t: int, seed: int, h: int = 32, w: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.tanh(torch.randn(1, 3, t, h, w, generator=g))


def _check_length(model: WFVAE, t: int, enc_chunks: list[int], dec_chunks: list[int]) -> None:
    x = _video(t, seed=t)
    with torch.no_grad():
        full = model.encode(x)
        z = full.posterior.mean
        video = model.decode(z).video
        assert video.shape == x.shape
        for c in enc_chunks:
            post = model.encode(x, chunk_size=c).posterior
            err = max(
                (post.mean - z).abs().max().item(),
                (post.logvar - full.posterior.logvar).abs().max().item(),
            )
            assert err <= TOL, f"T={t} encode chunk {c}: {err}"
        for c in dec_chunks:
            err = (model.decode(z, chunk_size=c).video - video).abs().max().item()
            assert err <= TOL, f"T={t} decode chunk {c}: {err}"


# T = 65 and 129 take well under a second with the tiny model: kept in the default set.
@pytest.mark.parametrize(
    ("t", "enc_chunks", "dec_chunks"),
    [
        (9, [4, 8], [1, 2]),
        (17, [4, 8, 12], [1, 2, 3]),
        (33, [4, 8, 16, 20], [1, 2, 3, 5]),
        (65, [4, 8, 24], [1, 2, 7]),
        (129, [4, 16, 36], [1, 2, 5]),
    ],
)
def test_chunked_equals_full(
    model: WFVAE, t: int, enc_chunks: list[int], dec_chunks: list[int]
) -> None:
    _check_length(model, t, enc_chunks, dec_chunks)


def test_no_length_lock_and_independent_calls(model: WFVAE) -> None:
    a, b = _video(17, 5), _video(9, 6)
    with torch.no_grad():
        za = model.encode(a, chunk_size=4).posterior.mean
        zb = model.encode(b, chunk_size=4).posterior.mean  # another length right after
        za2 = model.encode(a, chunk_size=8).posterior.mean
        assert (zb - model.encode(b).posterior.mean).abs().max() <= TOL
        assert (za - za2).abs().max() <= TOL
        va = model.decode(za, chunk_size=2).video
        vb = model.decode(zb, chunk_size=1).video
        assert (vb - model.decode(zb).video).abs().max() <= TOL
        assert (va - model.decode(za, chunk_size=2).video).abs().max() == 0


def test_cache_stays_flat_as_length_grows(model: WFVAE) -> None:
    peaks_enc, peaks_dec = [], []
    with torch.no_grad():
        for t in (17, 33, 65):
            x = _video(t, t)
            cache = ChunkCache()
            z = model.encode(x, chunk_size=4, cache=cache).posterior.mean
            peaks_enc.append(cache.peak_nbytes)
            model.decode(z, chunk_size=2, cache=cache)
            peaks_dec.append(cache.peak_nbytes)
    # Only a few frames of context per layer: independent of the clip length.
    assert peaks_enc[0] > 0 and len(set(peaks_enc)) == 1, peaks_enc
    assert peaks_dec[0] > 0 and len(set(peaks_dec)) == 1, peaks_dec


def test_chunked_with_pad_policy_batch_and_non_square() -> None:
    torch.manual_seed(3)
    m = _perturb(WFVAE(**wfvae_config("tiny", frames_policy="pad")), 4)
    x = torch.tanh(torch.randn(2, 3, 14, 16, 24))
    with torch.no_grad():
        enc = m.encode(x)
        enc_c = m.encode(x, chunk_size=4)
        assert enc.num_frames == enc_c.num_frames == 14
        assert (enc.posterior.mean - enc_c.posterior.mean).abs().max() <= TOL
        z = enc.posterior.mean
        full = m.decode(z, num_frames=14).video
        chunked = m.decode(z, chunk_size=2, num_frames=14).video
        assert full.shape == chunked.shape == x.shape
        assert (full - chunked).abs().max() <= TOL


def test_chunk_argument_errors(model: WFVAE) -> None:
    x = _video(9, 0)
    with pytest.raises(ValueError, match="multiple of 4"):
        model.encode(x, chunk_size=6)
    with pytest.raises(ValueError, match="multiple of 4"):
        model.encode(x, chunk_size=2)
    z = torch.zeros(1, 4, 3, 4, 4)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        model.decode(z, chunk_size=0)
    gn = WFVAE(
        **wfvae_config(
            "tiny",
            norm_type="groupnorm",
            base_channels=32,
            encoder_energy_flow_hidden_size=32,
            decoder_energy_flow_hidden_size=32,
        )
    )
    with pytest.raises(ValueError, match="layernorm"):
        gn.encode(x, chunk_size=4)


def test_short_chunks_stay_on_onednn(model: WFVAE) -> None:
    """Batch-1 fp32 chunks of 1-2 latent frames are small enough for PyTorch's heuristic to
    pick its slow im2col conv3d; our causal convs must keep oneDNN (same kernel as the full
    pass), which is what keeps chunked decode as fast as a full one."""
    z = torch.randn(1, model.latent_dim, 5, 4, 4)
    with torch.no_grad(), torch.profiler.profile() as prof:
        model.decode(z, chunk_size=1)
    names = {e.name for e in prof.events()}
    assert "aten::mkldnn_convolution" in names
    assert "aten::slow_conv3d_forward" not in names


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_flop_counter_counts_direct_onednn_convs(model: WFVAE) -> None:
    """FlopCounterMode counts our direct oneDNN convs as it counts aten.convolution (what
    F.conv3d reaches with oneDNN switched off), and a chunked decode counts as a full one."""
    from torch.utils.flop_counter import FlopCounterMode

    z = torch.randn(1, model.latent_dim, 5, 4, 4)

    def count(chunk: int | None) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.decode(z, chunk_size=chunk)
        return counter.get_total_flops()

    with torch.backends.mkldnn.flags(enabled=False):
        via_aten_convolution = count(None)
    # Within 0.1 %: with oneDNN off a few non-conv ops take other kernels.
    assert count(None) == pytest.approx(via_aten_convolution, rel=1e-3)
    assert count(1) == pytest.approx(via_aten_convolution, rel=1e-3)
