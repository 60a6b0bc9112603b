"""Section ``stdiff_quality``: bf16 channels-last against fp32 (reduced configuration)."""

from __future__ import annotations

from scripts.bench.harness import Context, in_process, set_threads
from scripts.bench.stdiff import STDIFF_SIZES, autocast, stdiff_model, stdiff_threads


def stdiff_bf16_quality(config: str, threads: int) -> dict:
    """bf16 channels-last against our fp32 (random weights, smooth input): UNet output error
    and the training loss / gradient agreement of one batch."""
    import math

    import torch

    set_threads(threads)
    ref = stdiff_model(config, "fp32")
    fast = stdiff_model(config, "bf16_cl")
    h, w = STDIFF_SIZES[config]
    g = torch.Generator().manual_seed(0)
    low = torch.rand(1, 6, 1, h // 8, w // 8, generator=g) * 2 - 1
    clip = torch.nn.functional.interpolate(low.flatten(0, 1), size=(h, w), mode="bilinear")
    clip = clip.unflatten(0, (1, 6))
    idx_o, idx_p = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([3.0, 4.0, 5.0])
    out = {"config": config}
    grads = []
    for model, mode in ((ref, "fp32"), (fast, "bf16_cl")):
        with autocast(mode):
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


def run(ctx: Context) -> dict:
    return {
        "stdiff_bf16_quality": in_process(stdiff_bf16_quality, "reduced", stdiff_threads(ctx)[0])
    }
