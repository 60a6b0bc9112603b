"""Section ``gpu`` (only when named): the CUDA path of the benchmark on one GPU, in one process.

    python scripts/benchmark.py --only gpu --out DIR [--reference-wfvae DIR]
    python scripts/benchmark.py --only gpu --gpu-device cpu --gpu-quick   # smoke run, no GPU
    python scripts/benchmark.py --only gpu --gpu-groups wfvae_infer stdiff_compile   # a subset

What it measures, in this order (each case is independent: one that fails is recorded with its
error and the run goes on; ``--gpu-budget-s`` skips the cases that would start after it;
``--gpu-groups`` runs only the named groups, after the ceilings):

1. ceilings, measured in the same run: a bf16 and a TF32 / plain fp32 matrix product (8192^3),
   one large Conv3d (384 -> 384, 3^3, 4 x 9 x 64^2; bf16 channels-last and fp32 with cuDNN's
   TF32, PyTorch's default) and a device-to-device copy (bytes read + written);
2. correctness of the CUDA path: our WF-VAE (bc64 widths) and the STDiff training step on the
   GPU against the same weights and inputs on the CPU (fp32 with TF32 off; the STDiff loss with
   the drift-only SDE and fixed noise, so that no random number differs): relative error of
   the outputs / the gradient vector, and bf16 autocast against fp32 on the GPU;
3. STDiff training steps (3 -> 3 frames, AdamW, the ``stdiff_train`` step): reduced 64 x 128 in
   fp32 and bf16 channels-last, SDE adjoint on (as published) and off, batch 1 and larger
   batches; kitti_range 64 x 512, bf16 channels-last with and without gradient checkpointing,
   fp32, batch 1 and 8;
4. WF-VAE training steps: the flagship network (configs/experiment/wfvae_kitti.yaml, no GAN, as
   that recipe) at its batch 2 and at 32, 9 x 64 x 192; WF-VAE-L 16ch with the full VAE-GAN
   recipe at the published 25 x 256^2 clips, batch 1 and 4; with ``--reference-wfvae`` the
   published model's forward + L1 + KL backward + AdamW in the same run;
5. WF-VAE-L 16ch encode / decode of 17 x 256^2, fp32, bf16 channels-last (autocast) and bf16
   weights channels-last, and the published code in fp32 / bf16 autocast in the same run;
6. ``torch.compile`` of the STDiff UNet (inductor, bf16 channels-last; compile time recorded).

Every row: median step time over ``--repeats`` timed calls after warm-ups (each call ends with a
device sync: the STDiff steps sync on the host anyway, for the SDE's time grid), FLOPs of one
call (FlopCounterMode; on CUDA it counts the flash / memory-efficient attention kernels too),
achieved TFLOP/s and its fraction of the measured matmul / conv peak of the row's precision
(fp32 rows against the TF32 matmul: PyTorch's default lets cuDNN run fp32 convolutions on TF32;
the fp32 conv ceiling runs the same way), peak memory (``torch.cuda.max_memory_allocated`` over the timed calls) and samples
per second. ``cudnn.benchmark`` is on (fixed shapes, as configs/trainer/gpu.yaml). The JSON is
also written to ``<--out>/gpu.json`` after every case, so a run cut short keeps what it
measured.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scripts.bench.harness import Context, bf16_autocast, emit
from scripts.bench.wfvae import build_reference_wfvae, inference_call, reference_inference_call

#: The cases' sizes: full (on a GPU) and quick (a CPU smoke run of the same code path).
SIZES = {
    "full": {
        "matmul_n": 8192,
        "conv_batch": 4,
        "copy_mb": 2048,
        "stdiff_reduced_batches": [1, 8, 32],
        "stdiff_kitti_batches": [1, 8],
        "flagship_batches": [2, 32],
        "wfvae_l_train": (25, 256, [1, 4]),
        "wfvae_l_infer": (17, 256),
        "check_wfvae": (9, 64),
        "compile_cases": [("kitti_range", 8), ("reduced", 32)],
    },
    "quick": {
        "matmul_n": 256,
        "conv_batch": 1,
        "copy_mb": 16,
        "stdiff_reduced_batches": [1],
        "stdiff_kitti_batches": [],
        "flagship_batches": [1],
        "wfvae_l_train": (5, 32, [1]),
        "wfvae_l_infer": (5, 32),
        "check_wfvae": (5, 32),
        "compile_cases": [],
    },
}


# --------------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_calls(fn: Callable[[], Any], device: str, repeats: int, warmup: int = 2) -> dict:
    """Median and all wall times (s) of ``repeats`` calls of ``fn`` after ``warmup`` calls,
    each timed call ending with a device sync; peak device memory over the timed calls."""
    import torch

    for _ in range(warmup):
        fn()
    sync(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    out = {"time_s": statistics.median(times), "times_s": times}
    if cuda:
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
        out["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 1e9
    return out


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure(
    fn: Callable[[], Any],
    device: str,
    repeats: int,
    ceil: dict,
    precision: str,
    flops: int | None = None,
) -> dict:
    """Time, FLOPs (one more call, unless given), TFLOP/s and its fractions of the run's
    ceilings."""
    row = time_calls(fn, device, repeats)
    if flops is None:
        flops = count_flops(fn)
    row["gflop"] = flops / 1e9
    row["tflops"] = flops / row["time_s"] / 1e12
    key = "bf16" if precision.startswith("bf16") else "fp32"
    if key == "fp32" and ceil.get("matmul_tf32_tflops") and _cudnn_tf32():
        key = "tf32"  # PyTorch's default lets cuDNN run fp32 convolutions on TF32 tensor cores
    if ceil.get(f"matmul_{key}_tflops"):
        row["fraction_of_matmul_peak"] = row["tflops"] / ceil[f"matmul_{key}_tflops"]
    conv_key = "bf16" if key == "bf16" else "fp32"  # the fp32 conv ceiling ran under TF32 too
    if ceil.get(f"conv_{conv_key}_tflops"):
        row["fraction_of_conv_peak"] = row["tflops"] / ceil[f"conv_{conv_key}_tflops"]
    row["peak_key"] = key
    return row


def _cudnn_tf32() -> bool:
    import torch

    return bool(torch.backends.cudnn.allow_tf32)


def free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------- ceilings
def ceilings(device: str, sizes: dict, repeats: int) -> dict:
    """bf16 / TF32 / fp32 matmul, Conv3d bf16 channels-last / fp32 (cuDNN TF32) and copy
    bandwidth, on ``device``: the run's own ceilings (its tensors are freed on return)."""
    import torch

    n = sizes["matmul_n"]
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    out: dict[str, Any] = {"matmul_n": n}
    flops = 2 * n**3
    a16, b16 = a.bfloat16(), b.bfloat16()
    out["matmul_bf16_tflops"] = (
        flops / time_calls(lambda: a16 @ b16, device, repeats)["time_s"] / 1e12
    )
    if device.startswith("cuda"):
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        out["matmul_tf32_tflops"] = (
            flops / time_calls(lambda: a @ b, device, repeats)["time_s"] / 1e12
        )
        torch.backends.cuda.matmul.allow_tf32 = prev
    out["matmul_fp32_tflops"] = flops / time_calls(lambda: a @ b, device, repeats)["time_s"] / 1e12

    conv = torch.nn.Conv3d(384, 384, 3, padding=1).to(device).eval()
    x = torch.randn(sizes["conv_batch"], 384, 9, 64, 64, device=device)
    with torch.no_grad():
        cflops = count_flops(lambda: conv(x))
        out["conv_gflop"] = cflops / 1e9
        out["conv_fp32_tflops"] = (
            cflops / time_calls(lambda: conv(x), device, repeats)["time_s"] / 1e12
        )
        conv_cl = conv.to(memory_format=torch.channels_last_3d)
        x_cl = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            out["conv_bf16_tflops"] = (
                cflops / time_calls(lambda: conv_cl(x_cl), device, repeats)["time_s"] / 1e12
            )
    src = torch.empty(sizes["copy_mb"] * 2**20 // 4, device=device)
    src.uniform_()
    dst = torch.empty_like(src)
    t = time_calls(lambda: dst.copy_(src), device, repeats)["time_s"]
    out["copy_tb_per_s"] = 2 * src.numel() * 4 / t / 1e12
    return out


# ---------------------------------------------------------------------------- correctness
def rel_err(a, b) -> float:
    import torch

    a, b = a.detach().double().cpu().flatten(), b.detach().double().cpu().flatten()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30))


def check_wfvae(device: str, sizes: dict) -> dict:
    """Our WF-VAE (bc64 widths) reconstructing one clip on ``device`` against the CPU, same
    weights and input (fp32, TF32 off); bf16 autocast channels-last against fp32 on device."""
    import torch

    from wfvae.model import WFVAE, wfvae_config

    frames, size = sizes["check_wfvae"]
    torch.manual_seed(0)
    cpu_model = WFVAE(**wfvae_config("bc64")).eval()
    x = torch.rand(1, 3, frames, size, size) * 2 - 1
    with torch.no_grad():
        ref = cpu_model(x, sample_posterior=False).recon
    model = cpu_model.to(device)
    with torch.no_grad(), _no_tf32():
        got = model(x.to(device), sample_posterior=False).recon
    model = model.to(memory_format=torch.channels_last_3d)
    xc = x.to(device).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad(), bf16_autocast(True, torch.device(device).type):
        got16 = model(xc, sample_posterior=False).recon
    return {
        "what": "WF-VAE bc64 reconstruction",
        "shape": f"1x3x{frames}x{size}x{size}",
        "rel_err_fp32_vs_cpu": rel_err(got, ref),
        "rel_err_bf16_cl_vs_fp32": rel_err(got16, got),
        "finite": bool(torch.isfinite(got).all() and torch.isfinite(got16).all()),
    }


def check_stdiff(device: str) -> dict:
    """The reduced STDiff training loss and its gradient on ``device`` against the CPU: same
    weights, inputs, noise and timesteps, the SDE drift only (a Brownian path drawn on another
    device differs); fp32, TF32 off."""
    import torch

    from scripts.bench.stdiff import STDIFF_SIZES, stdiff_model

    h, w = STDIFF_SIZES["reduced"]
    model = stdiff_model("reduced", "fp32", adjoint=False)
    sched = model.make_scheduler()
    g = torch.Generator().manual_seed(0)
    vo = torch.rand(1, 3, 1, h, w, generator=g) * 2 - 1
    vp = torch.rand(1, 3, 1, h, w, generator=g) * 2 - 1
    noise = torch.randn(3, 1, h, w, generator=g)
    steps = torch.tensor([10, 500, 990])
    idx_o, idx_p = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([3.0, 4.0, 5.0])

    def loss_and_grad(dev: str):
        model.to(dev).zero_grad(set_to_none=True)
        loss, _ = model.training_loss(
            vo.to(dev),
            vp.to(dev),
            idx_o,
            idx_p,
            sched,
            noise=noise.to(dev),
            timesteps=steps.to(dev),
            drift_only=True,
        )
        loss.backward()
        grad = torch.cat([p.grad.flatten().cpu() for p in model.parameters() if p.grad is not None])
        return loss.detach().cpu(), grad

    ref_loss, ref_grad = loss_and_grad("cpu")
    with _no_tf32():
        loss, grad = loss_and_grad(device)
    return {
        "what": "STDiff reduced training loss and gradient (drift-only SDE, fixed noise)",
        "loss_cpu": float(ref_loss),
        "loss_device": float(loss),
        "rel_err_loss": rel_err(loss, ref_loss),
        "rel_err_grad": rel_err(grad, ref_grad),
    }


@contextlib.contextmanager
def _no_tf32():
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---------------------------------------------------------------------------------- cases
def stdiff_case(
    device: str,
    ceil: dict,
    repeats: int,
    config: str,
    mode: str,
    batch: int,
    adjoint: bool,
    checkpointing: bool = False,
    compiled: bool = False,
) -> dict:
    """One STDiff training step (the ``stdiff_train`` step) at ``batch``."""
    import torch

    from scripts.bench.stdiff import train_step, training_step_parts

    model, opt, loss_fn = training_step_parts(
        config, mode, adjoint, checkpointing, device=device, batch=batch
    )
    step = train_step(model, opt, loss_fn)
    row: dict[str, Any] = {
        "model": f"stdiff_{config}",
        "mode": mode,
        "batch": batch,
        "adjoint": adjoint,
        "gradient_checkpointing": checkpointing,
        "compiled_unet": compiled,
    }
    flops = None
    if compiled:
        # FLOPs of the eager step (a dispatch mode around the compiled one would recompile).
        flops = count_flops(step)
        model.unet = torch.compile(model.unet)
        t0 = time.perf_counter()
        step()
        sync(device)
        row["compile_s"] = time.perf_counter() - t0
    row.update(measure(step, device, repeats, ceil, mode, flops))
    row["samples_per_s"] = batch / row["time_s"]
    return row


def wfvae_train_case(
    device: str,
    ceil: dict,
    repeats: int,
    net: str,
    frames: int,
    size: int | tuple[int, int],
    mode: str,
    batch: int,
    gan: bool,
) -> dict:
    """Our WF-VAE training step (scripts/bench/wfvae_train.full_recipe_step) at ``batch``."""
    from scripts.bench.scaling import wfvae_net_kwargs
    from scripts.bench.wfvae_train import full_recipe_step

    _, step = full_recipe_step(
        wfvae_net_kwargs(net), frames, size, mode, device=device, batch=batch, gan=gan
    )
    h, w = (size, size) if isinstance(size, int) else size
    row = {
        "model": net,
        "op": "train (generator + discriminator)" if gan else "train (generator, no GAN)",
        "shape": f"{frames}x{h}x{w}",
        "mode": mode,
        "batch": batch,
        "implementation": "ours",
    }
    row.update(measure(step, device, repeats, ceil, mode))
    row["samples_per_s"] = batch / row["time_s"]
    return row


def reference_train_case(
    device: str, ceil: dict, repeats: int, repo: str, frames: int, size: int, mode: str
) -> dict:
    """The published WF-VAE-L 16ch's forward + L1 + KL backward + AdamW at batch 1."""
    from scripts.bench.wfvae_train import reference_step
    from wfvae.model import wfvae_config

    with contextlib.redirect_stdout(io.StringIO()):
        _, step = reference_step(repo, wfvae_config("wfvae_l_16ch"), frames, size, mode, device)
        row = measure(step, device, repeats, ceil, mode)
    return {
        "model": "wfvae_l_16ch",
        "op": "train (reference: forward + L1 + KL backward + AdamW)",
        "shape": f"{frames}x{size}x{size}",
        "mode": mode,
        "batch": 1,
        "implementation": "reference",
        **row,
    }


def wfvae_infer_case(
    device: str,
    ceil: dict,
    repeats: int,
    frames: int,
    size: int,
    op: str,
    mode: str,
    repo: str | None = None,
) -> dict:
    """WF-VAE-L 16ch encode / decode of ``[1, 3, frames, size, size]``: ours in mode fp32 |
    bf16_cl | bf16w_cl, or (``repo``) the published code in fp32 | bf16 autocast."""
    import torch

    from wfvae.model import WFVAE, wfvae_config

    torch.manual_seed(0)
    x = (torch.rand(1, 3, frames, size, size) * 2 - 1).to(device)
    if repo:
        ref = build_reference_wfvae(repo, wfvae_config("wfvae_l_16ch")).eval().to(device)
        with contextlib.redirect_stdout(io.StringIO()):
            run = reference_inference_call(ref, x, op, mode)
            row = measure(run, device, repeats, ceil, mode)
        return {"implementation": "reference", "op": op, "mode": mode, **row}

    model = WFVAE(**wfvae_config("wfvae_l_16ch")).eval().to(device)
    run_ours = inference_call(model, x, op, mode)
    return {
        "implementation": "ours",
        "op": op,
        "mode": mode,
        **measure(run_ours, device, repeats, ceil, mode),
    }


# ------------------------------------------------------------------------------------ run
def _label(fn: Callable[..., dict], args: tuple) -> str:
    """A case's name for its error record: the function and its arguments but the ceilings."""
    shown = ", ".join(repr(x) for x in args if not isinstance(x, dict))
    return f"{fn.__name__}({shown})"


def machine(device: str) -> dict:
    import torch

    info: dict[str, Any] = {"device": device, "torch": torch.__version__}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(device)
        info.update(
            name=p.name,
            memory_gb=p.total_memory / 1e9,
            multiprocessors=p.multi_processor_count,
            capability=f"{p.major}.{p.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    info["cpu_count"] = os.cpu_count()
    info["loadavg"] = os.getloadavg()
    return info


def plan(a, sizes: dict) -> list[tuple[str, Callable[..., dict], tuple, dict]]:
    """The cases in order: (group, function, args after (device, ceil, repeats), kwargs)."""
    cases: list[tuple[str, Callable[..., dict], tuple, dict]] = []
    for mode in ("fp32", "bf16_cl"):
        for adjoint in (True, False):
            cases.append(("stdiff_train", stdiff_case, ("reduced", mode, 1, adjoint), {}))
    for b in sizes["stdiff_reduced_batches"][1:]:
        cases.append(("stdiff_train", stdiff_case, ("reduced", "bf16_cl", b, False), {}))
    for b in sizes["stdiff_kitti_batches"]:
        cases.append(("stdiff_train", stdiff_case, ("kitti_range", "bf16_cl", b, True), {}))
    if sizes["stdiff_kitti_batches"]:
        cases.append(
            (
                "stdiff_train",
                stdiff_case,
                ("kitti_range", "bf16_cl", 1, True),
                {"checkpointing": True},
            )
        )
        cases.append(("stdiff_train", stdiff_case, ("kitti_range", "fp32", 1, True), {}))
    flagship_size = (64, 192) if not a.gpu_quick else (32, 32)
    for b in sizes["flagship_batches"]:
        for mode in ("fp32", "bf16_cl"):
            cases.append(
                (
                    "wfvae_train",
                    wfvae_train_case,
                    ("flagship", 9, flagship_size, mode, b, False),
                    {},
                )
            )
    lt, ls, lbs = sizes["wfvae_l_train"]
    net_l = "wfvae_l_16ch" if not a.gpu_quick else "tiny"
    for b in lbs:
        for mode in ("fp32", "bf16_cl"):
            cases.append(("wfvae_train", wfvae_train_case, (net_l, lt, ls, mode, b, True), {}))
    if a.reference_wfvae:
        for mode in ("fp32", "bf16_cl"):
            cases.append(
                ("wfvae_train", reference_train_case, (a.reference_wfvae, lt, ls, mode), {})
            )
    it, isz = sizes["wfvae_l_infer"]
    for op in ("encode", "decode"):
        for mode in ("fp32", "bf16_cl", "bf16w_cl"):
            cases.append(("wfvae_infer", wfvae_infer_case, (it, isz, op, mode), {}))
        if a.reference_wfvae:
            for mode in ("fp32", "bf16"):
                cases.append(
                    (
                        "wfvae_infer",
                        wfvae_infer_case,
                        (it, isz, op, mode),
                        {"repo": a.reference_wfvae},
                    )
                )
    for config, b in sizes["compile_cases"]:
        cases.append(
            (
                "stdiff_compile",
                stdiff_case,
                (config, "bf16_cl", b, config == "kitti_range"),
                {"compiled": True},
            )
        )
    return cases


def run(ctx: Context) -> dict:
    import torch

    a = ctx.args
    device = a.gpu_device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            "benchmark --only gpu: no CUDA device here (use --gpu-device cpu for a smoke run)"
        )
    sizes = SIZES["quick" if a.gpu_quick else "full"]
    torch.backends.cudnn.benchmark = True
    out_path = Path(a.out) / "gpu.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    result: dict[str, Any] = {"gpu_machine": machine(device), "gpu_rows": [], "gpu_errors": []}

    def save() -> None:
        result["gpu_elapsed_s"] = time.perf_counter() - t_start
        tmp = out_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(out_path)

    def guarded(group: str, fn: Callable[..., dict], *args: Any, **kwargs: Any) -> dict | None:
        if time.perf_counter() - t_start > a.gpu_budget_s:
            result["gpu_errors"].append(
                {"group": group, "case": _label(fn, args), "error": "skipped: budget"}
            )
            return None
        try:
            row = emit({"group": group, **fn(*args, **kwargs)})
        except Exception as exc:  # noqa: BLE001 - recorded; the other cases still run
            result["gpu_errors"].append(
                {
                    "group": group,
                    "case": _label(fn, args),
                    "error": repr(exc),
                    "trace": traceback.format_exc(),
                }
            )
            emit(result["gpu_errors"][-1])
            row = None
        free(device)
        save()
        return row

    result["gpu_ceilings"] = guarded("ceilings", ceilings, device, sizes, a.repeats) or {}
    ceil = result["gpu_ceilings"]
    # On the CPU (a smoke run) the checks compare the CPU with itself: the code path only.
    if not a.gpu_groups or "check" in a.gpu_groups:
        checks = (
            guarded("check", check_wfvae, device, sizes),
            guarded("check", check_stdiff, device),
        )
        result["gpu_checks"] = [r for r in checks if r]
    for group, fn, args, kwargs in plan(a, sizes):
        if a.gpu_groups and group not in a.gpu_groups:
            continue
        row = guarded(group, fn, device, ceil, a.repeats, *args, **kwargs)
        if row:
            result["gpu_rows"].append(row)
    save()
    return result
