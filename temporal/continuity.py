"""Temporal continuity of a video latent across denoising steps.

At each denoising step t of a video sampler (frames f = 0 .. F-1), the recorder measures how
much adjacent frames differ, in x0-space

    x0_hat = (x_t - sqrt(1 - abar_t) * eps_hat) / sqrt(abar_t)

and in eps-space (eps_hat), with

    d   = ||x^(f+1) - x^(f)||_2 / sqrt(||x^(f)||^2 + ||x^(f+1)||^2)    (0 identical, 1 orthogonal,
                                                                      sqrt(2) opposite)
    cos = <x^(f), x^(f+1)> / (||x^(f)|| ||x^(f+1)||)

each averaged over the F-1 adjacent pairs (and reported per sample and as a batch mean).
Outputs: a PNG with two panels (distance and cosine vs step; matplotlib when installed, else a
PIL drawing), the raw arrays (NPZ), summary statistics over the early / middle / late thirds of
the steps (JSON, and a rich table).

What the study suggests (adjacent frames differ much at early steps and little at late ones)
is used by the STDiff sampler's frame truncation, `stdiff.truncation`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

METRICS = ("x0_distance", "x0_cosine", "eps_distance", "eps_cosine")
THIRDS = ("early", "middle", "late")


# -------------------------------------------------------------------------- metrics
def predict_x0(
    x_t: torch.Tensor, eps_hat: torch.Tensor, alpha_bar_t: float | torch.Tensor
) -> torch.Tensor:
    """x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t); abar_t a scalar or [B] tensor."""
    if x_t.shape != eps_hat.shape:
        raise ValueError(
            f"predict_x0: x_t {tuple(x_t.shape)} and eps_hat {tuple(eps_hat.shape)} differ"
        )
    abar = torch.as_tensor(alpha_bar_t, dtype=x_t.dtype, device=x_t.device)
    if abar.ndim == 1:
        if abar.shape[0] != x_t.shape[0]:
            raise ValueError(
                f"predict_x0: alpha_bar_t [{abar.shape[0]}] does not match batch {x_t.shape[0]}"
            )
        abar = abar.view(-1, *([1] * (x_t.ndim - 1)))
    elif abar.ndim != 0:
        raise ValueError(
            f"predict_x0: alpha_bar_t must be a scalar or [B], got {tuple(abar.shape)}"
        )
    if torch.any(abar <= 0) or torch.any(abar > 1):
        raise ValueError("predict_x0: alpha_bar_t must be in (0, 1]")
    return (x_t - (1 - abar).sqrt() * eps_hat) / abar.sqrt()


def _as_bf(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    if x.ndim == 4:
        x = x.unsqueeze(0)
    if x.ndim != 5:
        raise ValueError(f"{name} must be [B, F, C, H, W] or [F, C, H, W], got {tuple(x.shape)}")
    if x.shape[1] < 2:
        raise ValueError(
            f"{name} needs at least 2 frames (dim 1 of [B, F, C, H, W]), got {x.shape[1]}"
        )
    return x


def adjacent_frame_metrics(
    x: torch.Tensor, eps: float = 1e-12
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised L2 distance and cosine similarity between adjacent frames, averaged over the
    F-1 pairs: x [B, F, C, H, W] or [F, C, H, W] -> (distance [B], cosine [B]), float64."""
    x = _as_bf(x).detach().double().flatten(2)  # [B, F, D]
    a, b = x[:, :-1], x[:, 1:]
    na2, nb2 = a.square().sum(-1), b.square().sum(-1)
    dist = (b - a).norm(dim=-1) / (na2 + nb2).sqrt().clamp_min(eps)
    cos = (a * b).sum(-1) / (na2.sqrt() * nb2.sqrt()).clamp_min(eps)
    return dist.mean(1), cos.mean(1)


# -------------------------------------------------------------------------- recorder
class ContinuityRecorder:
    """Per-step continuity recorder, usable as a sampling-loop callback.

    Call it once per denoising step with all frames at once:

        recorder(step, timestep, x_t, eps_hat)       # x_t, eps_hat [B, F, C, H, W] or [F, C, H, W]

    `alphas_cumprod` (the scheduler's, indexed by timestep) is given at construction or per
    call; `x0_hat=` may be passed instead when the sampler already has it.
    """

    def __init__(
        self, alphas_cumprod: torch.Tensor | np.ndarray | Sequence[float] | None = None
    ) -> None:
        self.alphas_cumprod = (
            None if alphas_cumprod is None else torch.as_tensor(alphas_cumprod).double()
        )
        self.rows: list[dict[str, float | int]] = []
        self.per_sample: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}

    def __len__(self) -> int:
        return len(self.rows)

    def _alpha_bar(self, timestep: int | torch.Tensor, alphas_cumprod) -> float:
        table = (
            self.alphas_cumprod
            if alphas_cumprod is None
            else torch.as_tensor(alphas_cumprod).double()
        )
        if table is None:
            raise ValueError("ContinuityRecorder: alphas_cumprod is needed to compute x0_hat")
        t = int(torch.as_tensor(timestep).flatten()[0])
        if not 0 <= t < table.shape[0]:
            raise ValueError(
                f"ContinuityRecorder: timestep {t} outside alphas_cumprod [0, {table.shape[0]})"
            )
        return float(table[t])

    def __call__(
        self,
        step: int,
        timestep: int | torch.Tensor,
        x_t: torch.Tensor,
        eps_hat: torch.Tensor,
        alphas_cumprod: torch.Tensor | np.ndarray | None = None,
        x0_hat: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """Record one step; returns this step's batch-mean metrics."""
        x_t, eps_hat = _as_bf(x_t, "x_t"), _as_bf(eps_hat, "eps_hat")
        abar = float("nan")
        if x0_hat is None:
            abar = self._alpha_bar(timestep, alphas_cumprod)
            x0_hat = predict_x0(x_t.double(), eps_hat.double(), abar)
        d_x0, c_x0 = adjacent_frame_metrics(x0_hat)
        d_eps, c_eps = adjacent_frame_metrics(eps_hat)
        values = {
            "x0_distance": d_x0,
            "x0_cosine": c_x0,
            "eps_distance": d_eps,
            "eps_cosine": c_eps,
        }
        row: dict[str, float | int] = {
            "step": int(step),
            "timestep": int(torch.as_tensor(timestep).flatten()[0]),
            "alpha_bar": abar,
        }
        for name, v in values.items():
            arr = v.cpu().numpy()
            self.per_sample[name].append(arr)
            row[name] = float(arr.mean())
        self.rows.append(row)
        return {k: float(v) for k, v in row.items() if k in METRICS}

    record = __call__

    def arrays(self) -> dict[str, np.ndarray]:
        """step, timestep, alpha_bar [S] and each metric's batch mean [S] and per sample [S, B]."""
        out = {k: np.array([r[k] for r in self.rows]) for k in ("step", "timestep", "alpha_bar")}
        for m in METRICS:
            out[m] = np.array([r[m] for r in self.rows], dtype=np.float64)
            if self.per_sample[m] and len({a.shape for a in self.per_sample[m]}) == 1:
                out[f"{m}_per_sample"] = np.stack(self.per_sample[m])
        return out

    def summary(self) -> dict[str, dict[str, dict[str, float | list[int] | None]]]:
        return summarise(self.arrays())

    def save(self, out_dir: str | Path, prefix: str = "continuity") -> dict[str, Path]:
        return save_continuity(self.arrays(), out_dir, prefix)

    def print_table(self, console=None) -> None:
        print_summary_table(self.summary(), console)


def summarise(
    arrays: dict[str, np.ndarray],
) -> dict[str, dict[str, dict[str, float | list[int] | None]]]:
    """Mean / std / min / max of each metric over the early / middle / late thirds of the steps
    (split in recording order; a third is empty when fewer than 3 steps were recorded)."""
    steps = np.asarray(arrays["step"])
    parts = np.array_split(np.arange(len(steps)), 3)
    out: dict[str, dict[str, dict[str, float | list[int] | None]]] = {}
    for m in METRICS:
        if m not in arrays:
            continue
        vals = np.asarray(arrays[m], dtype=np.float64)
        out[m] = {}
        for name, idx in zip(THIRDS, parts):
            if len(idx) == 0:
                out[m][name] = {"steps": None, "mean": None, "std": None, "min": None, "max": None}
                continue
            v = vals[idx]
            out[m][name] = {
                "steps": [int(steps[idx[0]]), int(steps[idx[-1]])],
                "mean": float(v.mean()),
                "std": float(v.std()),
                "min": float(v.min()),
                "max": float(v.max()),
            }
    return out


def print_summary_table(summary: dict, console=None) -> None:
    """The summary as a rich table (metric x third, mean +- std)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Adjacent-frame continuity over denoising steps")
    table.add_column("metric")
    for name in THIRDS:
        table.add_column(name, justify="right")
    for metric, parts in summary.items():
        cells = []
        for name in THIRDS:
            p = parts[name]
            cells.append("-" if p["mean"] is None else f"{p['mean']:.4f} ± {p['std']:.4f}")
        table.add_row(metric, *cells)
    (console or Console()).print(table)


# -------------------------------------------------------------------------- outputs
def save_continuity(
    arrays: dict[str, np.ndarray], out_dir: str | Path, prefix: str = "continuity"
) -> dict[str, Path]:
    """Write <prefix>.npz (arrays), <prefix>_summary.json and <prefix>.png into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "npz": out / f"{prefix}.npz",
        "json": out / f"{prefix}_summary.json",
        "png": out / f"{prefix}.png",
    }
    np.savez(paths["npz"], **arrays)
    paths["json"].write_text(json.dumps(summarise(arrays), indent=2))
    plot_continuity(arrays, paths["png"])
    return paths


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_continuity(arrays: dict[str, np.ndarray], path: str | Path, backend: str = "auto") -> Path:
    """Two panels, distance and cosine vs step (x0 and eps curves); backend auto|matplotlib|pil."""
    path = Path(path)
    if backend == "auto":
        backend = "matplotlib" if _has_matplotlib() else "pil"
    if backend == "matplotlib":
        _plot_matplotlib(arrays, path)
    elif backend == "pil":
        _plot_pil(arrays, path)
    else:
        raise ValueError(f"plot_continuity: backend must be auto|matplotlib|pil, got {backend!r}")
    return path


def _panels(arrays: dict[str, np.ndarray]):
    return (
        ("normalised L2 distance", ("x0_distance", "eps_distance")),
        ("cosine similarity", ("x0_cosine", "eps_cosine")),
    )


def _plot_matplotlib(arrays: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (title, keys) in zip(axes, _panels(arrays)):
        for key in keys:
            ax.plot(arrays["step"], arrays[key], label=key.split("_")[0])
        ax.set_title(title)
        ax.set_xlabel("denoising step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_pil(arrays: dict[str, np.ndarray], path: Path) -> None:
    # Hand-drawn fallback because matplotlib is not a dependency of the project.
    from PIL import Image, ImageDraw

    panel_w, panel_h, margin = 460, 340, 50
    img = Image.new("RGB", (2 * panel_w, panel_h), "white")
    draw = ImageDraw.Draw(img)
    colours = {"x0": (31, 119, 180), "eps": (255, 127, 14)}
    steps = np.asarray(arrays["step"], dtype=np.float64)
    for i, (title, keys) in enumerate(_panels(arrays)):
        x0, y0 = i * panel_w + margin, 30
        x1, y1 = (i + 1) * panel_w - 15, panel_h - margin
        series = [np.asarray(arrays[k], dtype=np.float64) for k in keys]
        finite = np.concatenate([s[np.isfinite(s)] for s in series] + [np.zeros(0)])
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        pad = 0.05 * (hi - lo)  # keep the curves off the frame
        lo, hi = lo - pad, hi + pad
        smin, smax = (float(steps.min()), float(steps.max())) if steps.size else (0.0, 1.0)
        srange = max(smax - smin, 1e-9)
        draw.rectangle((x0, y0, x1, y1), outline="black")
        draw.text((x0, 8), title, fill="black")
        draw.text((x0, y1 + 8), f"{smin:g}", fill="black")
        draw.text((x1 - 30, y1 + 8), f"{smax:g}", fill="black")
        draw.text(((x0 + x1) // 2 - 40, y1 + 24), "denoising step", fill="black")
        draw.text((x0 - 45, y0), f"{hi:.3g}", fill="black")
        draw.text((x0 - 45, y1 - 10), f"{lo:.3g}", fill="black")
        for j, (key, s) in enumerate(zip(keys, series)):
            name = key.split("_")[0]
            pts = [
                (x0 + (st - smin) / srange * (x1 - x0), y1 - (v - lo) / (hi - lo) * (y1 - y0))
                for st, v in zip(steps, s)
                if np.isfinite(v)
            ]
            if len(pts) > 1:
                draw.line(pts, fill=colours[name], width=2)
            elif pts:
                draw.ellipse(
                    (pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2), fill=colours[name]
                )
            ly = y0 + 8 + 14 * j
            draw.line((x1 - 70, ly + 6, x1 - 50, ly + 6), fill=colours[name], width=2)
            draw.text((x1 - 45, ly), name, fill="black")
    img.save(path)


# -------------------------------------------------------------------------- demo trajectory
def _smooth_video(
    num_frames: int, shape: tuple[int, int, int], batch: int, seed: int
) -> torch.Tensor:
    """A smooth moving pattern [B, F, C, H, W] with unit variance: sinusoids drifting slowly."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    y, x = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    video = torch.zeros(batch, num_frames, c, h, w, dtype=torch.float64)
    for b in range(batch):
        for ch in range(c):
            for _ in range(4):
                fx, fy = (torch.rand(2, generator=g, dtype=torch.float64) - 0.5) * 1.2
                phase = float(torch.rand(1, generator=g)) * 2 * math.pi
                vx, vy = (torch.rand(2, generator=g, dtype=torch.float64) - 0.5) * 1.0  # px / frame
                for f in range(num_frames):
                    video[b, f, ch] += torch.sin(fx * (x - vx * f) + fy * (y - vy * f) + phase)
    return (video / video.std()).float()


def simulate_denoising_trajectory(
    num_frames: int = 16,
    num_steps: int = 50,
    shape: tuple[int, int, int] = (4, 16, 16),
    batch: int = 1,
    seed: int = 0,
    error_scale: float = 2.0,
) -> tuple[torch.Tensor, Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]]:
    """A simulated DDIM sampling of a video latent, no model needed.

    Frames start as independent Gaussian noise; a simulated denoiser predicts
    x0_hat = x0 + error_scale * sqrt(1 - abar_t) * n_f (n_f independent per frame and step), i.e.
    it is poor at noisy steps and exact at the end; eps_hat follows from x_t and x0_hat, and the
    DDIM scheduler of diffusers (1000 training steps, linear betas) advances x_t. The trajectory
    converges to a smooth moving pattern x0.

    Returns (alphas_cumprod [1000], an iterator of (step, timestep, x_t, eps_hat) with
    x_t, eps_hat [B, F, C, H, W]).
    """
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    scheduler.set_timesteps(num_steps)
    x0 = _smooth_video(num_frames, shape, batch, seed)
    g = torch.Generator().manual_seed(seed + 1)

    def run() -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        x_t = torch.randn(x0.shape, generator=g)
        for step, t in enumerate(scheduler.timesteps):
            abar = scheduler.alphas_cumprod[int(t)]
            noise = torch.randn(x0.shape, generator=g)
            x0_hat = x0 + error_scale * (1 - abar).sqrt() * noise
            eps_hat = (x_t - abar.sqrt() * x0_hat) / (1 - abar).sqrt()
            yield step, int(t), x_t, eps_hat
            flat = scheduler.step(eps_hat.flatten(0, 1), t, x_t.flatten(0, 1)).prev_sample
            x_t = flat.view_as(x_t)

    return scheduler.alphas_cumprod.clone(), run()
