"""Haar transforms against the reference fixture (haar.pt) and closed-form properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REFERENCE_DIR, require_reference
from wfvae.causal_conv import ChunkCache
from wfvae.haar import (
    HaarWavelet2D,
    HaarWavelet3D,
    InverseHaarWavelet2D,
    InverseHaarWavelet3D,
    haar_kernels_2d,
    haar_kernels_3d,
)

torch.set_num_threads(2)

FIXTURE = REFERENCE_DIR / "wfvae" / "haar.pt"


@pytest.fixture(scope="module")
def ref() -> dict:
    if not FIXTURE.exists():
        require_reference(FIXTURE)
    return torch.load(FIXTURE, weights_only=True)


def test_kernels_match_reference(ref: dict) -> None:
    assert torch.equal(haar_kernels_3d("reference"), ref["haar3d_kernels"])
    assert torch.equal(haar_kernels_3d("reference"), ref["ihaar3d_kernels"])
    assert torch.equal(haar_kernels_2d(), ref["haar2d_kernels"])
    assert torch.equal(haar_kernels_2d(), ref["ihaar2d_kernels"])
    assert haar_kernels_3d("reference")[0, 0, 0, 0].item() == ref["haar3d_scale_fp32"]


def test_2d_forward_inverse_match_reference(ref: dict) -> None:
    fwd, inv = HaarWavelet2D(3), InverseHaarWavelet2D(3)
    assert (fwd(ref["x2d"]) - ref["haar2d"]).abs().max() <= 1e-6
    assert (inv(ref["haar2d"]) - ref["ihaar2d"]).abs().max() <= 1e-6
    assert (fwd(ref["x2d_video"]) - ref["haar2d_video"]).abs().max() <= 1e-6
    assert (inv(ref["haar2d_video"]) - ref["ihaar2d_video"]).abs().max() <= 1e-6


def test_3d_forward_inverse_match_reference(ref: dict) -> None:
    fwd, inv = HaarWavelet3D(3, "reference"), InverseHaarWavelet3D(3, "reference")
    assert (fwd(ref["x3d"]) - ref["haar3d"]).abs().max() <= 1e-6
    assert (inv(ref["haar3d"]) - ref["ihaar3d"]).abs().max() <= 1e-6


def test_3d_reference_round_trip_gain(ref: dict) -> None:
    x = ref["x3d"]
    y = InverseHaarWavelet3D(3, "reference")(HaarWavelet3D(3, "reference")(x))
    gain = 8 * 0.3536**2
    assert (y - gain * x).abs().max() <= 1e-6
    assert (y - x).abs().max() > 1e-4  # the reference constant is not orthonormal


@pytest.mark.parametrize("t", [1, 3, 9])
def test_3d_exact_round_trip_and_parseval(t: int) -> None:
    g = torch.Generator().manual_seed(t)
    x = torch.rand(2, 3, t, 8, 12, generator=g) * 2 - 1
    w = HaarWavelet3D(3)(x)
    assert w.shape == (2, 24, (t + 1) // 2, 4, 6)
    assert (InverseHaarWavelet3D(3)(w) - x).abs().max() <= 1e-6
    # Orthonormal on the causally padded clip (frame 0 counted twice).
    energy_in = x.pow(2).sum() + x[:, :, :1].pow(2).sum()
    assert torch.allclose(w.pow(2).sum(), energy_in, rtol=1e-5)


def test_2d_exact_round_trip_and_parseval() -> None:
    x = torch.randn(2, 3, 5, 8, 16)
    w = HaarWavelet2D(3)(x)
    assert (InverseHaarWavelet2D(3)(w) - x).abs().max() <= 1e-6
    assert torch.allclose(w.pow(2).sum(), x.pow(2).sum(), rtol=1e-5)


def test_subband_major_layout_and_causal_first_frame() -> None:
    x = torch.randn(1, 3, 5, 8, 8)
    w = HaarWavelet3D(3)(x)
    padded = torch.cat([x[:, :, :1], x], dim=2)
    # Channels 0..C-1 are the all-lowpass band: 2 sqrt 2 x the 2x2x2 block mean, per channel.
    lll = F.avg_pool3d(padded, 2) * 2 * math.sqrt(2)
    assert (w[:, :3] - lll).abs().max() <= 1e-5
    # Bands 4..7 difference time: zero at t = 0 where the pair is (x0, x0).
    assert w[:, 12:, 0].abs().max() <= 1e-6
    # Band 1 differences W (+first column, -second), summed over the t and h pairs.
    dw = padded[..., 0::2] - padded[..., 1::2]
    band1 = F.avg_pool3d(dw, (2, 2, 1)) * 4 / (2 * math.sqrt(2))
    assert (w[:, 3:6] - band1).abs().max() <= 1e-5
    # Band 2 differences H.
    dh3 = padded[..., 0::2, :] - padded[..., 1::2, :]
    assert (w[:, 6:9] - F.avg_pool3d(dh3, (2, 1, 2)) * 4 / (2 * math.sqrt(2))).abs().max() <= 1e-5
    w2 = HaarWavelet2D(3)(x)
    assert (w2[:, :3] - F.avg_pool3d(x, (1, 2, 2)) * 2).abs().max() <= 1e-5
    # 2D band 1 differences H.
    dh = x[..., 0::2, :] - x[..., 1::2, :]
    assert (w2[:, 3:6] - (dh[..., 0::2] + dh[..., 1::2]) / 2).abs().max() <= 1e-5


def test_chunked_3d_equals_full() -> None:
    x = torch.randn(1, 3, 13, 8, 8)
    fwd, inv = HaarWavelet3D(3), InverseHaarWavelet3D(3)
    full = fwd(x)
    cache = ChunkCache()
    parts = []
    bounds = [0, 4, 5, 8, 13]  # odd and even chunk lengths, leftover frames carried
    for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        cache.final = i == len(bounds) - 2
        parts.append(fwd(x[:, :, s:e], cache))
    assert torch.allclose(torch.cat(parts, 2), full, atol=1e-6)
    cache = ChunkCache()
    rec = []
    for i, (s, e) in enumerate([(0, 2), (2, 3), (3, 7)]):
        cache.final = i == 2
        rec.append(inv(full[:, :, s:e], cache))
    assert torch.allclose(torch.cat(rec, 2), inv(full), atol=1e-6)


def test_channels_last_and_bad_channels() -> None:
    x = torch.randn(1, 3, 5, 8, 8)
    xc = x.contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(HaarWavelet3D(3)(xc), HaarWavelet3D(3)(x), atol=1e-6)
    with pytest.raises(ValueError, match="expected 3 input channels"):
        HaarWavelet3D(3)(torch.randn(1, 4, 5, 8, 8))
    with pytest.raises(ValueError, match="expected 24 coefficient channels"):
        InverseHaarWavelet3D(3)(torch.randn(1, 12, 3, 4, 4))
    with pytest.raises(ValueError, match="haar_scale"):
        HaarWavelet3D(3, "exact")  # type: ignore[arg-type]


def test_kernels_are_not_parameters() -> None:
    m = HaarWavelet3D(3)
    assert list(m.parameters()) == []
    assert m.state_dict() == {}


@pytest.mark.parametrize("t", [2, 4, 8])
def test_3d_even_frame_count_is_refused(t: int) -> None:
    """An even T would leave its last frame unpaired after the causal pad: the stride-2 conv
    would drop it without a word. T = 2n+1 is required, as the VAE's frames_policy says."""
    with pytest.raises(ValueError, match=rf"HaarWavelet3D: T \(dim 2\) = {t} frames"):
        HaarWavelet3D(3)(torch.randn(1, 3, t, 8, 8))
    # The final chunk of a chunked call too (here 4 + 1 carried frame + 4 = 9 padded frames).
    fwd, cache = HaarWavelet3D(3), ChunkCache()
    fwd(torch.randn(1, 3, 4, 8, 8), cache)
    cache.final = True
    with pytest.raises(ValueError, match="final chunk's T"):
        fwd(torch.randn(1, 3, 4, 8, 8), cache)


@pytest.mark.parametrize("shape", [(1, 3, 5, 7, 8), (1, 3, 5, 8, 9)])
def test_odd_frame_size_is_refused(shape: tuple[int, ...]) -> None:
    """An odd H or W would lose its last row or column the same way, in 3D and in 2D."""
    name = "H" if shape[3] % 2 else "W"
    with pytest.raises(ValueError, match=rf"HaarWavelet3D: {name} \(dim \d\) = \d is odd"):
        HaarWavelet3D(3)(torch.randn(*shape))
    with pytest.raises(ValueError, match=rf"HaarWavelet2D: {name} \(dim \d\) = \d is odd"):
        HaarWavelet2D(3)(torch.randn(*shape))
    with pytest.raises(ValueError, match=rf"HaarWavelet2D: {name} \(dim [23]\) = \d is odd"):
        HaarWavelet2D(3)(torch.randn(1, 3, *shape[3:]))
