"""Section ``stdiff_unet``: one kitti_range UNet evaluation per frame (the first of a frame,
and one with the SPADE modulation cached, as every later denoising step)."""

from __future__ import annotations

import os
import time

from scripts.bench.harness import Context, count_flops, emit, in_process, set_threads, timeit
from scripts.bench.stdiff import (
    STDIFF_SIZES,
    add_reference_ratios,
    autocast,
    eager_modes,
    stdiff_model,
    stdiff_threads,
)


def stdiff_unet_eval_case(config: str, mode: str, threads: int, repeats: int) -> dict:
    """One UNet evaluation for one frame (batch 1, no grad): the first of a frame (SPADE
    modulation computed) and a cached one (modulation reused: every later denoising step)."""
    import torch

    set_threads(threads)
    model = stdiff_model(config, mode).eval()
    unet = model.unet
    h, w = STDIFF_SIZES[config]
    x = torch.randn(1, unet.in_channels, h, w)
    if mode.endswith("_cl"):
        x = x.contiguous(memory_format=torch.channels_last)
    m = torch.randn(1, unet.m_channels, h // 4, w // 4)
    t = torch.tensor([500])

    def first():
        with torch.no_grad(), autocast(mode):
            return unet(x, t, m)

    def cached():
        with torch.no_grad(), autocast(mode), unet.cached_motion():
            unet(x, t, m)
            t0 = time.perf_counter()
            unet(x, t, m)
            return time.perf_counter() - t0

    flops_first = count_flops(first)
    with torch.no_grad(), autocast(mode), unet.cached_motion():
        unet(x, t, m)
        flops_cached = count_flops(lambda: unet(x, t, m))
    t_first = timeit(first, repeats)
    cached()
    t_cached = min(cached() for _ in range(repeats))
    return {
        "config": config,
        "mode": mode,
        "threads": threads,
        "time_s": t_first,
        "gflop": flops_first / 1e9,
        "gflops": flops_first / t_first / 1e9,
        "cached_motion_time_s": t_cached,
        "cached_motion_gflop": flops_cached / 1e9,
        "cached_motion_gflops": flops_cached / t_cached / 1e9,
        "loadavg": os.getloadavg(),
    }


def run(ctx: Context) -> dict:
    rows = []
    for n in stdiff_threads(ctx):
        for mode in eager_modes(ctx):
            r = in_process(stdiff_unet_eval_case, "kitti_range", mode, n, ctx.args.repeats)
            rows.append(emit(add_reference_ratios(r, ctx.stdiff_peaks[n])))
    return {"stdiff_unet_eval_kitti_range": rows}
