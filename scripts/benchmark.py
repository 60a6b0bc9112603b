"""Speed / memory benchmark; prints one JSON document on stdout.

    python scripts/benchmark.py                 # conv peak, WF-VAE 17x128^2 (bc64 + L), Lightning overhead
    python scripts/benchmark.py --large         # adds 33x256^2
    python scripts/benchmark.py --only conv_peak wfvae_chunked
    python scripts/benchmark.py --large --reference-wfvae /path/to/WF-VAE   # + the published code

Every time comes with its ceiling, measured in the same run: FLOPs (FlopCounterMode), achieved
GFLOP/s and the fraction of the machine's conv peak (one large Conv3d, fp32 and bf16
channels-last). Each model measurement runs in a fresh process so that its peak RSS is its own.
Reference figures (the published code timed on the same machine kind) are in
scripts/bench/references.json, each with its provenance; with
``--reference-wfvae DIR`` (a checkout of PKU-YuanGroup/WF-VAE) the published code is also timed
in the same run, on the same machine, which is the ratio to trust (machines of one kind differ
by 20 % or more in their conv peak).

STDiff sections (only when named):

    OMP_WAIT_POLICY=PASSIVE python scripts/benchmark.py --only stdiff_train stdiff_unet \
        stdiff_quality --stdiff-threads 1 2
    OMP_WAIT_POLICY=PASSIVE python scripts/benchmark.py --only stdiff_kitti --stdiff-threads 1
    OMP_WAIT_POLICY=PASSIVE python scripts/benchmark.py --only stdiff_truncation --stdiff-threads 1

stdiff_train: reduced 64 x 128 training step (batch 1, 3 -> 3, AdamW), fp32 and bf16
channels-last, SDE adjoint on (as the reference) and off; stdiff_kitti: kitti_range 64 x 512
step time and peak RSS minus baseline (bf16 channels-last with and without gradient
checkpointing, fp32 with it); stdiff_unet: one kitti_range UNet evaluation per frame (the
first of a frame and one with the SPADE modulation cached); stdiff_quality: bf16 against fp32;
stdiff_truncation: frame-truncation speed (reduced; its quality cost on briefly-trained tiny
models is an experiment: scripts/truncation_study.py); stdiff_sde: the TDE alone at the
kitti_range and reduced sizes with the SDE's nets in fp32 and in bf16, on the process's threads
and on one, and bf16's numerical cost. --reference-stdiff DIR: stdiff_train also times the
published reduced step in the same run (scripts/bench/stdiff_reference.py); --stdiff-rounds 3
repeats our rows three times with the published step timed between rounds (the machine's speed
drifts within a run: each round is compared with the published timings around it).

On a shared machine, OMP_WAIT_POLICY=PASSIVE keeps idle OpenMP threads from spinning (without
it, 2-thread runs slowed down many times when other processes took a core); the load average
is recorded with every case.

Scaling (only when named; about 4-6 minutes on 2 cores, --scaling-quick under 30 s):

    OMP_WAIT_POLICY=PASSIVE python scripts/benchmark.py --only scaling --out logs/benchmark
    OMP_WAIT_POLICY=PASSIVE python scripts/benchmark.py --only scaling --scaling-quick

scaling: time, peak RSS and GFLOP of WF-VAE encode / decode (the flagship network of
configs/experiment/wfvae_kitti.yaml, or --scaling-wfvae-model bc64 / wfvae_l_16ch) against
the clip length (9 to 257 frames at 128^2, chunked with the streaming chunk cache and on the
full clip where it fits) and the frame size (64^2 to 256^2 and 128 x 416 at 17 frames); of
STDiff sampling (the forecast recipe, configs/experiment/stdiff_kitti_range_forecast.yaml,
random weights, DDIM 20 steps) against the horizon and the number of samples K. Log-log growth
exponents of every series with a note saying where cost grows faster than linear; the figure
<--out>/scaling.png and the section's JSON <--out>/scaling.json (see scripts/bench/scaling.py).

Data loaders (only when named; about 2 minutes):

    OMP_WAIT_POLICY=PASSIVE python scripts/benchmark.py --only data
    OMP_WAIT_POLICY=PASSIVE python scripts/benchmark.py --only data --data-loaders kitti_range \
        --data-workers 0 --data-seconds 1 --data-steps 1          # a smoke run

data: clips per second of each training loader (synthetic KITTI camera PNGs and PyAV video
folders at the wfvae_kitti sizes, velodyne range sequences at the stdiff_kitti_range_forecast
ones), built from the composed experiment config, at num_workers 0, 1, 2 and the config's
default, against the clips per second the recipe's training step consumes (batch / step time,
measured in the same run); the goal is >= 3x at the default num_workers. --data-fed-steps 20
also times the step fed by the loader at each num_workers (do workers help when they share the
cores with the step?). Details in scripts/bench/data.py.

WF-VAE training step (only when named; with the conv peak for the fractions):

    OMP_WAIT_POLICY=PASSIVE python scripts/benchmark.py --only conv_peak wfvae_train \
        --models bc64 --reference-wfvae /path/to/WF-VAE

wfvae_train: our full VAE-GAN step (generator with every loss term and the adaptive GAN
weight, then the discriminator step) against the published model's forward + backward (L1 +
KL, AdamW) in the same run, fp32 (Winograd where it pays), fp32_direct and bf16
channels-last, batch 1, 9 x 128^2 by default; every row against the published step in fp32 and
under bf16 autocast.

Winograd against the direct conv, one conv at a time (only when named; ~2 min):

    OMP_WAIT_POLICY=PASSIVE python scripts/benchmark.py --only conv_peak winograd

GPU on paper (only when named; nothing is timed, about a minute on one thread):

    OMP_NUM_THREADS=1 python scripts/benchmark.py --only gpu_paper

gpu_paper: expected training-step time and memory of the target configs (STDiff reduced and
kitti_range, the WF-VAE flagship and WF-VAE-L, WF-VAE-L 17x256^2 encode / decode) on one H100 /
H200 SXM and the largest batch that fits, from a meta-device simulation of each step (FLOPs,
bytes moved, kernels, host syncs, peak live memory) and the datasheet figures in
scripts/bench/references.json; the assumptions are in scripts/bench/gpu_paper.py.

On a GPU (only when named; needs CUDA; on one H200 the cases up to the compiled ones took 400 s,
each compiled case about 160 s more, so raise --gpu-budget-s for all of them; --gpu-device cpu
--gpu-quick runs the same code path on tiny sizes, for the tests):

    python scripts/benchmark.py --only gpu --repeats 5 --out DIR --reference-wfvae /path/to/WF-VAE

gpu: the CUDA path in one process: the GPU's own ceilings (bf16 / TF32 / fp32 matmul, Conv3d,
copy bandwidth), the CUDA path checked against the CPU, STDiff and WF-VAE training steps (fp32,
bf16 channels-last, larger batches, gradient checkpointing, torch.compile of the UNet),
WF-VAE-L encode / decode against the published code; rows and errors also in <--out>/gpu.json,
rewritten after every case (see scripts/bench/gpu.py).

Layout: this file parses the arguments and runs the sections in order; scripts/bench/ holds the
harness (fresh process per case, peak RSS, FLOPs, conv peak, references) and one file per
section, each with a ``run(ctx) -> dict`` of result keys.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.bench import (  # noqa: E402
    data,
    gpu,
    gpu_paper,
    lightning,
    scaling,
    stdiff,
    stdiff_quality,
    stdiff_sde,
    stdiff_train,
    stdiff_truncation,
    stdiff_unet,
    wfvae,
    wfvae_chunked,
    wfvae_quality,
    wfvae_train,
    winograd,
)
from scripts.bench.harness import Context, conv_peak, in_process  # noqa: E402

Section = Callable[[Context], dict]


def run_conv_peak(ctx: Context) -> dict:
    """The machine's conv ceiling; later sections express their GFLOP/s against it."""
    out = in_process(conv_peak, ctx.args.threads)
    ctx.conv_peak = out["gflops"]
    return {"conv_peak": out}


#: Sections run by default (or as named in --only), in this order.
SECTIONS: dict[str, Section] = {
    "conv_peak": run_conv_peak,
    "wfvae": wfvae.run,
    "wfvae_quality": wfvae_quality.run,
    "wfvae_chunked": wfvae_chunked.run,
    "lightning": lightning.run,
}
#: Sections run only when named in --only (after the STDiff conv peaks), in this order.
STDIFF_SECTIONS: dict[str, Section] = {
    "stdiff_train": stdiff_train.run_reduced,
    "stdiff_kitti": stdiff_train.run_kitti,
    "stdiff_unet": stdiff_unet.run,
    "stdiff_quality": stdiff_quality.run,
    "stdiff_truncation": stdiff_truncation.run,
    "stdiff_sde": stdiff_sde.run,
}
#: Sections run only when named in --only, after the STDiff ones: growth with input size.
SCALING_SECTIONS: dict[str, Section] = {
    "scaling": scaling.run,
    "wfvae_train": wfvae_train.run,
    "winograd": winograd.run,
}
#: Sections run only when named in --only, after the STDiff ones.
DATA_SECTIONS: dict[str, Section] = {"data": data.run}
#: Sections run only when named in --only, after the others: estimates, nothing timed.
PAPER_SECTIONS: dict[str, Section] = {"gpu_paper": gpu_paper.run}
#: Sections run only when named in --only, last: on a CUDA device.
GPU_SECTIONS: dict[str, Section] = {"gpu": gpu.run}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    p.add_argument("--large", action="store_true", help="also 33x256^2 (minutes)")
    p.add_argument("--models", nargs="+", default=["bc64", "wfvae_l_16ch"])
    p.add_argument(
        "--modes",
        nargs="+",
        default=["fp32", "fp32_direct", "bf16_cl", "bf16w_cl"],
        help="fp32 (Winograd where it pays) | fp32_direct (direct convs only) | bf16_cl "
        "(autocast, channels-last) | bf16w_cl (bf16 weights, channels-last)",
    )
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--reference-wfvae",
        metavar="DIR",
        default=None,
        help="a local checkout of PKU-YuanGroup/WF-VAE (not part of this project): also time "
        "the published code in the same run, same architecture and input",
    )
    p.add_argument(
        "--reference-stdiff",
        default=None,
        help="a checkout of the published STDiff code (anirudhp3010/STDiffproject, with its "
        "CustomDiffusers): stdiff_train also times its reduced step in the same run "
        "(scripts/bench/stdiff_reference.py)",
    )
    p.add_argument(
        "--reference-stdiff-path",
        nargs="*",
        default=[],
        help="folders put in front of sys.path for the published STDiff (huggingface_hub<0.26, "
        "torchdiffeq)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        help=f"subset of: {' '.join(SECTIONS)}; STDiff (only when named): "
        f"{' '.join(STDIFF_SECTIONS)}; scaling and data loaders (only when named): "
        f"{' '.join(SCALING_SECTIONS)} {' '.join(DATA_SECTIONS)}; "
        f"on paper (only when named): {' '.join(PAPER_SECTIONS)}; "
        f"on a GPU (only when named): {' '.join(GPU_SECTIONS)}",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default="logs/benchmark",
        help="folder for the files sections write (scaling: scaling.png, scaling.json)",
    )
    p.add_argument(
        "--stdiff-threads",
        type=int,
        nargs="+",
        default=None,
        help="thread counts for the STDiff sections (default --threads; stdiff_kitti, "
        "stdiff_quality and stdiff_truncation use the first)",
    )
    p.add_argument(
        "--stdiff-modes",
        nargs="+",
        default=["fp32", "bf16_cl"],
        help="fp32 | fp32_cl | bf16 | bf16_cl | bf16sde_cl (_cl: channels-last model and input; "
        "bf16sde: the SDE's drift / diffusion nets in bf16 too, opt-in), each optionally with "
        "@N: the SDE solve on N threads (e.g. bf16sde_cl@1), and in stdiff_train with +compile: "
        "the UNet under torch.compile, timed after the compile (e.g. bf16sde_cl@1+compile)",
    )
    p.add_argument(
        "--stdiff-adjoint",
        choices=["both", "on", "off"],
        default="both",
        help="stdiff_train's reduced rows: SDE adjoint on (as published), off, or both",
    )
    p.add_argument(
        "--stdiff-rounds",
        type=int,
        default=1,
        help="stdiff_train with --reference-stdiff: our rows this many times, the published step "
        "timed between rounds; each row's ratio against the published timings around its round",
    )
    g = p.add_argument_group("scaling")
    g.add_argument(
        "--scaling-quick", action="store_true", help="tiny sizes, one process per model (smoke)"
    )
    g.add_argument(
        "--scaling-wfvae-model",
        default="flagship",
        help="flagship (configs/experiment/wfvae_kitti.yaml's network) or a named size: "
        "bc64 | wfvae_s | wfvae_l_16ch | tiny",
    )
    g.add_argument(
        "--scaling-parts", nargs="+", default=["wfvae", "stdiff"], choices=["wfvae", "stdiff"]
    )
    g.add_argument(
        "--scaling-chunk",
        type=int,
        default=8,
        help="video frames per WF-VAE chunk, a multiple of 4 (decode: chunk / 4 latent frames)",
    )
    g.add_argument("--scaling-max-frames", type=int, default=257, help="longest WF-VAE clip")
    g.add_argument(
        "--scaling-max-full-mb",
        type=float,
        default=None,
        help="skip a full-clip WF-VAE case estimated above this (default: half the available "
        "memory)",
    )
    p.add_argument(
        "--wfvae-train-frames", type=int, default=9, help="wfvae_train: frames of the clip"
    )
    p.add_argument("--wfvae-train-size", type=int, default=128, help="wfvae_train: frame size")
    g.add_argument("--scaling-repeats", type=int, default=1, help="timed calls per case")
    p.add_argument(
        "--data-loaders",
        nargs="+",
        default=None,
        choices=list(data.LOADERS),
        help="loaders of the data section (default: all)",
    )
    p.add_argument(
        "--data-workers",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="num_workers values of the data section (the config's default is always added)",
    )
    p.add_argument(
        "--data-seconds",
        type=float,
        default=3.0,
        help="data section: seconds of batches per loader case (or one epoch, if shorter)",
    )
    p.add_argument("--data-steps", type=int, default=3, help="data section: timed training steps")
    p.add_argument(
        "--data-warmup", type=int, default=1, help="data section: untimed training steps first"
    )
    p.add_argument(
        "--data-fed-steps",
        type=int,
        default=0,
        help="data section: also time this many steps fed by the loader itself at each "
        "--data-workers value (loading and the step sharing the cores; 0 = off)",
    )
    g = p.add_argument_group("gpu")
    g.add_argument("--gpu-device", default="cuda", help="gpu section: torch device (cpu: smoke)")
    g.add_argument("--gpu-quick", action="store_true", help="gpu section: tiny sizes (a smoke run)")
    g.add_argument(
        "--gpu-budget-s",
        type=float,
        default=480.0,
        help="gpu section: cases that would start after this many seconds are skipped",
    )
    g.add_argument(
        "--gpu-groups",
        nargs="+",
        default=None,
        choices=["check", "stdiff_train", "wfvae_train", "wfvae_infer", "stdiff_compile"],
        help="gpu section: only these groups of cases (the ceilings always run)",
    )
    return p.parse_args(argv)


def machine(threads: int) -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        # A preloaded allocator (tcmalloc / jemalloc) changes CPU step times by up to 10 %.
        "ld_preload": os.environ.get("LD_PRELOAD"),
        "loadavg_at_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    only = args.only
    ctx = Context(args)
    result: dict = {"machine": machine(args.threads)}
    for name, section in SECTIONS.items():
        if only is None or name in only:
            result.update(section(ctx))
    stdiff_wanted = [name for name in STDIFF_SECTIONS if name in (only or [])]
    if stdiff_wanted:
        result.update(stdiff.conv_peaks(ctx))
    for name in stdiff_wanted:
        result.update(STDIFF_SECTIONS[name](ctx))
    later = {**SCALING_SECTIONS, **DATA_SECTIONS, **PAPER_SECTIONS, **GPU_SECTIONS}
    for name, section in later.items():
        if name in (only or []):
            result.update(section(ctx))
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
