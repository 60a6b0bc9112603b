"""Section ``scaling`` (only when named): how time and memory grow with the input's size.

- WF-VAE encode / decode (batch 1, fp32, the flagship network of
  configs/experiment/wfvae_kitti.yaml by default, ``--scaling-wfvae-model`` for the named sizes
  of wfvae/model.py) against the clip length T (9, 17, 33, 65, 129, 257 at 128^2) and the frame
  size (64^2, 128^2, 128 x 416, 256^2 at T = 17): chunked with the streaming chunk cache
  (``encode(x, chunk_size=c)``, ``decode(z, chunk_size=c // 4)``: c = 8 video frames a chunk,
  ``--scaling-chunk``) and on the full clip where it fits (its memory is estimated from the
  previous length; ``--scaling-max-full-mb``, default half the memory available at the start).
- STDiff sampling of the forecast recipe (configs/experiment/stdiff_kitti_range_forecast.yaml:
  the network built from the config, random weights; its sampler, steps, frame size and
  observed frames) against the horizon Tp (1, 2, 3, 6, 12 at K = 1) and the number of samples
  K (1, 2, 4, 8 at the recipe's horizon), and the FLOPs of a one-step sampling call against the
  frame size (32 x 128, 64 x 256, 64 x 512; ``stdiff_step_flops``, nothing timed).

Each case runs in a fresh process (``--scaling-quick``: tiny sizes and one process per model,
for smoke runs; freed heap memory is handed back to the OS between its cases, so their memory
is indicative only). A small call first takes the one-off costs (lazy imports, thread pools);
then one untimed call of the case under the FLOP counter (FLOPs with attention counted: see
`count_flops_split`; also the warm-up) and ``--scaling-repeats`` timed ones. Memory
(``op_rss_mb``) is the peak RSS over those calls minus the RSS before them, inputs and weights
already resident: the first call touches every page the operation needs. ``output_mb`` is the
returned tensor's share, ``working_mb`` the rest; STDiff rows also give
``peak_minus_baseline_mb`` (weights included). Every series gets log-log growth exponents (least squares over
its points, and between its two largest: ``*_last_exponent``) of time, memory and GFLOP, with a
``notes`` string made from them (``scaling.fits``); the figure is ``<--out>/scaling.png``, the
section's JSON also ``<--out>/scaling.json``. The default sizes take about 4-6 minutes on 2
cores (the flagship network is small: most of it is process start-up and STDiff's denoising
loops); bc64 / wfvae_l_16ch take far longer (cap them with ``--scaling-max-frames``).

Where cost grows faster than linear, and why (read the exponents in ``scaling.fits``):

- WF-VAE against pixels: the mid blocks of encoder and decoder attend over the (H/8)(W/8)
  tokens of each frame, 4 N^2 C FLOPs against the convolutions' N C^2 k^3, so attention's
  share of the FLOPs (``attention_fraction``) grows in proportion to the pixel count and the
  GFLOP exponent exceeds 1 by that much; at these widths the convolutions still dominate.
- WF-VAE against T: the arithmetic is linear (GFLOP exponent 1: causal convolutions, attention
  per frame). The full clip keeps every activation of the clip at once, so its memory grows
  linearly with T; the chunk cache keeps a few frames of context per layer, so the chunked
  ``working_mb`` stays flat and only the output video grows. A time exponent above the GFLOP
  exponent on the full clip comes from memory (first-touch page faults of fresh GB-sized
  activations, caches no longer holding them), not from arithmetic.
- STDiff against Tp: each frame is one full denoising loop conditioned on the previous
  prediction and a context cut to the last To frames, and the SDE motion path is integrated
  once over the horizon: linear, the exponent below 1 at small Tp only from the fixed context
  encoding; nothing grows with the frames already predicted. Against K: the K samples are one
  batch, so time grows sublinearly while the larger batch uses the cores better, and memory with
  the batch's activations. Against frame size: the UNet attends at 1/2 to 1/16 resolution, so
  its attention FLOPs grow with pixels^2 (fit ``stdiff_step_flops_vs_pixels``: GFLOP exponent
  and ``attention_fraction``); at 64 x 512 that term is the larger share of a step.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scripts.bench.harness import (
    Context,
    add_peak_fractions,
    conv_peak,
    direct_convs,
    emit,
    in_process,
    rss_mb,
    set_threads,
    start_peak_window,
    timeit,
    window_peak_mb,
)

ROOT = Path(__file__).resolve().parents[2]
WFVAE_EXPERIMENT = "wfvae_kitti"
STDIFF_EXPERIMENT = "stdiff_kitti_range_forecast"
OPS = ("encode", "decode")

#: Default and --scaling-quick sizes: (frames of the T series at base size, base (H, W),
#: sizes of the resolution series, their frames), STDiff (horizons at K = 1, K at the recipe's
#: horizon, frame sizes of the FLOP count; steps None = the recipe's).
SIZES: dict[str, dict[str, Any]] = {
    "default": {
        "frames": (9, 17, 33, 65, 129, 257),
        "base": (128, 128),
        "sizes": ((64, 64), (128, 128), (128, 416), (256, 256)),
        "size_frames": 17,
        "horizons": (1, 2, 3, 6, 12),
        "samples": (1, 2, 4, 8),
        "steps": None,
        "step_sizes": ((32, 128), (64, 256), (64, 512)),
    },
    "quick": {
        "frames": (9, 17, 33),
        "base": (64, 64),
        "sizes": ((32, 32), (64, 64), (64, 128)),
        "size_frames": 17,
        "horizons": (1, 2, 4),
        "samples": (1, 2),
        "steps": 2,
        "step_sizes": ((32, 64), (32, 128)),
    },
}


# ------------------------------------------------------------------------------------- FLOPs
def count_flops_split(fn: Callable[[], Any]) -> tuple[int, int]:
    """(all FLOPs, attention FLOPs) of one call.

    FlopCounterMode has no formula for the CPU kernel of ``scaled_dot_product_attention``
    (``aten._scaled_dot_product_flash_attention_for_cpu``) and counts it as 0; here it is
    counted with the same formula as the GPU kernels (4 N^2 C per head: QK^T and PV).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(q, k, v, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(q, k, v)

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    with FlopCounterMode(display=False, custom_mapping={op: cpu_sdpa}) as counter:
        fn()
    counts = counter.get_flop_counts()["Global"]
    attention = sum(n for f, n in counts.items() if "scaled_dot_product" in str(f))
    return counter.get_total_flops(), attention


def open_window() -> float:
    """`start_peak_window` after handing freed heap memory back to the OS (glibc
    ``malloc_trim``), so that a case's peak counts the pages it touches even when an earlier
    call in the same process freed them (--scaling-quick runs all cases in one process); the
    RSS now (MB)."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the plain window
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return start_peak_window()


# ------------------------------------------------------------------------------ growth fits
def growth_exponent(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of log y against log x (y ~ x^slope) over the points with x, y > 0;
    None with fewer than two such points at distinct x."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y is not None and y > 0]
    if len({p[0] for p in pts}) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


#: Exponent bands of the notes' verdicts (the exponent between the two largest points).
SUPERLINEAR, LINEAR, FLAT = 1.1, 0.9, 0.25


def growth_verdict(slope: float, last: float | None = None) -> str:
    """A word for a series' growth, by its top exponent (``last``, between the two largest
    points; else ``slope``, over all): "faster than linear" (> 1.1, with ``slope`` above 1 too,
    so that two noisy small points do not decide it; else "faster than linear at the top
    only"), "about linear" (>= 0.9), "sublinear"
    (>= 0.25), "flat" (> -0.25), "falling"."""
    top = slope if last is None else last
    if top > SUPERLINEAR and slope > 1.0:
        return "faster than linear"
    if top > SUPERLINEAR:
        # Steeper only between the two largest points: a trend to watch, or noise there.
        return "faster than linear at the top only"
    if top >= LINEAR:
        return "about linear"
    if top >= FLAT:
        return "sublinear"
    return "flat" if top > -FLAT else "falling"


def fit_series(
    name: str,
    symbol: str,
    xs: Sequence[float],
    metrics: dict[str, Sequence[float | None]],
    floors: dict[str, float] | None = None,
) -> dict:
    """Growth exponents of each metric (time, memory, GFLOP, ...) of one series against ``xs``
    (sorted ascending here): over all points and between the two largest, and a ``notes``
    string from them, e.g. ``"time ~ T^1.02 (T^1.05 at the top): about linear"``. Values below
    a metric's floor (``floors``; e.g. memory within the page / allocator noise) are left out."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    xs = [xs[i] for i in order]
    out: dict[str, Any] = {"series": name, "x": symbol, "x_values": xs}
    parts = []
    for metric, values in metrics.items():
        floor = (floors or {}).get(metric, 0.0)
        ys = [values[i] if values[i] is not None and values[i] > floor else None for i in order]
        slope = growth_exponent(xs, ys)
        last = growth_exponent(xs[-2:], ys[-2:]) if len(xs) > 2 else None
        out[f"{metric}_exponent"] = slope
        out[f"{metric}_last_exponent"] = last
        if slope is None:
            continue
        text = f"{metric} ~ {symbol}^{slope:.2f}"
        if last is not None:
            text += f" ({symbol}^{last:.2f} at the top)"
        parts.append(f"{text}: {growth_verdict(slope, last)}")
    out["notes"] = "; ".join(parts)
    return out


# ---------------------------------------------------------------------------------- WF-VAE
def wfvae_net_kwargs(model: str) -> dict:
    """Constructor kwargs of the WF-VAE: "flagship" (the network of
    configs/experiment/wfvae_kitti.yaml, composed with Hydra) or a name of wfvae_config."""
    if model != "flagship":
        from wfvae.model import wfvae_config

        return wfvae_config(model)
    net = _compose(WFVAE_EXPERIMENT)["model"]["net"]
    return {k: v for k, v in net.items() if not k.startswith("_")}


def _compose(experiment: str) -> dict:
    """The resolved train.yaml config of an experiment (model and data only), as plain dicts."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train.yaml", [f"experiment={experiment}", "paths.output_dir=."])
    GlobalHydra.instance().clear()
    return {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=False),
    }


def wfvae_cases(net: dict, cases: list[dict], threads: int, repeats: int) -> list[dict]:
    """Run WF-VAE cases (dicts of `_wfvae_case`'s keywords) in this process with one model
    (seed 0) built from ``net``; one row each."""
    import torch

    from wfvae.model import WFVAE

    set_threads(threads)
    torch.manual_seed(0)
    model = WFVAE(**net).eval()
    with torch.no_grad():
        # One-off costs (lazy imports of the FLOP counter, thread pools, kernel set-up) on a
        # small clip first, so that they are in no case's memory window.
        for op in OPS:
            _wfvae_case(model, net["latent_dim"], 1, op, 9, 32, 32, 4)
        return [_wfvae_case(model, net["latent_dim"], repeats, **case) for case in cases]


def _wfvae_case(
    model, latent: int, repeats: int, op: str, frames: int, height: int, width: int, chunk: int
) -> dict:
    """One encode of ``x [1, 3, T, H, W]`` or decode of ``z [1, L, (T-1)/4+1, H/8, W/8]``
    (random, channels-last as the model wants them, made before the memory window); ``chunk``
    video frames per chunk (decode: chunk // 4 latent frames), 0 = the full clip."""
    import torch

    cl = torch.channels_last_3d
    g = torch.Generator().manual_seed(0)
    t_lat = (frames - 1) // 4 + 1
    h, w = height // 8, width // 8
    if op == "encode":
        x = (torch.rand(1, 3, frames, height, width, generator=g) * 2 - 1).contiguous(
            memory_format=cl
        )
        size = chunk or None
        chunks = 1 if not chunk or 1 + chunk >= frames else 1 + -(-(frames - 1 - chunk) // chunk)
        out_numel = 2 * latent * t_lat * h * w  # the posterior's moments

        def run():
            return model.encode(x, chunk_size=size).posterior.mode()
    else:
        z = torch.randn(1, latent, t_lat, h, w, generator=g).contiguous(memory_format=cl)
        size = chunk // 4 if chunk else None
        chunks = 1 if not size or size >= t_lat else -(-t_lat // size)
        out_numel = 3 * frames * height * width

        def run():
            return model.decode(z, chunk_size=size).video

    # The window opens before the first (cold) call, which also counts the FLOPs and warms up:
    # memory the warm-up freed would otherwise be reused unseen by the timed calls. That call
    # runs the direct convs (FLOPs count Winograd convs as the direct convs they compute), so
    # Winograd's scratch buffers are first touched by the timed calls, inside the window.
    base = open_window()
    with direct_convs(model):
        flops, attention = count_flops_split(run)
    seconds = timeit(run, repeats, warmup=0)
    op_mb = window_peak_mb() - base
    output_mb = out_numel * 4 / 2**20
    return {
        "op": op,
        "frames": frames,
        "height": height,
        "width": width,
        "pixels": height * width,
        "mode": "fp32",
        "chunked": bool(chunk),
        "chunk_frames": chunk or None,
        "chunks": chunks,
        "time_s": seconds,
        "time_per_frame_ms": 1e3 * seconds / frames,
        "op_rss_mb": op_mb,
        "output_mb": output_mb,
        "working_mb": op_mb - output_mb,
        "gflop": flops / 1e9,
        "attention_gflop": attention / 1e9,
        "attention_fraction": attention / flops if flops else 0.0,
        "gflops": flops / seconds / 1e9,
        "loadavg": os.getloadavg(),
    }


# ---------------------------------------------------------------------------------- STDiff
def stdiff_recipe() -> dict:
    """The forecast recipe's network config and sampling settings (plain values)."""
    cfg = _compose(STDIFF_EXPERIMENT)
    model, data = cfg["model"], cfg["data"]
    sched = dict(model["noise_scheduler"])
    sched["_class_name"] = sched.pop("_target_").rsplit(".", 1)[-1]
    return {
        "net": model["net"],
        "scheduler_config": sched,
        "n_obs": data["n_obs"],
        "n_pred": data["n_pred"],
        "time_step": model["time_step"],
        "num_inference_steps": model["num_inference_steps"],
        "scheduler_type": model["scheduler_type"],
        "num_samples": model["num_samples"],
        "chunk_horizon": model["chunk_horizon"],
        "size": tuple(model["net"]["unet"]["sample_size"]),
    }


def stdiff_cases(recipe: dict, cases: list[dict], threads: int, repeats: int) -> list[dict]:
    """Run STDiff sampling cases (dicts of `_stdiff_case`'s keywords) in this process with one
    network (seed 0, random weights) built from the recipe's config; one row each."""
    import torch
    from hydra.utils import instantiate

    from stdiff.model import normalize_scheduler_config

    set_threads(threads)
    baseline = rss_mb()
    torch.manual_seed(0)
    net = instantiate(recipe["net"]).eval()
    net.scheduler_config = normalize_scheduler_config(recipe["scheduler_config"])
    h, w = recipe["size"]
    _stdiff_case(net, recipe, baseline, 1, 1, 1, 1, h, w)  # one-off costs, as for WF-VAE
    return [_stdiff_case(net, recipe, baseline, repeats, **case) for case in cases]


def _stdiff_case(
    net,
    recipe: dict,
    baseline: float,
    repeats: int,
    horizon: int,
    samples: int,
    steps: int,
    height: int,
    width: int,
    timed: bool = True,
) -> dict:
    """K = ``samples`` futures of ``horizon`` frames of one random sequence
    ``Vo [1, n_obs, C, H, W]`` with the recipe's sampler and ``steps`` steps; ``timed=False``
    counts the FLOPs only."""
    import torch

    from stdiff.pipeline import STDiffPipeline

    pipe = STDiffPipeline(net)
    n_obs, dt = recipe["n_obs"], recipe["time_step"]
    g = torch.Generator().manual_seed(0)
    vo = torch.rand(1, n_obs, net.channels, height, width, generator=g) * 2 - 1
    idx_o = dt * torch.arange(n_obs, dtype=torch.float32)
    idx_p = dt * torch.arange(n_obs, n_obs + horizon, dtype=torch.float32)

    def run():
        return pipe(
            vo,
            idx_o,
            idx_p,
            num_inference_steps=steps,
            num_samples=samples,
            generator=torch.Generator().manual_seed(1),
            scheduler_type=recipe["scheduler_type"],
            chunk_horizon=recipe["chunk_horizon"],
        ).frames

    base = open_window()  # before the first (cold) call, as for WF-VAE
    flops, attention = count_flops_split(run)
    row = {
        "horizon": horizon,
        "samples": samples,
        "steps": steps,
        "height": height,
        "width": width,
        "pixels": height * width,
        "mode": "fp32",
        "gflop": flops / 1e9,
        "attention_gflop": attention / 1e9,
        "attention_fraction": attention / flops if flops else 0.0,
    }
    if not timed:
        return row
    seconds = timeit(run, repeats, warmup=0)
    peak = window_peak_mb()
    row.update(
        time_s=seconds,
        time_per_frame_s=seconds / horizon,
        gflops=flops / seconds / 1e9,
        op_rss_mb=peak - base,
        peak_minus_baseline_mb=peak - baseline,
        loadavg=os.getloadavg(),
    )
    return row


# ------------------------------------------------------------------------------------- run
def _mem_available_mb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 8192.0


def _wfvae_plan(sizes: dict, max_frames: int, chunk: int) -> list[dict]:
    """The WF-VAE cases in order (T series ascending, then the resolution series), chunked
    before full, each (op, T, H, W, chunked) once."""
    seen, cases = set(), []
    hb, wb = sizes["base"]
    points = [(t, hb, wb) for t in sizes["frames"] if t <= max_frames]
    points += [(sizes["size_frames"], h, w) for h, w in sizes["sizes"]]
    for frames, h, w in points:
        for op in OPS:
            for c in (chunk, 0):
                key = (op, frames, h, w, c)
                if key not in seen:
                    seen.add(key)
                    cases.append(dict(op=op, frames=frames, height=h, width=w, chunk=c))
    return cases


def _run_wfvae(ctx: Context, net: dict, sizes: dict, quick: bool) -> tuple[list, list]:
    """Rows and skipped full-clip cases. A full-clip case is skipped when the largest peak
    memory per frame of the same op and size so far, times T, exceeds the limit."""
    a = ctx.args
    cases = _wfvae_plan(sizes, a.scaling_max_frames, a.scaling_chunk)
    if quick:
        rows = in_process(wfvae_cases, net, cases, a.threads, a.scaling_repeats)
        return [emit(add_peak_fractions(r, ctx.conv_peak)) for r in rows], []
    limit = a.scaling_max_full_mb or 0.5 * _mem_available_mb()
    rows, skipped = [], []
    for case in cases:
        if not case["chunk"]:
            done = [
                r["op_rss_mb"] / r["frames"]
                for r in rows
                if not r["chunked"]
                and (r["op"], r["height"], r["width"])
                == (case["op"], case["height"], case["width"])
            ]
            estimate = max(done, default=0.0) * case["frames"]
            if estimate > limit:
                skipped.append(
                    emit({**case, "skipped": f"estimated {estimate:.0f} MB > {limit:.0f}"})
                )
                continue
        (row,) = in_process(wfvae_cases, net, [case], a.threads, a.scaling_repeats)
        rows.append(emit(add_peak_fractions(row, ctx.conv_peak)))
    return rows, skipped


def _stdiff_plan(recipe: dict, sizes: dict) -> list[dict]:
    """STDiff cases: the horizon series (K = 1), the K series (the recipe's horizon; its K = 1
    point is the horizon series' one when the recipe's horizon is in it) and the FLOP-only
    one-step calls against the frame size."""
    steps = sizes["steps"] or recipe["num_inference_steps"]
    h, w = recipe["size"]
    tp = recipe["n_pred"]
    base = dict(steps=steps, height=h, width=w)
    cases = [dict(base, horizon=n, samples=1) for n in sizes["horizons"]]
    cases += [
        dict(base, horizon=tp, samples=k)
        for k in sizes["samples"]
        if not (k == 1 and tp in sizes["horizons"])
    ]
    cases += [
        dict(horizon=1, samples=1, steps=1, height=hh, width=ww, timed=False)
        for hh, ww in sizes["step_sizes"]
    ]
    return cases


def _run_stdiff(ctx: Context, recipe: dict, sizes: dict, quick: bool) -> list[dict]:
    a = ctx.args
    cases = _stdiff_plan(recipe, sizes)
    if quick:
        rows = in_process(stdiff_cases, recipe, cases, a.threads, a.scaling_repeats)
    else:  # a process per timed case; the FLOP counts (nothing measured) share one
        timed = [c for c in cases if c.get("timed", True)]
        rows = [
            in_process(stdiff_cases, recipe, [c], a.threads, a.scaling_repeats)[0] for c in timed
        ]
        counts = [c for c in cases if not c.get("timed", True)]
        rows += in_process(stdiff_cases, recipe, counts, a.threads, 1) if counts else []
    return [emit(add_peak_fractions(r, ctx.conv_peak) if "gflops" in r else r) for r in rows]


#: The metrics fitted per series: label -> row key.
WFVAE_METRICS = {"time": "time_s", "memory": "op_rss_mb", "working_memory": "working_mb",
                 "gflop": "gflop"}  # fmt: skip
STDIFF_METRICS = {"time": "time_s", "memory": "op_rss_mb", "gflop": "gflop"}
STEP_METRICS = {"gflop": "gflop", "attention_gflop": "attention_gflop"}
#: Memory below 1 MB is within the page / allocator noise of the RSS window: not fitted.
MEMORY_FLOORS = {"memory": 1.0, "working_memory": 1.0}


def fits(
    wfvae_rows: list[dict],
    stdiff_rows: list[dict],
    base: tuple[int, int],
    size_frames: int,
    horizon: int,
) -> list[dict]:
    """Growth exponents of every series with two points or more (see `fit_series`): WF-VAE
    op x chunked/full against T (at ``base`` size) and against pixels (at ``size_frames``);
    STDiff against Tp (K = 1), against K (at ``horizon``), one step's FLOPs against pixels."""
    series = []
    for op in OPS:
        for chunked in (True, False):
            kind = "chunked" if chunked else "full"
            sel = [r for r in wfvae_rows if r["op"] == op and r["chunked"] == chunked]
            by_t = [r for r in sel if (r["height"], r["width"]) == tuple(base)]
            by_px = [r for r in sel if r["frames"] == size_frames]
            series += [
                (f"wfvae_{op}_{kind}_vs_frames", "T", by_t, "frames", WFVAE_METRICS),
                (f"wfvae_{op}_{kind}_vs_pixels", "pixels", by_px, "pixels", WFVAE_METRICS),
            ]
    timed = [r for r in stdiff_rows if "time_s" in r]
    series += [
        ("stdiff_sampling_vs_horizon", "Tp", [r for r in timed if r["samples"] == 1],
         "horizon", STDIFF_METRICS),
        ("stdiff_sampling_vs_samples", "K", [r for r in timed if r["horizon"] == horizon],
         "samples", STDIFF_METRICS),
        ("stdiff_step_flops_vs_pixels", "pixels", [r for r in stdiff_rows if "time_s" not in r],
         "pixels", STEP_METRICS),
    ]  # fmt: skip
    return [
        _fit_rows(name, sym, rows, key, metrics)
        for name, sym, rows, key, metrics in series
        if len({r[key] for r in rows}) >= 2
    ]


def _fit_rows(name: str, symbol: str, rows: list[dict], key: str, metrics: dict[str, str]) -> dict:
    values = {m: [r[k] for r in rows] for m, k in metrics.items()}
    fit = fit_series(name, symbol, [r[key] for r in rows], values, MEMORY_FLOORS)
    top = max(rows, key=lambda r: r[key])
    if top.get("attention_fraction"):
        fit["attention_fraction_at_top"] = top["attention_fraction"]
        fit["notes"] += (
            f"; attention {100 * top['attention_fraction']:.1f} % of the FLOPs at the top"
        )
    return fit


def run(ctx: Context) -> dict:
    """The section: WF-VAE and STDiff series (``--scaling-parts``), their fits, the figure and
    the section's JSON in ``--out``."""
    a = ctx.args
    if a.scaling_chunk < 4 or a.scaling_chunk % 4:
        raise SystemExit(f"--scaling-chunk must be a positive multiple of 4, got {a.scaling_chunk}")
    quick = a.scaling_quick
    sizes = SIZES["quick" if quick else "default"]
    result: dict[str, Any] = {
        "settings": {
            "quick": quick,
            "threads": a.threads,
            "repeats": a.scaling_repeats,
            "wfvae_model": a.scaling_wfvae_model,
            "chunk_frames": a.scaling_chunk,
            "sizes": sizes,
        },
        "loadavg_at_start": os.getloadavg(),
    }
    if ctx.conv_peak is None and not quick:
        ctx.conv_peak = in_process(conv_peak, a.threads)["gflops"]
    result["settings"]["conv_peak_gflops"] = ctx.conv_peak
    wfvae_rows: list[dict] = []
    stdiff_rows: list[dict] = []
    recipe = stdiff_recipe()
    if "wfvae" in a.scaling_parts:
        net = wfvae_net_kwargs(a.scaling_wfvae_model)
        result["settings"]["wfvae_net"] = net
        wfvae_rows, skipped = _run_wfvae(ctx, net, sizes, quick)
        result["wfvae"], result["wfvae_skipped_full"] = wfvae_rows, skipped
    if "stdiff" in a.scaling_parts:
        result["settings"]["stdiff_recipe"] = {k: v for k, v in recipe.items() if k != "net"}
        stdiff_rows = _run_stdiff(ctx, recipe, sizes, quick)
        result["stdiff"] = [r for r in stdiff_rows if "time_s" in r]
        result["stdiff_step_flops"] = [r for r in stdiff_rows if "time_s" not in r]
    result["fits"] = fits(
        wfvae_rows, stdiff_rows, sizes["base"], sizes["size_frames"], recipe["n_pred"]
    )
    result["loadavg_at_end"] = os.getloadavg()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        result["figure"] = str(plot(result, out / "scaling.png"))
    except ImportError as e:  # matplotlib is optional: the numbers stand without the figure
        result["figure"] = None
        result["figure_error"] = f"no figure: {e}"
    (out / "scaling.json").write_text(json.dumps(result, indent=2))
    return {"scaling": result}


# ------------------------------------------------------------------------------------ figure
def _fit_of(result: dict, name: str) -> dict:
    return next((f for f in result.get("fits", []) if f["series"] == name), {})


def _label(text: str, fit: dict, symbol: str, metric: str = "time") -> str:
    e = fit.get(f"{metric}_exponent")
    return text if e is None else f"{text} ({symbol}^{e:.2f})"


def _wfvae_series(result: dict, op: str, chunked: bool, along: str) -> list[dict]:
    """The WF-VAE rows of one op and mode along "frames" (at the base size) or "pixels" (at
    the resolution series' length), sorted."""
    sizes = result["settings"]["sizes"]
    rows = [r for r in result.get("wfvae", []) if r["op"] == op and r["chunked"] == chunked]
    if along == "frames":
        rows = [r for r in rows if [r["height"], r["width"]] == list(sizes["base"])]
    else:
        rows = [r for r in rows if r["frames"] == sizes["size_frames"]]
    return sorted(rows, key=lambda r: r[along])


def _draw(ax, xs: list, ys: list, label: str, reference: bool = False, **kw: Any) -> None:
    """One series; with ``reference`` also a slope-1 line through its first point."""
    ax.plot(xs, ys, label=label, **kw)
    if reference and xs and ys[0] > 0:
        ends = [min(xs), max(xs)]
        ax.plot(ends, [ys[0] * x / xs[0] for x in ends], ":", color="0.5", label="linear")


def plot(result: dict, path: Path) -> Path:
    """The 2 x 2 figure (log-log): WF-VAE time and memory (peak RSS minus the RSS before the
    call) against T, WF-VAE time against pixels (encode / decode; chunked solid, full dashed),
    STDiff sampling time against Tp and K; exponents from ``result["fits"]`` in the legends and
    a slope-1 reference in the time panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    s = result["settings"]
    (h, w), nf = s["sizes"]["base"], s["sizes"]["size_frames"]
    fig, ((ax_t, ax_m), (ax_px, ax_sd)) = plt.subplots(2, 2, figsize=(11, 8.5))
    colors = {"encode": "tab:blue", "decode": "tab:orange"}
    for op in OPS:
        for chunked in (True, False):
            kind = "chunked" if chunked else "full"
            kw = dict(color=colors[op], linestyle="-" if chunked else "--", marker="o", ms=4)
            ref = op == "decode" and chunked
            by_t = _wfvae_series(result, op, chunked, "frames")
            by_px = _wfvae_series(result, op, chunked, "pixels")
            fit_t = _fit_of(result, f"wfvae_{op}_{kind}_vs_frames")
            fit_px = _fit_of(result, f"wfvae_{op}_{kind}_vs_pixels")
            ts = [r["frames"] for r in by_t]
            if by_t:
                times = [r["time_s"] for r in by_t]
                mem = [max(r["op_rss_mb"], 0.1) for r in by_t]
                _draw(ax_t, ts, times, _label(f"{op} {kind}", fit_t, "T"), ref, **kw)
                _draw(ax_m, ts, mem, _label(f"{op} {kind}", fit_t, "T", "memory"), **kw)
            if by_t and ref:
                out = [r["output_mb"] for r in by_t]
                ax_m.plot(ts, out, ":", color="k", label="decoded video (the output)")
            if by_px:
                pxs, times = [r["pixels"] for r in by_px], [r["time_s"] for r in by_px]
                _draw(ax_px, pxs, times, _label(f"{op} {kind}", fit_px, "px"), ref, **kw)
    sd = [r for r in result.get("stdiff", []) if "time_s" in r]
    tp = s.get("stdiff_recipe", {}).get("n_pred")
    by_tp = sorted((r for r in sd if r["samples"] == 1), key=lambda r: r["horizon"])
    by_k = sorted((r for r in sd if r["horizon"] == tp), key=lambda r: r["samples"])
    if by_tp:
        label = _label("vs horizon Tp (K = 1)", _fit_of(result, "stdiff_sampling_vs_horizon"), "Tp")
        xs, ys = [r["horizon"] for r in by_tp], [r["time_s"] for r in by_tp]
        _draw(ax_sd, xs, ys, label, True, color="tab:green", marker="o")
    if by_k:
        label = _label(f"vs K (Tp = {tp})", _fit_of(result, "stdiff_sampling_vs_samples"), "K")
        xs, ys = [r["samples"] for r in by_k], [r["time_s"] for r in by_k]
        _draw(ax_sd, xs, ys, label, color="tab:purple", marker="s")
    panels = (
        (ax_t, f"WF-VAE time, {h} x {w}", "clip length T (frames)", "time (s)"),
        (ax_m, f"WF-VAE memory, {h} x {w}", "clip length T (frames)", "peak RSS - RSS before (MB)"),
        (ax_px, f"WF-VAE time, T = {nf}", "pixels per frame (H x W)", "time (s)"),
        (ax_sd, "STDiff sampling (forecast recipe)", "horizon Tp or samples K", "time (s)"),
    )
    for ax, title, xlabel, ylabel in panels:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in (ax_t, ax_m, ax_sd):  # counts: plain tick labels at the measured values
        ticks = sorted({x for line in ax.get_lines() for x in line.get_xdata()})
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    quick = ", quick sizes (one process per model)" if s["quick"] else ""
    fig.suptitle(
        f"Scaling: WF-VAE {s['wfvae_model']} (chunks of {s['chunk_frames']} frames), STDiff "
        f"forecast recipe\nfp32, {s['threads']} threads{quick}; load average "
        f"{result['loadavg_at_start'][0]:.1f} -> {result.get('loadavg_at_end', [0.0])[0]:.1f}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
