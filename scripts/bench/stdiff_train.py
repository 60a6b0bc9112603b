"""Sections ``stdiff_train`` and ``stdiff_kitti``: one STDiff training step (batch 1, 3 -> 3
frames, AdamW) -- the reduced 64 x 128 configuration in every mode, SDE adjoint on (as the
published code) and off; the kitti_range 64 x 512 one for time and peak RSS minus baseline
(bf16 channels-last with and without gradient checkpointing, fp32 with it; and, when named,
bf16sde_cl: the SDE's nets in bf16 too, adjoint on and off). With ``--reference-stdiff``, the
published reduced step is timed before and after ours in the same run
(scripts/bench/stdiff_reference.py), the ratios against the faster of the two;
``--stdiff-rounds N`` repeats our rows N times with the published step between rounds.
``--stdiff-adjoint`` picks the reduced rows' adjoint setting(s); a ``+compile`` mode times the
step with the UNet under ``torch.compile`` after the compile (its seconds in ``compile_s``)."""

from __future__ import annotations

import os
import time

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
    add_reference_ratios,
    split_compile,
    stdiff_threads,
    train_step,
    training_step_parts,
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
    and the same minus the process's RSS before the model was built.

    A ``+compile`` mode counts the FLOPs on the eager step first (FlopCounterMode around the
    compiled one would recompile), then compiles the UNet in place, as training's
    ``compile=true`` does, and times the first compiled step (``compile_s``) before the timed
    ones; its peak RSS then includes the compiler's."""
    set_threads(threads)
    baseline = rss_mb()
    base_mode, compiled = split_compile(mode)
    model, opt, loss_fn = training_step_parts(config, base_mode, adjoint, checkpointing)
    step = train_step(model, opt, loss_fn)

    extra = {}
    if compiled:
        flops = count_flops(step)
        model.unet.compile()
        t0 = time.perf_counter()
        step()
        extra["compile_s"] = time.perf_counter() - t0
    # The warm-up step also allocates AdamW's state: the timed step's peak is the steady one
    # (activations + weights + gradients + optimiser state). FLOPs are counted last:
    # FlopCounterMode raises the peak memory.
    seconds = timeit(step, repeats, warmup=1)
    peak = rss_mb()
    if not compiled:
        flops = count_flops(step)
    return {
        "config": config,
        "mode": mode,
        "threads": threads,
        "adjoint": adjoint,
        "gradient_checkpointing": checkpointing,
        "compiled_unet": compiled,
        **extra,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "time_s": seconds,
        "gflop": flops / 1e9,
        "gflops": flops / seconds / 1e9,
        "peak_rss_mb": peak,
        "baseline_rss_mb": baseline,
        "peak_minus_baseline_mb": peak - baseline,
        "loadavg": os.getloadavg(),
    }


def _published_step(ctx: Context, threads: int, when: str) -> dict:
    """The published reduced step (scripts/bench/stdiff_reference.py), timed ``when`` (before
    or after our rows), in a fresh process."""
    from scripts.bench.stdiff_reference import reference_step_case

    row = in_process(
        reference_step_case,
        ctx.args.reference_stdiff,
        ctx.args.reference_stdiff_path,
        threads,
        ctx.args.repeats,
    )
    return emit({**row, "when": when})


#: --stdiff-adjoint -> the reduced rows' SDE adjoint settings.
ADJOINT_SETTINGS = {"both": (True, False), "on": (True,), "off": (False,)}


def run_reduced(ctx: Context) -> dict:
    """Every mode, SDE adjoint on and / or off, ``--stdiff-rounds`` times; with
    ``--reference-stdiff``, the published step before the first round, after each, and every
    row's ``speedup_vs_published_same_run`` against the faster of the two timings around its
    round. With several rounds, ``stdiff_train_reduced_rounds`` gives each mode's ratios and
    fractions of the peak by round, their median and their minimum."""
    rows, published = [], []
    rounds = ctx.args.stdiff_rounds
    if rounds < 1:
        raise ValueError(f"--stdiff-rounds must be >= 1, got {rounds}")
    with_reference = bool(ctx.args.reference_stdiff)
    for n in stdiff_threads(ctx):
        # The machine's speed drifts by up to a third within the hour a run takes here: each
        # round of our rows is bracketed by published timings, and its ratios are against the
        # faster of the two (the conservative one).
        refs = [_published_step(ctx, n, "before")] if with_reference else []
        for k in range(1, rounds + 1):
            ours = []
            for mode in ctx.args.stdiff_modes:
                for adjoint in ADJOINT_SETTINGS[ctx.args.stdiff_adjoint]:
                    r = in_process(
                        stdiff_train_case, "reduced", mode, n, ctx.args.repeats, adjoint=adjoint
                    )
                    if rounds > 1:
                        r["round"] = k
                    ours.append(add_reference_ratios(r, ctx.stdiff_peaks[n]))
            if with_reference:
                when = "after" if k == rounds else f"after round {k}"
                refs.append(_published_step(ctx, n, when))
                fastest = min(refs[-2]["time_s"], refs[-1]["time_s"])
                for r in ours:
                    r["speedup_vs_published_same_run"] = fastest / r["time_s"]
            rows += [emit(r) for r in ours]
        published += refs
    out = {"stdiff_train_reduced": rows}
    if published:
        out["stdiff_train_reduced_published"] = published
    if rounds > 1:
        out["stdiff_train_reduced_rounds"] = _by_mode_over_rounds(rows)
    return out


def _by_mode_over_rounds(rows: list[dict]) -> list[dict]:
    """Per (threads, mode, adjoint): the same-run ratios and reference-FLOP fractions of every
    round, their median and minimum."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["threads"], r["mode"], r["adjoint"]), []).append(r)
    out = []
    for (threads, mode, adjoint), rs in groups.items():
        summary = {"threads": threads, "mode": mode, "adjoint": adjoint}
        for key in ("speedup_vs_published_same_run", "reference_gflop_fraction_of_fp32_peak"):
            values = [r[key] for r in rs if key in r]
            if values:
                summary[f"{key}_by_round"] = values
                summary[f"{key}_median"] = statistics.median(values)
                summary[f"{key}_min"] = min(values)
        out.append(summary)
    return out


#: kitti_range cases: (mode, SDE adjoint, gradient checkpointing), run when the mode is in
#: --stdiff-modes. bf16sde_cl (the SDE's nets in bf16 too) is opt-in: name it.
KITTI_CASES = (
    ("bf16_cl", True, False),
    ("bf16_cl", True, True),
    ("fp32", True, True),
    ("bf16sde_cl", True, False),
    ("bf16sde_cl", True, True),
    ("bf16sde_cl", False, False),
    ("bf16sde_cl", False, True),
)


def run_kitti(ctx: Context) -> dict:
    rows = []
    n = stdiff_threads(ctx)[0]
    for mode, adjoint, checkpointing in KITTI_CASES:
        if mode not in ctx.args.stdiff_modes:
            continue
        r = in_process(
            stdiff_train_case,
            "kitti_range",
            mode,
            n,
            1,
            adjoint=adjoint,
            checkpointing=checkpointing,
        )
        rows.append(emit(add_reference_ratios(r, ctx.stdiff_peaks[n])))
    return {"stdiff_train_kitti_range": rows}
