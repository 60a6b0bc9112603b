"""Speed / memory benchmark; prints one JSON document on stdout.

    python scripts/benchmark.py                 # conv peak, WF-VAE 17x128^2 (bc64 + L), Lightning overhead
    python scripts/benchmark.py --large         # adds 33x256^2
    python scripts/benchmark.py --only conv_peak wfvae_chunked

Every time comes with its ceiling, measured in the same run: FLOPs (FlopCounterMode), achieved
GFLOP/s and the fraction of the machine's conv peak (one large Conv3d, fp32 and bf16
channels-last). Each model measurement runs in a fresh process so that its peak RSS is its own.
Reference figures (published code, same machine kind) come from shared/spec/wfvae.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# shared/spec/wfvae.md: reference code, 2 CPU cores, fp32, batch 1 (seconds, peak GB).
REFERENCE = {
    ("wfvae_l_16ch", "17x128", "encode"): 1.62,
    ("wfvae_l_16ch", "17x128", "decode"): 8.48,
    ("wfvae_l_16ch", "33x256", "encode"): 15.5,
    ("wfvae_l_16ch", "33x256", "decode"): 65.3,
    ("bc64", "17x128", "encode"): 0.25,
    ("bc64", "17x128", "decode"): 1.05,
    ("bc64", "33x256", "encode"): 2.9,
    ("bc64", "33x256", "decode"): 11.3,
}
REFERENCE_PEAK_GB = {("wfvae_l_16ch", "33x256"): (2.5, 4.1), ("bc64", "33x256"): (0.9, 1.3)}


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timeit(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def conv_peak(threads: int) -> dict:
    """GFLOP/s of one large Conv3d (384 -> 384, 3^3, 9 x 64^2): the machine's conv ceiling."""
    import torch

    _threads(threads)
    conv = torch.nn.Conv3d(384, 384, 3, padding=1).eval()
    x = torch.randn(1, 384, 9, 64, 64)
    out = {}
    with torch.no_grad():
        flops = _flops(lambda: conv(x))
        out["fp32"] = flops / _timeit(lambda: conv(x), 3) / 1e9
        conv_cl = conv.to(memory_format=torch.channels_last_3d)
        x_cl = x.to(memory_format=torch.channels_last_3d)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out["bf16_channels_last"] = flops / _timeit(lambda: conv_cl(x_cl), 3) / 1e9
    return {"gflop": flops / 1e9, "gflops": out}


def _build_wfvae(name: str):
    import torch

    from wfvae.model import WFVAE, wfvae_config

    torch.manual_seed(0)
    return WFVAE(**wfvae_config(name)).eval()


def wfvae_case(
    name: str,
    frames: int,
    size: int,
    op: str,
    mode: str,
    threads: int,
    repeats: int,
    chunk: int | None = None,
) -> dict:
    """Time one encode / decode of a batch-1 clip in a fresh process (mode fp32 | bf16_cl)."""
    import torch

    _threads(threads)
    model = _build_wfvae(name)
    x = torch.rand(1, 3, frames, size, size) * 2 - 1
    with torch.no_grad():
        z = model.encode(x).posterior.mode()
    if mode == "bf16_cl":
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        z = z.contiguous(memory_format=torch.channels_last_3d)

    def run():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode != "fp32"):
            if op == "encode":
                return model.encode(x, chunk_size=chunk).posterior.mode()
            return model.decode(z, chunk_size=chunk).video

    base = _rss_mb()
    seconds = _timeit(run, repeats)
    peak = _rss_mb()
    flops = _flops(run)
    return {
        "model": name,
        "shape": f"{frames}x{size}",
        "op": op,
        "mode": mode,
        "chunk": chunk,
        "time_s": seconds,
        "gflop": flops / 1e9,
        "gflops": flops / seconds / 1e9,
        "peak_rss_mb": peak,
        "op_rss_mb": peak - base,
    }


def wfvae_quality(name: str, frames: int, size: int, threads: int) -> dict:
    """PSNR of the bf16 channels-last reconstruction against our own fp32 one (target >= 40 dB)."""
    import torch

    _threads(threads)
    model = _build_wfvae(name)
    g = torch.Generator().manual_seed(0)
    # A smooth clip: random low-res noise upsampled (like natural video, unlike white noise).
    low = torch.rand(1, 3, frames // 4 + 1, size // 8, size // 8, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(low, size=(frames, size, size), mode="trilinear")
    with torch.no_grad():
        ref = model.decode(model.encode(x).posterior.mode()).video
        m = model.to(memory_format=torch.channels_last_3d)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = m.decode(
                m.encode(x.contiguous(memory_format=torch.channels_last_3d)).posterior.mode()
            ).video.float()
    mse = ((fast.clamp(-1, 1) - ref.clamp(-1, 1)) / 2).pow(2).mean().item()
    import math

    return {
        "model": name,
        "shape": f"{frames}x{size}",
        "psnr_bf16_vs_fp32_db": 10 * math.log10(1.0 / max(mse, 1e-20)),
    }


def lightning_overhead(threads: int, steps: int = 20) -> dict:
    """Training-step time through Lightning vs a raw PyTorch loop on the same module and data."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from wfvae.losses import WFVAELoss
    from wfvae.model import WFVAE, wfvae_config
    from wfvae.module import WFVAEModule

    _threads(threads)

    def make():
        torch.manual_seed(0)
        net = WFVAE(**wfvae_config("tiny"))
        loss = WFVAELoss(lpips_weights=None, perceptual_weight=0.0)
        opt = lambda params: torch.optim.AdamW(params, lr=1e-4)  # noqa: E731
        return WFVAEModule(net, loss, opt, grad_clip=1.0)

    data = torch.rand(steps + 2, 3, 9, 64, 64) * 2 - 1

    class Wrap(TensorDataset):
        def __getitem__(self, i):
            return {"video": self.tensors[0][i]}

    loader = DataLoader(Wrap(data), batch_size=1)

    # Raw loop: exactly the work of WFVAEModule.training_step without Lightning.
    module = make()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    batches = [{"video": data[i : i + 1]} for i in range(len(data))]

    def raw_step(b):
        out = module.net(b["video"], sample_posterior=True)
        loss, _ = module.loss.generator_loss(b["video"], out, 0, last_layer=None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()

    for b in batches[:2]:
        raw_step(b)
    t0 = time.perf_counter()
    for b in batches[2:]:
        raw_step(b)
    raw = (time.perf_counter() - t0) / steps

    module = make()
    timer = {}

    class StepTimer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 2:
                timer["t0"] = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            timer["t1"] = time.perf_counter()

    trainer = pl.Trainer(
        max_steps=steps + 2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[StepTimer()],
        log_every_n_steps=1,
    )
    trainer.fit(module, loader)
    lit = (timer["t1"] - timer["t0"]) / steps
    return {
        "raw_step_s": raw,
        "lightning_step_s": lit,
        "ratio": lit / raw,
        "steps": steps,
        "shape": "1x3x9x64x64",
        "model": "tiny",
    }


def _in_process(fn, *args, **kwargs) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args, kwargs)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    p.add_argument("--large", action="store_true", help="also 33x256^2 (minutes)")
    p.add_argument("--models", nargs="+", default=["bc64", "wfvae_l_16ch"])
    p.add_argument("--modes", nargs="+", default=["fp32", "bf16_cl"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="subset of: conv_peak wfvae wfvae_quality wfvae_chunked lightning",
    )
    args = p.parse_args()
    want = lambda k: args.only is None or k in args.only  # noqa: E731

    import torch

    result: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    peak = None
    if want("conv_peak"):
        result["conv_peak"] = _in_process(conv_peak, args.threads)
        peak = result["conv_peak"]["gflops"]
    shapes = [(17, 128)] + ([(33, 256)] if args.large else [])
    if want("wfvae"):
        rows = []
        for name in args.models:
            for frames, size in shapes:
                for op in ("encode", "decode"):
                    for mode in args.modes:
                        r = _in_process(
                            wfvae_case, name, frames, size, op, mode, args.threads, args.repeats
                        )
                        ref = REFERENCE.get((name, r["shape"], op))
                        if ref:
                            r["reference_time_s"] = ref
                            r["speedup_vs_reference"] = ref / r["time_s"]
                        if peak:
                            key = "fp32" if mode == "fp32" else "bf16_channels_last"
                            r["fraction_of_conv_peak"] = r["gflops"] / peak[key]
                            r["fraction_of_fp32_conv_peak"] = r["gflops"] / peak["fp32"]
                        print(json.dumps(r), file=sys.stderr)
                        rows.append(r)
        result["wfvae"] = rows
    if want("wfvae_quality"):
        result["wfvae_quality"] = [
            _in_process(wfvae_quality, name, 17, 128, args.threads) for name in args.models
        ]
    if want("wfvae_chunked"):
        rows = []
        for frames in (33, 65):
            full = _in_process(wfvae_case, "bc64", frames, 128, "decode", "fp32", args.threads, 1)
            chunk = _in_process(
                wfvae_case, "bc64", frames, 128, "decode", "fp32", args.threads, 1, 2
            )
            rows.append(
                {
                    "frames": frames,
                    "full_s": full["time_s"],
                    "chunked_s": chunk["time_s"],
                    "chunked_over_full": chunk["time_s"] / full["time_s"],
                    "full_op_rss_mb": full["op_rss_mb"],
                    "chunked_op_rss_mb": chunk["op_rss_mb"],
                }
            )
        result["wfvae_chunked_decode"] = rows
    if want("lightning"):
        result["lightning_overhead"] = _in_process(lightning_overhead, args.threads)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
