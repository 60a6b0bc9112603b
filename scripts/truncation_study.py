"""Frame truncation's quality cost: an experiment (not a benchmark), prints one JSON document.

    python scripts/truncation_study.py                     # 100 training steps: ~20 min on 2 cores
    python scripts/truncation_study.py --train-steps 5     # a quick look (models barely trained)

Two tiny STDiff models (autoregressive, and non-autoregressive with the observed frames as
channels) are trained briefly on synthetic scrolling patterns (3 -> 6 frames, 16 x 32), then
sampled with DDIM (deterministic given the seed) with and without frame truncation
(`stdiff.truncation`) on the same seeds: PSNR / L1 of truncated against full sampling, and both
against the ground truth, for a grid of key-frame spacings and switch fractions (and, for the
autoregressive model, both ``ar_init`` choices). Its speed is a benchmark:
``scripts/benchmark.py --only stdiff_truncation``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def moving_patterns(n: int, t: int, h: int, w: int, generator):
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


def truncation_quality(threads: int, train_steps: int, sample_steps: int = 20) -> dict:
    """Quality cost of frame truncation on briefly-trained tiny models (3 -> 6 frames of
    synthetic scrolling patterns): PSNR / L1 of truncated against full sampling with the same
    seeds (DDIM, deterministic given the seed), and both against the ground truth."""
    import math

    import torch

    from stdiff import STDiff, STDiffPipeline, stdiff_config

    torch.set_num_threads(threads)
    idx_o = torch.tensor([0.0, 1.0, 2.0])
    idx_p = torch.arange(3.0, 9.0)
    test = moving_patterns(4, 9, 16, 32, torch.Generator().manual_seed(123))
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
            clip = moving_patterns(4, 9, 16, 32, g)
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    p.add_argument(
        "--train-steps",
        type=int,
        default=100,
        help="training steps of each tiny model (100: ~20 min on 2 cores)",
    )
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps per frame")
    args = p.parse_args(argv)
    result = truncation_quality(args.threads, args.train_steps, args.sample_steps)
    print(json.dumps({"stdiff_truncation_quality": result}, indent=2))


if __name__ == "__main__":
    main()
