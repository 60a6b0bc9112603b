"""Section ``stdiff_truncation``: sampling speed with and without frame truncation (reduced
configuration, random weights: speed only). Its quality cost is an experiment, not a
benchmark: scripts/truncation_study.py."""

from __future__ import annotations

import os
import time

from scripts.bench.harness import Context, in_process, set_threads
from scripts.bench.stdiff import (
    STDIFF_SIZES,
    autocast,
    eager_modes,
    stdiff_model,
    stdiff_threads,
)

OPTIONS = [
    {"key_every": 2, "switch_fraction": 0.5},
    {"key_every": 2, "switch_fraction": 0.7},
    {"key_every": 3, "switch_fraction": 0.5},
]


def stdiff_truncation_speed(
    config: str, mode: str, threads: int, tp: int, steps: int, options: list
) -> dict:
    """Wall time of sampling ``tp`` frames (batch 1, one sample, DDPM ``steps``) with and
    without frame truncation (random weights: speed only)."""
    import torch

    from stdiff import STDiffPipeline

    set_threads(threads)
    model = stdiff_model(config, mode).eval()
    pipe = STDiffPipeline(model)
    h, w = STDIFF_SIZES[config]
    vo = torch.rand(1, 3, 1, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1
    idx_o, idx_p = torch.tensor([0.0, 1.0, 2.0]), torch.arange(3.0, 3.0 + tp)

    def run(opts):
        with autocast(mode):
            t0 = time.perf_counter()
            out = pipe(
                vo,
                idx_o,
                idx_p,
                num_inference_steps=steps,
                generator=torch.Generator().manual_seed(0),
                frame_truncation=opts,
            )
            return time.perf_counter() - t0, out.get("truncation")

    run(None)  # warm-up (oneDNN primitives)
    full, _ = run(None)
    rows = [{"frame_truncation": None, "time_s": full}]
    for opts in options:
        seconds, info = run(opts)
        rows.append(
            {
                "frame_truncation": opts,
                "time_s": seconds,
                "speedup": full / seconds,
                "ideal_speedup": info["full_evaluations"] / info["evaluations"],
            }
        )
    return {
        "config": config,
        "mode": mode,
        "threads": threads,
        "frames": tp,
        "steps": steps,
        "scheduler": "ddpm",
        "rows": rows,
        "loadavg": os.getloadavg(),
    }


def run(ctx: Context) -> dict:
    n = stdiff_threads(ctx)[0]
    return {
        "stdiff_truncation_speed": [
            in_process(stdiff_truncation_speed, "reduced", mode, n, 6, 50, OPTIONS)
            for mode in eager_modes(ctx)
        ]
    }
