"""Speed / memory benchmark; prints one JSON document on stdout.

    python scripts/benchmark.py                 # conv peak, WF-VAE 17x128^2 (bc64 + L), Lightning overhead
    python scripts/benchmark.py --large         # adds 33x256^2
    python scripts/benchmark.py --only conv_peak wfvae_chunked
    python scripts/benchmark.py --large --reference-wfvae /path/to/WF-VAE   # + the published code

Every time comes with its ceiling, measured in the same run: FLOPs (FlopCounterMode), achieved
GFLOP/s and the fraction of the machine's conv peak (one large Conv3d, fp32 and bf16
channels-last). Each model measurement runs in a fresh process so that its peak RSS is its own.
Reference figures (the published code timed on the same machine kind) are the REFERENCE table
in this file; with ``--reference-wfvae DIR`` (a checkout of PKU-YuanGroup/WF-VAE) the published
code is also timed in the same run, on the same machine, which is the ratio to trust (machines
of one kind differ by 20 % or more in their conv peak).

STDiff sections (only when named; their reference figures are the STDIFF_REFERENCE table in
this file):

    OMP_WAIT_POLICY=PASSIVE python scripts/benchmark.py --only stdiff_train stdiff_unet \
        stdiff_quality --stdiff-threads 1 2
    OMP_WAIT_POLICY=PASSIVE python scripts/benchmark.py --only stdiff_kitti --stdiff-threads 1
    OMP_WAIT_POLICY=PASSIVE python scripts/benchmark.py --only stdiff_truncation --stdiff-threads 1

stdiff_train: reduced 64 x 128 training step (batch 1, 3 -> 3, AdamW), fp32 and bf16
channels-last, SDE adjoint on (as the reference) and off; stdiff_kitti: kitti_range 64 x 512
step time and peak RSS minus baseline (bf16 channels-last with and without gradient
checkpointing, fp32 with it); stdiff_unet: one kitti_range UNet evaluation per frame (the
first of a frame and one with the SPADE modulation cached); stdiff_quality: bf16 against fp32;
stdiff_truncation: frame-truncation speed (reduced) and quality (briefly-trained tiny models).
On a shared machine, OMP_WAIT_POLICY=PASSIVE keeps idle OpenMP threads from spinning (without
it, 2-thread runs slowed down many times when other processes took a core); the load average
is recorded with every case.
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

# The published WF-VAE code as measured on 2 CPU cores, fp32, batch 1 (seconds, peak GB).
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
OPS = ("encode", "decode")
REFERENCE_PEAK_GB = {("wfvae_l_16ch", "33x256"): (2.5, 4.1), ("bc64", "33x256"): (0.9, 1.3)}


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _proc_status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _start_peak_window() -> float:
    """Reset this process's peak-RSS mark (Linux ``clear_refs`` 5) and return the RSS now, so
    that :func:`_window_peak_mb` gives the peak of what runs in between (not, e.g., of the
    encode that made a decode's input). Falls back to the lifetime peak elsewhere."""
    import gc

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return _rss_mb()
    return _proc_status_mb("VmRSS") or _rss_mb()


def _window_peak_mb() -> float:
    return _proc_status_mb("VmHWM") or _rss_mb()


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


def _bf16_autocast(enabled: bool):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled, cache_enabled=False)


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
    """Time one encode / decode of a batch-1 clip in a fresh process.

    mode: fp32 | bf16_cl (bf16 autocast, channels-last) | bf16w_cl (bf16 weights and input,
    channels-last: half the weight memory, for inference). Autocast runs with its weight-cast
    cache off: the cache keeps a bf16 copy of every weight for the whole call (+0.4 GB for
    WF-VAE-L) and was also slower here (4.1 vs 3.3 s, L decode 17 x 128^2).
    """
    import torch

    _threads(threads)
    model = _build_wfvae(name)
    x = torch.rand(1, 3, frames, size, size) * 2 - 1
    with torch.no_grad():
        z = model.encode(x).posterior.mode()
    if mode.endswith("_cl"):
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        z = z.contiguous(memory_format=torch.channels_last_3d)
    if mode == "bf16w_cl":
        model, x, z = model.to(torch.bfloat16), x.to(torch.bfloat16), z.to(torch.bfloat16)

    def run():
        with torch.no_grad(), _bf16_autocast(mode == "bf16_cl"):
            if op == "encode":
                return model.encode(x, chunk_size=chunk).posterior.mode()
            return model.decode(z, chunk_size=chunk).video

    base = _start_peak_window()
    seconds = _timeit(run, repeats)
    peak = _window_peak_mb()
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


def reference_wfvae_case(
    repo: str,
    name: str,
    frames: int,
    size: int,
    op: str,
    mode: str,
    threads: int,
    repeats: int,
    tiled: bool = False,
) -> dict:
    """The published WF-VAE code (a local checkout given by ``--reference-wfvae``, never part
    of this project), same architecture, input and process setup as :func:`wfvae_case`.

    mode fp32 | bf16 (autocast, as the spec's "reference under bf16 autocast" column, with the
    same cache setting as ours);
    ``tiled``: its own chunked decode (``enable_tiling``, chunk size chosen by the reference).
    """
    import contextlib
    import io

    import torch

    sys.path.insert(0, repo)
    from causalvideovae.model.vae.modeling_wfvae import WFVAEModel

    from wfvae.model import wfvae_config
    from wfvae.reference import reference_config

    _threads(threads)
    torch.manual_seed(0)
    model = WFVAEModel(**reference_config(wfvae_config(name))).eval()
    x = torch.rand(1, 3, frames, size, size) * 2 - 1

    def run():
        model.temporal_size = None  # the reference locks the first length it sees
        with torch.no_grad(), _bf16_autocast(mode != "fp32"):
            if op == "encode":
                return model.encode(x).latent_dist.mode()
            return model.decode(z).sample

    # The reference prints shapes and chunk choices on every call: keep stdout JSON only.
    with contextlib.redirect_stdout(io.StringIO()):
        with torch.no_grad():
            z = model.encode(x).latent_dist.mode()
        if tiled:
            model.enable_tiling()
        base = _start_peak_window()
        seconds = _timeit(run, repeats)
        peak = _window_peak_mb()
    return {
        "model": name,
        "shape": f"{frames}x{size}",
        "op": op,
        "mode": mode,
        "implementation": "reference",
        "tiled": tiled,
        "time_s": seconds,
        "peak_rss_mb": peak,
        "op_rss_mb": peak - base,
    }


def wfvae_quality(name: str, frames: int, size: int, threads: int) -> dict:
    """PSNR of the bf16 reconstructions (bf16_cl and bf16w_cl modes) against our own fp32 one
    (target >= 40 dB)."""
    import math

    import torch

    _threads(threads)
    model = _build_wfvae(name)
    g = torch.Generator().manual_seed(0)
    # A smooth clip: random low-res noise upsampled (like natural video, unlike white noise).
    low = torch.rand(1, 3, frames // 4 + 1, size // 8, size // 8, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(low, size=(frames, size, size), mode="trilinear")
    out = {"model": name, "shape": f"{frames}x{size}"}
    with torch.no_grad():
        ref = model.decode(model.encode(x).posterior.mode()).video
        m = model.to(memory_format=torch.channels_last_3d)
        xc = x.contiguous(memory_format=torch.channels_last_3d)
        for mode in ("bf16_cl", "bf16w_cl"):
            if mode == "bf16w_cl":
                m, xc = m.to(torch.bfloat16), xc.to(torch.bfloat16)
            with _bf16_autocast(mode == "bf16_cl"):
                fast = m.decode(m.encode(xc).posterior.mode()).video.float()
            mse = ((fast.clamp(-1, 1) - ref.clamp(-1, 1)) / 2).pow(2).mean().item()
            out[f"psnr_{mode}_vs_fp32_db"] = 10 * math.log10(1.0 / max(mse, 1e-20))
    return out


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


# ------------------------------------------------------------------------------ STDiff
# The published STDiff code as measured on 2 CPU cores, fp32, batch 1, 3 -> 3 frames.
STDIFF_REFERENCE = {
    "reduced_train_step_s": 3.3,  # 261 GFLOP (FlopCounterMode), ~79 GFLOP/s
    "reduced_train_step_s_rough": 4.0,
    "reduced_train_gflop": 261.0,
    "reduced_train_peak_gb": 2.0,
    "kitti_range_train_step_s": 98.0,
    "kitti_range_train_peak_gb": 22.3,
    "kitti_range_unet_eval_s": 6.4,
}
STDIFF_SIZES = {"reduced": (64, 128), "kitti_range": (64, 512), "tiny": (16, 32)}


def _stdiff_model(config: str, mode: str, adjoint: bool = True, checkpointing: bool = False):
    """The named STDiff configuration (seed 0); mode fp32 | fp32_cl | bf16 | bf16_cl."""
    import torch

    from stdiff import STDiff, stdiff_config

    torch.manual_seed(0)
    model = STDiff(**stdiff_config(config, tde={"adjoint": adjoint}))
    model.unet.set_gradient_checkpointing(checkpointing)
    if mode.endswith("_cl"):
        model = model.to_channels_last()
    return model


def _autocast(mode: str):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode.startswith("bf16"))


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

    _threads(threads)
    baseline = _rss_mb()
    model = _stdiff_model(config, mode, adjoint, checkpointing)
    sched = model.make_scheduler()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
    h, w = STDIFF_SIZES[config]
    g = torch.Generator().manual_seed(0)
    vo = torch.rand(1, 3, 1, h, w, generator=g) * 2 - 1
    vp = torch.rand(1, 3, 1, h, w, generator=g) * 2 - 1
    idx_o, idx_p = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([3.0, 4.0, 5.0])

    def step():
        with _autocast(mode):
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
    seconds = _timeit(step, repeats, warmup=1)
    peak = _rss_mb()
    flops = _flops(step)
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


def stdiff_unet_eval_case(config: str, mode: str, threads: int, repeats: int) -> dict:
    """One UNet evaluation for one frame (batch 1, no grad): the first of a frame (SPADE
    modulation computed) and a cached one (modulation reused: every later denoising step)."""
    import torch

    _threads(threads)
    model = _stdiff_model(config, mode).eval()
    unet = model.unet
    h, w = STDIFF_SIZES[config]
    x = torch.randn(1, unet.in_channels, h, w)
    if mode.endswith("_cl"):
        x = x.contiguous(memory_format=torch.channels_last)
    m = torch.randn(1, unet.m_channels, h // 4, w // 4)
    t = torch.tensor([500])

    def first():
        with torch.no_grad(), _autocast(mode):
            return unet(x, t, m)

    def cached():
        with torch.no_grad(), _autocast(mode), unet.cached_motion():
            unet(x, t, m)
            t0 = time.perf_counter()
            unet(x, t, m)
            return time.perf_counter() - t0

    flops_first = _flops(first)
    with torch.no_grad(), _autocast(mode), unet.cached_motion():
        unet(x, t, m)
        flops_cached = _flops(lambda: unet(x, t, m))
    t_first = _timeit(first, repeats)
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


def stdiff_bf16_quality(config: str, threads: int) -> dict:
    """bf16 channels-last against our fp32 (random weights, smooth input): UNet output error
    and the training loss / gradient agreement of one batch."""
    import math

    import torch

    _threads(threads)
    ref = _stdiff_model(config, "fp32")
    fast = _stdiff_model(config, "bf16_cl")
    h, w = STDIFF_SIZES[config]
    g = torch.Generator().manual_seed(0)
    low = torch.rand(1, 6, 1, h // 8, w // 8, generator=g) * 2 - 1
    clip = torch.nn.functional.interpolate(low.flatten(0, 1), size=(h, w), mode="bilinear")
    clip = clip.unflatten(0, (1, 6))
    idx_o, idx_p = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([3.0, 4.0, 5.0])
    out = {"config": config}
    grads = []
    for model, mode in ((ref, "fp32"), (fast, "bf16_cl")):
        with _autocast(mode):
            loss, info = model.training_loss(
                clip[:, :3],
                clip[:, 3:],
                idx_o,
                idx_p,
                model.make_scheduler(),
                generator=torch.Generator().manual_seed(1),
            )
        loss.backward()
        grads.append(
            {
                part: torch.cat(
                    [p.grad.flatten().float() for p in getattr(model, part).parameters()]
                )
                for part in ("unet", "tde")
            }
        )
        out[f"loss_{mode}"] = loss.item()
        out[f"pred_{mode}"] = info["pred"].float()
    err = out.pop("pred_bf16_cl") - out.pop("pred_fp32")
    out["unet_out_max_abs_err"] = err.abs().max().item()
    out["unet_out_rms_err"] = err.pow(2).mean().sqrt().item()
    out["unet_out_psnr_db"] = 10 * math.log10(4.0 / max(err.pow(2).mean().item(), 1e-20))
    for part in ("unet", "tde"):
        a, b = grads[0][part], grads[1][part]
        out[f"grad_cosine_{part}"] = torch.nn.functional.cosine_similarity(a, b, 0).item()
    return out


def _moving_patterns(n: int, t: int, h: int, w: int, generator):
    """Synthetic clips [n, t, 1, h, w] in [-1, 1]: a few smooth sinusoids scrolling sideways
    at a constant speed (|v| <= 1 px / frame), like the columns of a turning LiDAR scan."""
    import math

    import torch

    x = torch.arange(w).float() * (2 * math.pi / w)
    y = torch.linspace(-1, 1, h)
    s = torch.arange(t).float()
    out = torch.zeros(n, t, h, w)
    for i in range(n):
        v = (torch.rand(1, generator=generator).item() * 2 - 1) * 2 * math.pi / w
        for _ in range(3):
            f = float(torch.randint(1, 3, (1,), generator=generator))
            phase, amp, tilt = torch.rand(3, generator=generator).tolist()
            arg = f * (x[None, None] - s[:, None, None] * v) + 2 * math.pi * phase
            out[i] += (0.3 + 0.3 * amp) * torch.sin(arg + (4 * tilt - 2) * y[None, :, None])
    return out.clamp(-1, 1).unsqueeze(2)


def stdiff_truncation_quality(threads: int, train_steps: int, sample_steps: int = 20) -> dict:
    """Quality cost of frame truncation on briefly-trained tiny models (3 -> 6 frames of
    synthetic scrolling patterns): PSNR / L1 of truncated against full sampling with the same
    seeds (DDIM, deterministic given the seed), and both against the ground truth."""
    import math

    import torch

    from stdiff import STDiff, STDiffPipeline, stdiff_config

    _threads(threads)
    idx_o = torch.tensor([0.0, 1.0, 2.0])
    idx_p = torch.arange(3.0, 9.0)
    test = _moving_patterns(4, 9, 16, 32, torch.Generator().manual_seed(123))
    gt = test[:, 3:]

    def psnr(a, b):
        return 10 * math.log10(4.0 / max(((a - b) ** 2).mean().item(), 1e-20))

    def l1(a, b):
        return (a - b).abs().mean().item()

    variants = {
        "autoregressive": {},
        "non_autoregressive": {
            "autoregressive": False,
            "concat_observed": True,
            "unet": {"in_channels": 4},
        },
    }
    grid = [(2, 0.3), (2, 0.5), (2, 0.7), (3, 0.5)]
    result: dict = {
        "train_steps": train_steps,
        "sample_steps": sample_steps,
        "scheduler": "ddim",
        "frames": "3 -> 6, 16 x 32, 4 clips x 2 samples",
        "copy_last_vs_gt_psnr_db": psnr(test[:, 2:3].expand_as(gt), gt),
    }
    for name, overrides in variants.items():
        torch.manual_seed(0)
        model = STDiff(**stdiff_config("tiny", **{"tde": {"dt": 0.1}, **overrides}))
        sched = model.make_scheduler()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.95, 0.999))
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for _ in range(train_steps):
            clip = _moving_patterns(4, 9, 16, 32, g)
            loss, _ = model.training_loss(
                clip[:, :3], clip[:, 3:], idx_o, idx_p, sched, generator=g
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        pipe = STDiffPipeline(model.eval())

        def run(pipe=pipe, **kw):
            out = pipe(
                test[:, :3],
                idx_o,
                idx_p,
                num_inference_steps=sample_steps,
                num_samples=2,
                generator=torch.Generator().manual_seed(7),
                scheduler_type="ddim",
                **kw,
            )
            return out["frames"].clamp(-1, 1), out.get("truncation")

        full, _ = run()
        target = gt.unsqueeze(0).expand_as(full)
        rows = []
        inits = ["key_state", "previous_frame"] if name == "autoregressive" else ["interpolate"]
        for key_every, fraction in grid:
            for init in inits:
                opts = {"key_every": key_every, "switch_fraction": fraction}
                if init != "interpolate":
                    opts["ar_init"] = init
                frames, info = run(frame_truncation=opts)
                key = torch.zeros(frames.shape[2], dtype=torch.bool)
                keys = info["key_frames"] or sorted(
                    set(range(0, frames.shape[2], key_every)) | {frames.shape[2] - 1}
                )
                key[keys] = True
                rows.append(
                    {
                        **opts,
                        "init": init,
                        "ideal_speedup": info["full_evaluations"] / info["evaluations"],
                        "psnr_vs_full_db": psnr(frames, full),
                        "l1_vs_full": l1(frames, full),
                        "psnr_vs_full_non_key_db": psnr(frames[:, :, ~key], full[:, :, ~key]),
                        "psnr_vs_gt_db": psnr(frames, target),
                    }
                )
        result[name] = {
            "final_train_loss": loss.item(),
            "train_time_s": time.perf_counter() - t0,
            "full_vs_gt_psnr_db": psnr(full, target),
            "full_vs_gt_l1": l1(full, target),
            "truncated": rows,
        }
    return result


def stdiff_truncation_speed(
    config: str, mode: str, threads: int, tp: int, steps: int, options: list
) -> dict:
    """Wall time of sampling ``tp`` frames (batch 1, one sample, DDPM ``steps``) with and
    without frame truncation (random weights: speed only)."""
    import torch

    from stdiff import STDiffPipeline

    _threads(threads)
    model = _stdiff_model(config, mode).eval()
    pipe = STDiffPipeline(model)
    h, w = STDIFF_SIZES[config]
    vo = torch.rand(1, 3, 1, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1
    idx_o, idx_p = torch.tensor([0.0, 1.0, 2.0]), torch.arange(3.0, 3.0 + tp)

    def run(opts):
        with _autocast(mode):
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


def _stdiff_ratios(row: dict, peak: dict | None) -> dict:
    """Reference ratios and fractions of the conv peak for a training / UNet row."""
    ref = STDIFF_REFERENCE
    if peak:
        key = "fp32" if row["mode"].startswith("fp32") else "bf16_channels_last"
        row["fraction_of_conv_peak"] = row["gflops"] / peak[key]
        row["fraction_of_fp32_conv_peak"] = row["gflops"] / peak["fp32"]
    if "adjoint" in row and row["config"] == "reduced":
        row["speedup_vs_reference_3.3s"] = ref["reduced_train_step_s"] / row["time_s"]
        row["speedup_vs_reference_4s"] = ref["reduced_train_step_s_rough"] / row["time_s"]
        # The reference's FLOP count of the same step, per our second.
        row["reference_gflop_per_s"] = ref["reduced_train_gflop"] / row["time_s"]
    elif "adjoint" in row and row["config"] == "kitti_range":
        row["speedup_vs_reference_98s"] = ref["kitti_range_train_step_s"] / row["time_s"]
        gb = row["peak_minus_baseline_mb"] / 1024
        row["peak_minus_baseline_over_reference_22.3gb"] = gb / ref["kitti_range_train_peak_gb"]
    elif "cached_motion_time_s" in row and row["config"] == "kitti_range":
        row["speedup_vs_reference_6.4s"] = ref["kitti_range_unet_eval_s"] / row["time_s"]
        row["cached_speedup_vs_reference_6.4s"] = (
            ref["kitti_range_unet_eval_s"] / row["cached_motion_time_s"]
        )
    return row


def stdiff_sections(args, want, result: dict) -> None:
    """The ``stdiff_*`` sections (run only when named in --only)."""
    threads = args.stdiff_threads or [args.threads]
    peaks = {}
    for n in threads:
        peaks[n] = _in_process(conv_peak, n)["gflops"]
    result["stdiff_conv_peak_gflops"] = {str(n): p for n, p in peaks.items()}
    modes = args.stdiff_modes
    if want("stdiff_train"):
        rows = []
        for n in threads:
            for mode in modes:
                for adjoint in (True, False):
                    r = _in_process(
                        stdiff_train_case, "reduced", mode, n, args.repeats, adjoint=adjoint
                    )
                    rows.append(_stdiff_ratios(r, peaks[n]))
                    print(json.dumps(r), file=sys.stderr)
        result["stdiff_train_reduced"] = rows
    if want("stdiff_kitti"):
        rows = []
        n = threads[0]
        cases = [("bf16_cl", False), ("bf16_cl", True), ("fp32", True)]
        for mode, ckpt in cases:
            if mode not in modes:
                continue
            r = _in_process(
                stdiff_train_case, "kitti_range", mode, n, 1, adjoint=True, checkpointing=ckpt
            )
            rows.append(_stdiff_ratios(r, peaks[n]))
            print(json.dumps(r), file=sys.stderr)
        result["stdiff_train_kitti_range"] = rows
    if want("stdiff_unet"):
        rows = []
        for n in threads:
            for mode in modes:
                r = _in_process(stdiff_unet_eval_case, "kitti_range", mode, n, args.repeats)
                rows.append(_stdiff_ratios(r, peaks[n]))
                print(json.dumps(r), file=sys.stderr)
        result["stdiff_unet_eval_kitti_range"] = rows
    if want("stdiff_quality"):
        result["stdiff_bf16_quality"] = _in_process(stdiff_bf16_quality, "reduced", threads[0])
    if want("stdiff_truncation"):
        opts = [
            {"key_every": 2, "switch_fraction": 0.5},
            {"key_every": 2, "switch_fraction": 0.7},
            {"key_every": 3, "switch_fraction": 0.5},
        ]
        result["stdiff_truncation_speed"] = [
            _in_process(stdiff_truncation_speed, "reduced", mode, threads[0], 6, 50, opts)
            for mode in modes
        ]
        result["stdiff_truncation_quality"] = _in_process(
            stdiff_truncation_quality, threads[0], args.stdiff_train_steps
        )


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
    p.add_argument(
        "--modes",
        nargs="+",
        default=["fp32", "bf16_cl", "bf16w_cl"],
        help="fp32 | bf16_cl (autocast, channels-last) | bf16w_cl (bf16 weights, channels-last)",
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
        "--only",
        nargs="+",
        default=None,
        help="subset of: conv_peak wfvae wfvae_quality wfvae_chunked lightning; STDiff (only "
        "when named): stdiff_train stdiff_kitti stdiff_unet stdiff_quality stdiff_truncation",
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
        help="fp32 | fp32_cl | bf16 | bf16_cl (_cl: channels-last model and input)",
    )
    p.add_argument(
        "--stdiff-train-steps",
        type=int,
        default=100,
        help="training steps of the tiny models in stdiff_truncation (100: ~20 min on 2 cores)",
    )
    args = p.parse_args()
    want = lambda k: args.only is None or k in args.only  # noqa: E731
    stdiff = [k for k in (args.only or []) if k.startswith("stdiff_")]

    import torch

    result: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "loadavg_at_start": os.getloadavg(),
        },
    }
    peak = None
    if want("conv_peak"):
        result["conv_peak"] = _in_process(conv_peak, args.threads)
        peak = result["conv_peak"]["gflops"]
    shapes = [(17, 128)] + ([(33, 256)] if args.large else [])
    ref_repo = args.reference_wfvae

    def reference(name, frames, size, op, mode, tiled=False, repeats=args.repeats):
        r = _in_process(
            reference_wfvae_case,
            ref_repo,
            name,
            frames,
            size,
            op,
            mode,
            args.threads,
            repeats,
            tiled,
        )
        print(json.dumps(r), file=sys.stderr)
        return r

    if want("wfvae"):
        rows, ref_rows, summary = [], [], []
        for name in args.models:
            for frames, size in shapes:
                shape = f"{frames}x{size}"
                ours: dict = {}
                refs: dict = {}
                for op in ("encode", "decode"):
                    if ref_repo:
                        for mode in ["fp32"] + (["bf16"] if args.modes != ["fp32"] else []):
                            refs[op, mode] = reference(name, frames, size, op, mode)
                            ref_rows.append(refs[op, mode])
                    for mode in args.modes:
                        r = _in_process(
                            wfvae_case, name, frames, size, op, mode, args.threads, args.repeats
                        )
                        ref = REFERENCE.get((name, r["shape"], op))
                        if ref:
                            r["spec_reference_time_s"] = ref
                            r["speedup_vs_spec_reference"] = ref / r["time_s"]
                        for ref_mode in ("fp32", "bf16"):
                            if (op, ref_mode) in refs:
                                same = refs[op, ref_mode]
                                r[f"speedup_vs_reference_{ref_mode}"] = same["time_s"] / r["time_s"]
                        if peak:
                            key = "fp32" if mode == "fp32" else "bf16_channels_last"
                            r["fraction_of_conv_peak"] = r["gflops"] / peak[key]
                            r["fraction_of_fp32_conv_peak"] = r["gflops"] / peak["fp32"]
                        print(json.dumps(r), file=sys.stderr)
                        rows.append(r)
                        ours[op, mode] = r
                for mode in args.modes:
                    row = {
                        "model": name,
                        "shape": shape,
                        "mode": mode,
                        "encode_plus_decode_s": ours["encode", mode]["time_s"]
                        + ours["decode", mode]["time_s"],
                        "peak_rss_mb": max(ours[op, mode]["peak_rss_mb"] for op in OPS),
                    }
                    spec = [REFERENCE.get((name, shape, op)) for op in OPS]
                    if all(spec):
                        row["speedup_vs_spec_reference"] = sum(spec) / row["encode_plus_decode_s"]
                    if (name, shape) in REFERENCE_PEAK_GB:
                        row["spec_reference_peak_gb"] = REFERENCE_PEAK_GB[name, shape]
                    for ref_mode in ("fp32", "bf16"):
                        if ("encode", ref_mode) in refs:
                            ref_s = sum(refs[op, ref_mode]["time_s"] for op in OPS)
                            row[f"reference_{ref_mode}_encode_plus_decode_s"] = ref_s
                            row[f"speedup_vs_reference_{ref_mode}"] = (
                                ref_s / row["encode_plus_decode_s"]
                            )
                            row[f"reference_{ref_mode}_peak_rss_mb"] = max(
                                refs[op, ref_mode]["peak_rss_mb"] for op in OPS
                            )
                    summary.append(row)
        result["wfvae"] = rows
        result["wfvae_summary"] = summary
        if ref_rows:
            result["wfvae_reference"] = ref_rows
    if want("wfvae_quality"):
        result["wfvae_quality"] = [
            _in_process(wfvae_quality, name, 17, 128, args.threads) for name in args.models
        ]
    if want("wfvae_chunked"):
        # Chunks of 2 latent frames: what the reference picks for these lengths. Memory is the
        # process's peak RSS growth during the call (output video included).
        rows = []
        for frames in (33, 65, 129):
            case = (wfvae_case, "bc64", frames, 128, "decode", "fp32", args.threads, args.repeats)
            full = _in_process(*case)
            chunk = _in_process(*case, 2)
            row = {
                "frames": frames,
                "full_s": full["time_s"],
                "chunked_s": chunk["time_s"],
                "chunked_over_full": chunk["time_s"] / full["time_s"],
                "full_op_rss_mb": full["op_rss_mb"],
                "chunked_op_rss_mb": chunk["op_rss_mb"],
                "output_mb": 3 * frames * 128 * 128 * 4 / 2**20,
            }
            if ref_repo and frames <= 65:
                ref_full = reference("bc64", frames, 128, "decode", "fp32")
                ref_tiled = reference("bc64", frames, 128, "decode", "fp32", tiled=True)
                row["reference_full_s"] = ref_full["time_s"]
                row["reference_chunked_s"] = ref_tiled["time_s"]
                row["reference_chunked_over_full"] = ref_tiled["time_s"] / ref_full["time_s"]
                row["reference_chunked_op_rss_mb"] = ref_tiled["op_rss_mb"]
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
        result["wfvae_chunked_decode"] = rows
    if want("lightning"):
        result["lightning_overhead"] = _in_process(lightning_overhead, args.threads)
    if stdiff:
        stdiff_sections(args, lambda k: k in stdiff, result)
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
