"""The scaling benchmark's growth fits (scripts/bench/scaling.py) on rows of known exponents,
and its figure drawn from them. (Chunked WF-VAE encode / decode equal to the full pass is
tests/test_wfvae_chunked.py.)"""

from __future__ import annotations

import pytest

from scripts.bench.scaling import fit_series, fits, growth_exponent, growth_verdict, plot


def test_growth_exponent_recovers_power_laws():
    xs = [9, 17, 33, 65, 129, 257]
    assert growth_exponent(xs, [3.0 * x**1.5 for x in xs]) == pytest.approx(1.5)
    assert growth_exponent(xs, [7.0] * len(xs)) == pytest.approx(0.0)
    # Points with y <= 0 or None (memory within the noise) are left out; < 2 points: None.
    assert growth_exponent([1, 2, 4], [-1.0, 2.0, 8.0]) == pytest.approx(2.0)
    assert growth_exponent([1, 2, 4], [0.0, None, 5.0]) is None


def test_fit_series_sorts_and_words_the_notes():
    xs = [12, 1, 6, 2, 3]  # unsorted on purpose
    fit = fit_series(
        "s",
        "Tp",
        xs,
        {
            "time": [0.5 + x for x in xs],  # a fixed cost: below 1 overall, ~1 at the top
            "memory": [0.5] * 5,  # under the floor: not fitted
            "gflop": [x**2 for x in xs],
        },
        floors={"memory": 1.0},
    )
    assert fit["x_values"] == [1, 2, 3, 6, 12]
    assert 0.8 < fit["time_exponent"] < 0.9 < fit["time_last_exponent"] < 1.0
    assert fit["gflop_exponent"] == pytest.approx(2.0)
    assert fit["memory_exponent"] is None and "memory" not in fit["notes"]
    assert "gflop ~ Tp^2.00 (Tp^2.00 at the top): faster than linear" in fit["notes"]
    assert "time ~ Tp^0.8" in fit["notes"] and "about linear" in fit["notes"]
    assert growth_verdict(1.05, 1.3) == growth_verdict(1.3) == "faster than linear"
    assert growth_verdict(1.3, 1.0) == "about linear"
    assert growth_verdict(0.8, 1.3) == "faster than linear at the top only"
    assert [growth_verdict(x) for x in (0.5, 0.1, -0.6)] == ["sublinear", "flat", "falling"]


def _synthetic_result() -> dict:
    """Rows as the section makes them, with time ~ T (chunked) or T^1.2 (full), memory flat
    (chunked) or ~ T, time ~ pixels^1.1; STDiff time ~ Tp, ~ K^0.8."""
    sizes = {"base": [64, 64], "size_frames": 17, "sizes": [[32, 32], [64, 64], [64, 128]]}
    wfvae = []
    for op in ("encode", "decode"):
        for chunked in (True, False):
            for t, h, w in [(9, 64, 64), (17, 64, 64), (33, 64, 64), (17, 32, 32), (17, 64, 128)]:
                px = h * w
                mem = 20.0 if chunked else 0.5 * t * px / 4096
                wfvae.append(
                    dict(
                        op=op,
                        chunked=chunked,
                        frames=t,
                        height=h,
                        width=w,
                        pixels=px,
                        time_s=1e-3 * (t if chunked else t**1.2) * (px / 4096) ** 1.1,
                        op_rss_mb=mem,
                        working_mb=mem - 1.0,
                        output_mb=1.0,
                        gflop=0.1 * t,
                        attention_fraction=0.01,
                    )  # fmt: skip
                )
    stdiff = [dict(horizon=n, samples=1, time_s=0.2 * n, op_rss_mb=30.0, gflop=5.0 * n)
              for n in (1, 2, 4)]  # fmt: skip
    stdiff += [dict(horizon=3, samples=k, time_s=0.6 * k**0.8, op_rss_mb=15.0 * k, gflop=15.0 * k)
               for k in (1, 2, 4)]  # fmt: skip
    stdiff += [dict(horizon=1, samples=1, pixels=p, gflop=1e-3 * p + 1e-7 * p**2,
                    attention_gflop=1e-7 * p**2, attention_fraction=0.3) for p in (2048, 4096)]  # fmt: skip
    settings = {"sizes": sizes, "quick": True, "threads": 1, "wfvae_model": "flagship",
                "chunk_frames": 8, "stdiff_recipe": {"n_pred": 3}}  # fmt: skip
    return {"settings": settings, "wfvae": wfvae, "stdiff": stdiff,
            "loadavg_at_start": [0.1, 0.1, 0.1], "loadavg_at_end": [0.2, 0.1, 0.1]}  # fmt: skip


def test_fits_pick_each_series_and_the_figure_draws(tmp_path):
    result = _synthetic_result()
    result["fits"] = fits(result["wfvae"], result["stdiff"], (64, 64), 17, 3)
    by_name = {f["series"]: f for f in result["fits"]}
    assert len(by_name) == 11
    full_t = by_name["wfvae_decode_full_vs_frames"]
    assert full_t["x_values"] == [9, 17, 33]  # only the base size
    assert full_t["time_exponent"] == pytest.approx(1.2)
    assert full_t["memory_exponent"] == pytest.approx(1.0)
    assert by_name["wfvae_encode_chunked_vs_frames"]["memory_exponent"] == pytest.approx(0.0)
    px = by_name["wfvae_encode_chunked_vs_pixels"]
    assert px["x_values"] == [1024, 4096, 8192] and px["time_exponent"] == pytest.approx(1.1)
    assert by_name["stdiff_sampling_vs_horizon"]["x_values"] == [1, 2, 3, 4]  # K = 1 of both
    assert by_name["stdiff_sampling_vs_samples"]["time_exponent"] == pytest.approx(0.8)
    assert by_name["stdiff_step_flops_vs_pixels"]["attention_gflop_exponent"] == pytest.approx(2)
    path = plot(result, tmp_path / "scaling.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
