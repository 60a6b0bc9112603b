"""Figures of scripts/results.py: training curves, warping error against strength, per-step
forecast metrics, strips.

Strips are input | output | |error| (x4, so that small errors show) for the first frames of a
held-out clip, made by loading each run's checkpoint the way eval.py does (its config_tree.yaml
and checkpoint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

ERROR_GAIN = 4.0


def training_curves(results: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for key, colour in (("wfvae", "C0"), ("quality", "C1")):
        r = results.get(key)
        if not r:
            continue
        steps, values = zip(*r["curve"], strict=True)
        ax.plot(steps, values, "o-", color=colour, label=f"{key}: val PSNR")
    base = (results.get("wfvae") or results.get("quality") or {}).get("baselines", {})
    for name, style in (("mean_frame", "--"), ("bilinear_x8", ":")):
        if name in base:
            ax.axhline(base[name], color="grey", linestyle=style, label=f"{name} baseline")
    ax.set_xlabel("generator step")
    ax.set_ylabel("val PSNR (dB)")
    ax.set_title("WF-VAE on the synthetic KITTI, held-out val drive")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def warp_error_vs_strength(streaming: dict[str, Any], path: Path) -> None:
    table = streaming["table"]
    gauss = sorted(
        ((float(k.split("_", 1)[1]), k) for k in table if k.startswith("gauss_")),
        key=lambda p: p[0],
    )
    methods = list(next(iter(table.values())))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    for m in methods:
        xs = [s for s, _ in gauss]
        axes[0].plot(xs, [table[k][m]["warp_error"] for _, k in gauss], "o-", label=m)
        axes[1].plot(xs, [table[k][m]["psnr"] for _, k in gauss], "o-", label=m)
    axes[0].axhline(
        streaming["input_warp_error"], color="grey", linestyle="--", label="input video"
    )
    axes[0].set_ylabel("warping error (L1, [0, 1] images)")
    axes[1].set_ylabel("PSNR vs clean frames (dB)")
    for ax in axes:
        ax.set_xlabel("latent perturbation sigma (x latent std)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Per-frame latent perturbations streamed through the TemporalModule (test drive)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def forecast_per_step(stdiff: dict[str, Any], path: Path) -> None:
    """Range L1 and Chamfer per predicted step: STDiff (mean / best of K) and the baselines."""
    styles = {
        "copy_last": ("grey", "--"),
        "constant_velocity": ("grey", ":"),
        "mean_of_k": ("C0", "-"),
        "best_of_k": ("C1", "-"),
    }
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    for ax, metric, label in (
        (axes[0], "range_l1_m", "range L1 on true returns (m)"),
        (axes[1], "chamfer_m", "Chamfer distance (m)"),
    ):
        for method, (colour, style) in styles.items():
            values = stdiff[f"{metric}_per_step"].get(method) or []
            steps = list(range(1, len(values) + 1))
            ax.plot(steps, values, "o" + style, color=colour, label=method)
        ax.set_xlabel("predicted step")
        ax.set_ylabel(label)
        ax.set_xticks([1, 2, 3])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("STDiff forecasts on the held-out drive against the trivial answers")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> [H, N*W, 3] uint8, frames side by side."""
    x = ((frames.float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return torch.cat(list(x), dim=-1).permute(1, 2, 0).numpy()


def strip(rows: dict[str, torch.Tensor], path: Path, scale: int = 2) -> None:
    """Stack labelled rows of frames [N, 3, H, W] (in [-1, 1]) into one PNG."""
    images = [_to_uint8(v) for v in rows.values()]
    img = Image.fromarray(np.concatenate(images, axis=0))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    fig_h = img.height / 100 + 0.2
    fig, ax = plt.subplots(figsize=(img.width / 100 + 1.6, fig_h), dpi=100)
    ax.imshow(np.asarray(img))
    h = img.height / len(rows)
    ax.set_yticks([h * (i + 0.5) for i in range(len(rows))], list(rows))
    ax.set_xticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def error_frames(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|output - target| x ERROR_GAIN as frames in [-1, 1] (black = exact)."""
    err = (output.float() - target.float()).abs().mean(dim=1, keepdim=True) / 2 * ERROR_GAIN
    return (err.clamp(0, 1) * 2 - 1).expand(-1, 3, -1, -1)
