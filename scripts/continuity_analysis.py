"""Temporal continuity of video latents across denoising steps (see temporal/continuity.py).

    python scripts/continuity_analysis.py --demo --out outputs/continuity_demo
    python scripts/continuity_analysis.py --input trajectory.npz --out outputs/continuity

--demo simulates a DDIM sampling of a video latent (no model). --input takes either
- a recorded trajectory: `x_t` and `eps_hat` [S, B, F, C, H, W] or [S, F, C, H, W], `timesteps`
  [S], and `alphas_cumprod` [T] (the scheduler's table); or
- the NPZ this script / ContinuityRecorder.save wrote (re-plotted and re-summarised).
Writes continuity.png (distance and cosine vs step), continuity.npz, continuity_summary.json
into --out and prints the early / middle / late table. --key-every / --switch-fraction also
print the frame-truncation plan for the trajectory's frame and step counts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stdiff.truncation import frame_truncation_schedule  # noqa: E402
from temporal.continuity import (  # noqa: E402
    METRICS,
    ContinuityRecorder,
    print_summary_table,
    save_continuity,
    simulate_denoising_trajectory,
    summarise,
)


def _from_npz(path: Path) -> tuple[dict[str, np.ndarray], int | None]:
    if not path.is_file():
        raise FileNotFoundError(f"--input {str(path)!r} does not exist")
    data = dict(np.load(path))
    if all(m in data for m in METRICS) and "step" in data:
        return data, None
    missing = [k for k in ("x_t", "eps_hat", "timesteps", "alphas_cumprod") if k not in data]
    if missing:
        raise KeyError(
            f"--input {str(path)!r} lacks {missing}: expected a trajectory (x_t, eps_hat, timesteps, "
            f"alphas_cumprod) or a continuity NPZ ({', '.join(METRICS)}, step); has {sorted(data)}"
        )
    x_t, eps = data["x_t"], data["eps_hat"]
    if x_t.shape != eps.shape or x_t.ndim not in (5, 6) or x_t.shape[0] != len(data["timesteps"]):
        raise ValueError(
            f"--input {str(path)!r}: x_t {x_t.shape} / eps_hat {eps.shape} must be [S, (B,) F, C, H, W] "
            f"with S = len(timesteps) = {len(data['timesteps'])}"
        )
    recorder = ContinuityRecorder(data["alphas_cumprod"])
    for step, t in enumerate(data["timesteps"]):
        recorder(step, int(t), torch.from_numpy(x_t[step]), torch.from_numpy(eps[step]))
    return recorder.arrays(), x_t.shape[-4]


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--demo", action="store_true", help="simulated latents, no model")
    src.add_argument("--input", type=Path, help="recorded trajectory or continuity NPZ")
    parser.add_argument("--out", type=Path, default=Path("outputs/continuity"))
    parser.add_argument("--frames", type=int, default=16, help="demo: frames")
    parser.add_argument("--steps", type=int, default=50, help="demo: DDIM steps")
    parser.add_argument("--size", type=int, default=16, help="demo: latent height = width")
    parser.add_argument("--channels", type=int, default=4, help="demo: latent channels")
    parser.add_argument("--batch", type=int, default=2, help="demo: videos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--key-every", type=int, default=None, help="print a frame-truncation plan")
    parser.add_argument("--switch-fraction", type=float, default=0.5)
    args = parser.parse_args(argv)

    if args.demo:
        alphas, trajectory = simulate_denoising_trajectory(
            args.frames, args.steps, (args.channels, args.size, args.size), args.batch, args.seed
        )
        recorder = ContinuityRecorder(alphas)
        for step, t, x_t, eps_hat in trajectory:
            recorder(step, t, x_t, eps_hat)
        arrays, num_frames = recorder.arrays(), args.frames
    else:
        arrays, num_frames = _from_npz(args.input)

    paths = save_continuity(arrays, args.out)
    print_summary_table(summarise(arrays))
    if args.key_every is not None and num_frames is not None:
        plan = frame_truncation_schedule(
            num_frames, len(arrays["step"]), args.key_every, args.switch_fraction
        )
        print(
            f"frame truncation: key frames {plan.key_frames}, switch at step {plan.switch_step}, "
            f"{plan.evaluations} frame evaluations instead of {num_frames * plan.num_steps} "
            f"(ideal speed-up {plan.speedup:.2f}x)"
        )
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return paths


if __name__ == "__main__":
    main()
