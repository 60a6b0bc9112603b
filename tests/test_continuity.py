"""Continuity metrics (closed-form cases), recorder outputs, demo script, frame-truncation plan."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from stdiff.truncation import frame_truncation_schedule, interpolate_from_key_frames
from temporal.continuity import (
    ContinuityRecorder,
    adjacent_frame_metrics,
    plot_continuity,
    predict_x0,
    simulate_denoising_trajectory,
)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_predict_x0_inverts_the_forward_process() -> None:
    x0, eps = _rand(2, 3, 4, 5, 5, seed=0), _rand(2, 3, 4, 5, 5, seed=1)
    abar = 0.3
    x_t = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps
    torch.testing.assert_close(predict_x0(x_t, eps, abar), x0, atol=1e-5, rtol=1e-5)
    per_sample = torch.tensor([0.3, 0.9])
    x_t2 = (
        per_sample.sqrt().view(2, 1, 1, 1, 1) * x0
        + (1 - per_sample).sqrt().view(2, 1, 1, 1, 1) * eps
    )
    torch.testing.assert_close(predict_x0(x_t2, eps, per_sample), x0, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="alpha_bar_t"):
        predict_x0(x_t, eps, 0.0)


def test_closed_form_pairs() -> None:
    x = _rand(3, 4, 4)
    same = torch.stack([x, x, x])  # [F, C, H, W]
    d, c = adjacent_frame_metrics(same)
    assert (
        d.shape == (1,)
        and d.item() == pytest.approx(0.0, abs=1e-12)
        and c.item() == pytest.approx(1.0)
    )

    d, c = adjacent_frame_metrics(torch.stack([x, -x]))
    assert d.item() == pytest.approx(math.sqrt(2)) and c.item() == pytest.approx(-1.0)

    # orthogonal frames (disjoint supports, different norms)
    a, b = torch.zeros(3, 4, 4), torch.zeros(3, 4, 4)
    a[0] = 3.0
    b[1] = 0.5
    d, c = adjacent_frame_metrics(torch.stack([a, b]))
    assert d.item() == pytest.approx(1.0) and c.item() == pytest.approx(0.0, abs=1e-12)

    # averaging over the F-1 pairs, per sample of a batch
    batch = torch.stack([torch.stack([x, x, -x]), torch.stack([a, b, a])])  # [B=2, F=3, ...]
    d, c = adjacent_frame_metrics(batch)
    torch.testing.assert_close(d, torch.tensor([math.sqrt(2) / 2, 1.0], dtype=torch.float64))
    torch.testing.assert_close(c, torch.tensor([0.0, 0.0], dtype=torch.float64))


def test_metric_input_errors() -> None:
    with pytest.raises(ValueError, match="at least 2 frames"):
        adjacent_frame_metrics(torch.zeros(2, 1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\[B, F, C, H, W\]"):
        adjacent_frame_metrics(torch.zeros(3, 4, 4))


def _trajectory(steps: int = 6):
    """x0 has identical frames (x0 distance 0); eps has x / -x frames (eps distance sqrt 2)."""
    alphas = torch.linspace(0.99, 0.01, 100)
    frame = _rand(2, 4, 4, seed=3)
    x0 = torch.stack([frame, frame, frame]).unsqueeze(0)  # [1, 3, C, H, W]
    e = _rand(2, 4, 4, seed=4)
    eps = torch.stack([e, -e, e]).unsqueeze(0)
    timesteps = np.linspace(90, 0, steps).round().astype(int)
    xs = [alphas[t].sqrt() * x0 + (1 - alphas[t]).sqrt() * eps for t in timesteps]
    return alphas, timesteps, xs, eps


def test_recorder_metrics_summary_and_files(tmp_path: Path) -> None:
    alphas, timesteps, xs, eps = _trajectory(6)
    rec = ContinuityRecorder(alphas)
    for step, (t, x_t) in enumerate(zip(timesteps, xs)):
        out = rec(step, int(t), x_t, eps)
        assert out["x0_distance"] == pytest.approx(0.0, abs=1e-5)
        assert out["eps_distance"] == pytest.approx(math.sqrt(2), abs=1e-6)
    arrays = rec.arrays()
    assert arrays["x0_cosine"] == pytest.approx(np.ones(6), abs=1e-6)
    assert arrays["eps_cosine"] == pytest.approx(-np.ones(6), abs=1e-6)
    assert arrays["x0_distance_per_sample"].shape == (6, 1)
    assert list(arrays["timestep"]) == list(timesteps)

    summary = rec.summary()
    assert summary["x0_distance"]["early"]["steps"] == [0, 1]
    assert summary["x0_distance"]["late"]["steps"] == [4, 5]
    assert summary["eps_cosine"]["middle"]["mean"] == pytest.approx(-1.0, abs=1e-6)

    paths = rec.save(tmp_path)
    loaded = np.load(paths["npz"])
    np.testing.assert_allclose(loaded["eps_distance"], arrays["eps_distance"])
    assert json.loads(paths["json"].read_text())["x0_cosine"]["late"]["mean"] == pytest.approx(
        1.0, abs=1e-6
    )
    with Image.open(paths["png"]) as img:
        assert img.size[0] > img.size[1] > 100  # two panels side by side

    console = Console(record=True, width=120)
    rec.print_table(console)
    text = console.export_text()
    assert "eps_distance" in text and "early" in text and "1.4142" in text


def test_recorder_accepts_x0_hat_and_needs_alphas() -> None:
    rec = ContinuityRecorder()
    x = _rand(2, 4, 2, 3, 3)
    rec(0, 10, x, x, x0_hat=x)
    assert rec.arrays()["x0_distance"][0] == pytest.approx(rec.arrays()["eps_distance"][0])
    with pytest.raises(ValueError, match="alphas_cumprod"):
        rec(1, 5, x, x)


def test_pil_plot_draws_both_curves(tmp_path: Path) -> None:
    arrays = {
        "step": np.arange(5),
        "x0_distance": np.linspace(1, 0, 5),
        "eps_distance": np.ones(5),
        "x0_cosine": np.linspace(0, 1, 5),
        "eps_cosine": np.zeros(5),
    }
    path = plot_continuity(arrays, tmp_path / "p.png", backend="pil")
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in pixels}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours


def test_simulated_trajectory_converges_to_a_smooth_video() -> None:
    alphas, traj = simulate_denoising_trajectory(
        num_frames=4, num_steps=12, shape=(2, 8, 8), batch=1
    )
    rec = ContinuityRecorder(alphas)
    for step, t, x_t, eps_hat in traj:
        assert x_t.shape == (1, 4, 2, 8, 8)
        rec(step, t, x_t, eps_hat)
    a = rec.arrays()
    assert len(a["step"]) == 12 and a["timestep"][0] > a["timestep"][-1]
    assert a["x0_distance"][0] > 0.7 and a["x0_distance"][-1] < 0.3  # noisy early, smooth late
    assert abs(a["eps_distance"].mean() - 1.0) < 0.1  # eps stays independent across frames


def test_demo_script_writes_outputs_and_reads_them_back(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "continuity_analysis",
        Path(__file__).resolve().parents[1] / "scripts" / "continuity_analysis.py",
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = ["--frames", "4", "--steps", "6", "--size", "8", "--channels", "2", "--batch", "1"]
    paths = module.main(["--demo", "--out", str(tmp_path / "demo"), *args])
    assert all(p.is_file() for p in paths.values())
    again = module.main(["--input", str(paths["npz"]), "--out", str(tmp_path / "again")])
    np.testing.assert_allclose(
        np.load(again["npz"])["x0_distance"], np.load(paths["npz"])["x0_distance"]
    )
    # a raw trajectory NPZ
    alphas, timesteps, xs, eps = _trajectory(3)
    raw = tmp_path / "raw.npz"
    np.savez(
        raw,
        x_t=torch.stack(xs).numpy(),
        eps_hat=eps.expand(3, *eps.shape).numpy(),
        timesteps=timesteps,
        alphas_cumprod=alphas.numpy(),
    )
    out = module.main(["--input", str(raw), "--out", str(tmp_path / "raw")])
    assert np.load(out["npz"])["eps_distance"] == pytest.approx(np.full(3, math.sqrt(2)), abs=1e-6)
    bad = tmp_path / "bad.npz"
    np.savez(bad, foo=np.zeros(3))
    with pytest.raises(KeyError, match="x_t"):
        module.main(["--input", str(bad), "--out", str(tmp_path / "bad")])


def test_frame_truncation_schedule_bookkeeping() -> None:
    plan = frame_truncation_schedule(num_frames=9, num_steps=10, key_every=4, switch_fraction=0.5)
    assert plan.key_frames == [0, 4, 8]
    assert plan.switch_step == 5
    for step in range(5):
        assert plan.frames_at(step) == [0, 4, 8]
    for step in range(5, 10):
        assert plan.frames_at(step) == list(range(9))
    assert plan.evaluations == 5 * 3 + 5 * 9
    assert plan.speedup == pytest.approx(90 / 60)
    assert plan.interpolation[1] == (0, 4, 0.25)
    assert plan.interpolation[6] == (4, 8, 0.5)
    assert set(plan.interpolation) == {1, 2, 3, 5, 6, 7}

    last = frame_truncation_schedule(10, 4, key_every=4, switch_fraction=0.25)
    assert last.key_frames == [0, 4, 8, 9]  # the last frame is always a key frame
    assert last.interpolation[5] == (4, 8, 0.25)
    full = frame_truncation_schedule(6, 8, key_every=3, switch_fraction=0.0)
    assert full.active.all() and full.speedup == 1.0
    for bad in ({"key_every": 0}, {"switch_fraction": 1.5}, {"num_frames": 0}):
        kwargs = {"num_frames": 5, "num_steps": 5, "key_every": 2, "switch_fraction": 0.5, **bad}
        with pytest.raises(ValueError):
            frame_truncation_schedule(**kwargs)


def test_interpolate_from_key_frames() -> None:
    plan = frame_truncation_schedule(9, 10, key_every=4, switch_fraction=0.5)
    # frames linear in f are reproduced exactly by interpolating the key frames
    ramp = (
        torch.arange(9, dtype=torch.float32).view(1, 9, 1, 1, 1).expand(2, 9, 3, 2, 2).contiguous()
    )
    garbage = ramp.clone()
    for f in plan.interpolation:
        garbage[:, f] = 100.0
    torch.testing.assert_close(interpolate_from_key_frames(garbage, plan), ramp)
    # frame dim other than 1
    torch.testing.assert_close(
        interpolate_from_key_frames(garbage.transpose(1, 2), plan, frame_dim=2),
        ramp.transpose(1, 2),
    )
    # averaging independent noise halves its variance at w = 0.5; noise_std restores it
    noise = _rand(1, 9, 1, 100, 100, seed=5)
    mid = interpolate_from_key_frames(noise, plan)[:, 6]
    assert mid.var().item() == pytest.approx(0.5, abs=0.05)
    g = torch.Generator().manual_seed(6)
    restored = interpolate_from_key_frames(noise, plan, noise_std=1.0, generator=g)[:, 6]
    assert restored.var().item() == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="frames"):
        interpolate_from_key_frames(noise[:, :5], plan)
