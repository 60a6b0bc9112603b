"""Section ``wfvae_quality``: PSNR of the bf16 reconstructions against our own fp32 one."""

from __future__ import annotations

from scripts.bench.harness import Context, bf16_autocast, in_process, set_threads
from scripts.bench.wfvae import build_wfvae


def wfvae_quality(name: str, frames: int, size: int, threads: int) -> dict:
    """PSNR of the bf16 reconstructions (bf16_cl and bf16w_cl modes) against our own fp32 one
    (target >= 40 dB), on a smooth clip ``[1, 3, frames, size, size]``."""
    import math

    import torch

    set_threads(threads)
    model = build_wfvae(name)
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
            with bf16_autocast(mode == "bf16_cl"):
                fast = m.decode(m.encode(xc).posterior.mode()).video.float()
            mse = ((fast.clamp(-1, 1) - ref.clamp(-1, 1)) / 2).pow(2).mean().item()
            out[f"psnr_{mode}_vs_fp32_db"] = 10 * math.log10(1.0 / max(mse, 1e-20))
    return out


def run(ctx: Context) -> dict:
    a = ctx.args
    return {"wfvae_quality": [in_process(wfvae_quality, n, 17, 128, a.threads) for n in a.models]}
