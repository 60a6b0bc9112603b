"""Sections ``stdiff_train`` and ``stdiff_kitti``: one STDiff training step (batch 1, 3 -> 3
frames, AdamW) -- the reduced 64 x 128 configuration in every mode, SDE adjoint on (as the
published code) and off; the kitti_range 64 x 512 one for time and peak RSS minus baseline
(bf16 channels-last with and without gradient checkpointing, fp32 with it)."""

from __future__ import annotations

import os

from scripts.bench.harness import (
    Context,
    count_flops,
    emit,
    in_process,
    rss_mb,
    set_threads,
    timeit,
)
from scripts.bench.stdiff import (
    STDIFF_SIZES,
    add_reference_ratios,
    autocast,
    stdiff_model,
    stdiff_threads,
)


def stdiff_train_case(
    config: str,
    mode: str,
    threads: int,
    repeats: int,
    adjoint: bool = True,
    checkpointing: bool = False,
) -> dict:
    """One training step, batch 1, 3 -> 3 frames (forward + backward + clip + AdamW), in a
    fresh process: time, FLOPs (FlopCounterMode on one more step), peak RSS of the timed steps
    and the same minus the process's RSS before the model was built."""
    import torch

    set_threads(threads)
    baseline = rss_mb()
    model = stdiff_model(config, mode, adjoint, checkpointing)
    sched = model.make_scheduler()
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, fused=True
    )
    h, w = STDIFF_SIZES[config]
    g = torch.Generator().manual_seed(0)
    vo = torch.rand(1, 3, 1, h, w, generator=g) * 2 - 1
    vp = torch.rand(1, 3, 1, h, w, generator=g) * 2 - 1
    idx_o, idx_p = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([3.0, 4.0, 5.0])

    def step():
        with autocast(mode):
            loss, _ = model.training_loss(
                vo, vp, idx_o, idx_p, sched, generator=torch.Generator().manual_seed(1)
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    # The warm-up step also allocates AdamW's state: the timed step's peak is the steady one
    # (activations + weights + gradients + optimiser state). FLOPs are counted last:
    # FlopCounterMode raises the peak memory.
    seconds = timeit(step, repeats, warmup=1)
    peak = rss_mb()
    flops = count_flops(step)
    return {
        "config": config,
        "mode": mode,
        "threads": threads,
        "adjoint": adjoint,
        "gradient_checkpointing": checkpointing,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "time_s": seconds,
        "gflop": flops / 1e9,
        "gflops": flops / seconds / 1e9,
        "peak_rss_mb": peak,
        "baseline_rss_mb": baseline,
        "peak_minus_baseline_mb": peak - baseline,
        "loadavg": os.getloadavg(),
    }


def run_reduced(ctx: Context) -> dict:
    rows = []
    for n in stdiff_threads(ctx):
        for mode in ctx.args.stdiff_modes:
            for adjoint in (True, False):
                r = in_process(
                    stdiff_train_case, "reduced", mode, n, ctx.args.repeats, adjoint=adjoint
                )
                rows.append(emit(add_reference_ratios(r, ctx.stdiff_peaks[n])))
    return {"stdiff_train_reduced": rows}


def run_kitti(ctx: Context) -> dict:
    rows = []
    n = stdiff_threads(ctx)[0]
    for mode, checkpointing in (("bf16_cl", False), ("bf16_cl", True), ("fp32", True)):
        if mode not in ctx.args.stdiff_modes:
            continue
        r = in_process(
            stdiff_train_case, "kitti_range", mode, n, 1, adjoint=True, checkpointing=checkpointing
        )
        rows.append(emit(add_reference_ratios(r, ctx.stdiff_peaks[n])))
    return {"stdiff_train_kitti_range": rows}
