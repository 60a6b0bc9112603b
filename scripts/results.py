"""Train and evaluate every published result, and write docs/results/ (tables, JSON, figures).

    python scripts/results.py            # full: flagship, quality VAE (~1 h), TemporalModule, STDiff
    python scripts/results.py --quick    # <= 15 min: short runs of the same pipeline
    python scripts/results.py --only wfvae temporal --reuse   # redo parts, reuse finished runs

Everything goes through the normal entry points (`train.py`, `eval.py`,
`scripts/temporal_streaming.py`) as subprocesses, one after the other, so the figures are what a
user gets from the same commands. Runs live in `--work` (default logs/results[_quick]/); the
committed outputs (`results.json`, `results.md`, PNG figures) go to `--out`.

Held-out data: the synthetic KITTI's val drive 2011_09_26_drive_0002 (WF-VAE val PSNR, as the
issue measured) and test drive 2011_09_26_drive_0005 (WF-VAE test, TemporalModule streaming,
STDiff forecasts); no model trains on either. Baselines are scored by the same metric code as the
models (WF-VAE: logged by the module beside val/psnr; STDiff: by its evaluation).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import results_figures as figures

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SEED = 42  # train.py's default seed, stated in every run's config_tree.yaml

STAGES = ("wfvae", "quality", "temporal", "stdiff")
# TemporalModule variants: the flow the module warps with.
TEMPORAL_VARIANTS = {
    "gt_flow": [],
    "dis_flow": ["data.flow_source=dis"],
    "flow_predictor": ["model.temporal.flow_predictor=true", "model.flow_input=predicted"],
}
QUALITY_NET = {"latent_dim": 16, "base_channels": 32, "efs": 32}
FLAGSHIP_NET = {"latent_dim": 16, "base_channels": 16, "efs": 16}


# ----------------------------------------------------------------------------------------------
# Running the entry points


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run_entry(script: str, overrides: list[str], run_dir: Path, log: Path) -> dict[str, Any]:
    """`python <script> <overrides> hydra.run.dir=<run_dir>`; returns minutes and load."""
    cmd = [PY, str(ROOT / script), *overrides, f"hydra.run.dir={run_dir}"]
    print(f"[results] {' '.join(cmd[1:])}", flush=True)
    load0 = os.getloadavg()[0]
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    minutes = (time.time() - t0) / 60
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-30:]
        raise SystemExit(
            f"[results] failed ({proc.returncode}): {' '.join(cmd)}\n" + "\n".join(tail)
        )
    return {
        "command": " ".join(["python", script, *overrides]),
        "minutes": round(minutes, 2),
        "load_avg_1min_at_start": round(load0, 2),
        "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
        "run_dir": str(run_dir),
    }


def train(name: str, overrides: list[str], work: Path, reuse: bool) -> dict[str, Any]:
    run_dir = work / name
    info_file = run_dir / "results_run.json"
    if reuse and info_file.is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file():
        print(f"[results] reusing {run_dir}", flush=True)
        return json.loads(info_file.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    info = run_entry("train.py", overrides, run_dir, run_dir / "stdout.log")
    info["metrics"] = json.loads((run_dir / "metrics_final.json").read_text())
    info_file.write_text(json.dumps(info, indent=2))
    return info


def val_curve(run_dir: Path, key: str = "val/psnr") -> list[tuple[int, float]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]


# ----------------------------------------------------------------------------------------------
# Stages


def stage_wfvae(work: Path, quick: bool, reuse: bool, name: str, experiment: str) -> dict:
    overrides = [f"experiment={experiment}", f"seed={SEED}"]
    if quick and experiment == "wfvae_kitti_quality":
        overrides += ["trainer.max_steps=600", "trainer.val_check_interval=300"]
    info = train(name, overrides, work, reuse)
    m = info["metrics"]
    best = max(m["val/baseline_psnr/mean_frame"], m["val/baseline_psnr/bilinear_x8"])
    return {
        "val_psnr": m["val/psnr"],
        "val_ssim": m.get("val/ssim"),
        "val_flicker": m.get("val/flicker"),
        "val_lpips": m.get("val/lpips"),
        "baselines": {
            "mean_frame": m["val/baseline_psnr/mean_frame"],
            "bilinear_x8": m["val/baseline_psnr/bilinear_x8"],
        },
        "margin_over_best_baseline_db": m["val/psnr"] - best,
        "test_psnr": m.get("test/psnr"),
        "test_ssim": m.get("test/ssim"),
        "test_baselines": {
            "mean_frame": m.get("test/baseline_psnr/mean_frame"),
            "bilinear_x8": m.get("test/baseline_psnr/bilinear_x8"),
        },
        "curve": val_curve(Path(info["run_dir"])),
        "run": {k: v for k, v in info.items() if k != "metrics"},
        "seed": SEED,
    }


def stage_temporal(work: Path, quick: bool, reuse: bool, vae_run: Path, net: dict) -> dict:
    vae = [
        f"model.vae.latent_dim={net['latent_dim']}",
        f"model.vae.base_channels={net['base_channels']}",
        f"model.vae.encoder_energy_flow_hidden_size={net['efs']}",
        f"model.vae.decoder_energy_flow_hidden_size={net['efs']}",
        f"model.vae_ckpt={vae_run / 'checkpoints' / 'last.ckpt'}",
    ]
    runs = {}
    for variant, extra in TEMPORAL_VARIANTS.items():
        overrides = ["experiment=temporal_stream", f"seed={SEED}", *vae, *extra]
        if quick:
            overrides += ["trainer.max_steps=120", "trainer.val_check_interval=60",
                          "callbacks.alpha_warmup.steps=30"]  # fmt: skip
        runs[variant] = train(f"temporal_{variant}", overrides, work, reuse)
    out = work / "temporal_streaming.json"
    cmd = [PY, str(ROOT / "scripts" / "temporal_streaming.py")]
    for variant, info in runs.items():
        cmd += ["--run", f"{variant}={info['run_dir']}"]
    cmd += ["--sigmas", "0", "0.1", "0.25", "0.5", "--posterior", "--out", str(out)]
    print(f"[results] {' '.join(cmd[1:])}", flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    streaming = json.loads(out.read_text())
    streaming["minutes"] = round((time.time() - t0) / 60, 2)
    return {
        "streaming": streaming,
        "runs": {k: {x: y for x, y in v.items() if x != "metrics"} for k, v in runs.items()},
    }


def stage_stdiff(work: Path, quick: bool, reuse: bool) -> dict:
    """Train the forecast recipe (its test on the held-out drive runs at the end of train.py,
    with the best-val-loss weights) and collect the per-step metrics of the samples and of the
    baselines, all scored by STDiffModule.score."""
    overrides = ["experiment=stdiff_kitti_range_forecast", f"seed={SEED}"]
    if quick:
        overrides += ["trainer.max_steps=120", "trainer.check_val_every_n_epoch=1",
                      "callbacks.ema.update_starting_at_step=60",
                      "data.max_clips_per_split.test=4", "model.num_inference_steps=10"]  # fmt: skip
    info = train("stdiff_kitti_range_forecast", overrides, work, reuse)
    m = info["metrics"]
    out: dict[str, Any] = {}
    for metric in ("range_l1_m", "range_l1_both_m", "chamfer_m"):
        out[metric] = {}
        out[f"{metric}_per_step"] = {}
        for method in ("copy_last", "constant_velocity", "mean_of_k", "best_of_k"):
            steps = [m[key] for k in range(1, 4) if (key := f"test/{metric}/step{k}/{method}") in m]
            out[metric][method] = m[f"test/{method}/{metric}"]
            out[f"{metric}_per_step"][method] = steps
    out["beats_copy_last_every_step"] = {
        metric: {
            method: all(
                a < b
                for a, b in zip(
                    out[f"{metric}_per_step"][method], out[f"{metric}_per_step"]["copy_last"]
                )
            )
            for method in ("mean_of_k", "best_of_k")
        }
        for metric in ("range_l1_m", "chamfer_m")
    }
    out["val_loss_curve"] = val_curve(Path(info["run_dir"]), "val/loss")
    # Issue 12 item 3's table for STDiff: its roll-out with and without flow-guided
    # cross-frame attention (same seeds), scripts/stdiff_cross_frame.py.
    cross = work / "stdiff_cross_frame.json"
    cmd = [PY, str(ROOT / "scripts" / "stdiff_cross_frame.py"), "--run", info["run_dir"],
           "--out", str(cross)]  # fmt: skip
    if quick:
        cmd += ["--max-sequences", "2", "--num-samples", "1"]
    if not (reuse and cross.is_file()):
        print(f"[results] {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    out["cross_frame_attention"] = json.loads(cross.read_text())
    out["run"] = {k: v for k, v in info.items() if k != "metrics"}
    out["seed"] = SEED
    return out


def temporal_summary(streaming: dict, default: str = "gauss_0.25") -> dict:
    """results.json's temporal block: the VAE alone and the best variant at the default strength."""
    table = streaming["table"][default]
    variants = {m: r for m, r in table.items() if m != "vae"}
    best = min(variants, key=lambda m: variants[m]["warp_error"])
    vae, fused = table["vae"], variants[best]
    return {
        "default_setting": default,
        "best_variant": best,
        "warp_error": {"vae": vae["warp_error"], "vae+temporal": fused["warp_error"],
                       **{m: r["warp_error"] for m, r in variants.items()}},
        "psnr": {"vae": vae["psnr"], "vae+temporal": fused["psnr"],
                 **{m: r["psnr"] for m, r in variants.items()}},
        "flicker": {"vae": vae["flicker"], "vae+temporal": fused["flicker"],
                    **{m: r["flicker"] for m, r in variants.items()}},
        "warp_error_change": fused["warp_error"] / vae["warp_error"] - 1.0,
        "psnr_cost_db": vae["psnr"] - fused["psnr"],
        "input_warp_error": streaming["input_warp_error"],
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Outputs


def load_run(run_dir: Path) -> tuple[Any, Any]:
    """(LightningModule with the run's last weights, its resolved config)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from wavecast.checkpoints import load_checkpoint

    cfg = OmegaConf.load(run_dir / "config_tree.yaml")
    module = instantiate(cfg.model)
    state = load_checkpoint(run_dir / "checkpoints" / "last.ckpt", "last.ckpt", weights_only=False)
    module.load_state_dict(state["state_dict"], strict=False)
    return module.eval(), cfg


def wfvae_strip(run_dir: Path, path: Path) -> None:
    """input | reconstruction | error for frames 0, 4, 8 of the first val clip."""
    import torch
    from hydra.utils import instantiate

    module, cfg = load_run(run_dir)
    dm = instantiate(cfg.data)
    dm.setup("validate")
    x = next(iter(dm.val_dataloader()))["video"][:1]
    with torch.no_grad():
        recon = module.net(x, sample_posterior=False).recon
    frames = [0, x.shape[2] // 2, x.shape[2] - 1]
    inp, rec = x[0, :, frames].transpose(0, 1), recon[0, :, frames].transpose(0, 1)
    figures.strip({"input": inp, "output": rec, "|error| x4": figures.error_frames(rec, inp)}, path)


def temporal_strip(results: dict, path: Path) -> None:
    """Clean frames | VAE alone | VAE + TemporalModule (best variant) | their errors, for four
    consecutive frames of the test drive at the default perturbation."""
    import torch
    from temporal_streaming import latent_flows, sequences
    from temporal_streaming import load_run as load_temporal

    from temporal.streaming import encode_frames, perturb_latents, stream_decode

    t = results["temporal"]
    best = t["summary"]["best_variant"].split("[", 1)[1].rstrip("]")
    module, cfg = load_temporal(Path(t["runs"][best]["run_dir"]))
    data = cfg["data"]
    drive = t["streaming"]["drives"][0]
    truth = sequences(data["root"], [drive], tuple(data["image_size"]), "ground_truth")[drive]
    given = truth
    if data["flow_source"] != "ground_truth":
        given = sequences(data["root"], [drive], tuple(data["image_size"]), data["flow_source"])[
            drive
        ]
    sigma = float(t["summary"]["default_setting"].split("_", 1)[1])
    with torch.no_grad():
        z = encode_frames(module.vae, truth["frames"])
        zp = perturb_latents(z, sigma, t["streaming"]["latent_std"], seed=0)
        alone = stream_decode(module.vae, zp)
        fused = stream_decode(
            module.vae, zp, module.temporal, latent_flows(module, given, zp.shape[-2:])
        )
    sel = slice(4, 8)
    x = truth["frames"][sel]
    figures.strip({
        "input": x,
        "VAE alone": alone[sel],
        f"+ temporal ({best})": fused[sel],
        "|err| alone x4": figures.error_frames(alone[sel], x),
        "|err| fused x4": figures.error_frames(fused[sel], x),
    }, path)  # fmt: skip


def write_figures(results: dict, out: Path) -> None:
    figures.training_curves(results, out / "wfvae_training_curves.png")
    for key in ("wfvae", "quality"):
        if key in results:
            wfvae_strip(Path(results[key]["run"]["run_dir"]), out / f"{key}_strip.png")
    if "temporal" in results:
        figures.warp_error_vs_strength(
            results["temporal"]["streaming"], out / "temporal_warp_error.png"
        )
        temporal_strip(results, out / "temporal_strip.png")
    if "stdiff" in results:
        figures.forecast_per_step(results["stdiff"], out / "stdiff_forecast_per_step.png")
        stdiff_strip(results, out / "stdiff_strip.png")


def stdiff_strip(results: dict, path: Path) -> None:
    """Range images of the first test sequence: the last observed scan, then for each predicted
    step ground truth | STDiff sample | copy-last | constant velocity | errors."""
    import torch
    from hydra.utils import instantiate

    from stdiff.evaluation import baseline_forecasts

    module, cfg = load_run(Path(results["stdiff"]["run"]["run_dir"]))
    dm = instantiate(cfg.data)
    dm.setup("test")
    module.check_data(dm)
    batch = next(iter(dm.test_dataloader()))
    batch = {k: v[:1] if torch.is_tensor(v) else v for k, v in batch.items()}
    frames = batch["frames"].float()
    vo, vp = frames[:, : module.n_obs], frames[:, module.n_obs :]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        pred = module.sample(vo, 1, module.num_inference_steps, g, module.scheduler_type)[0, 0]
    base = baseline_forecasts(vo, batch, module.n_pred, module.range_space, module.baselines)
    r = module.range_space.channel

    def grey(x: torch.Tensor) -> torch.Tensor:  # [Tp, C, H, W] -> [Tp, 3, H, W] range channel
        return x[:, r : r + 1].expand(-1, 3, -1, -1)

    truth = grey(vp[0])
    rows = {"ground truth": truth, "STDiff": grey(pred)}
    rows.update({name: grey(f[0].float()) for name, f in base.items()})
    rows["|err| STDiff x4"] = figures.error_frames(grey(pred), truth)
    if "copy_last" in base:
        rows["|err| copy last x4"] = figures.error_frames(grey(base["copy_last"][0]), truth)
    figures.strip(rows, path)


def write_markdown(results: dict, out: Path) -> None:
    lines = ["# Results", ""]
    lines += [f"Generated by `{results['command']}` on {results['date']}.", ""]
    m = results["machine"]
    lines += [f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}. Seed {SEED}.", ""]
    if "wfvae" in results:
        lines += [
            "## WF-VAE reconstruction (val drive 2011_09_26_drive_0002, 12 clips of 9 frames)",
            "",
        ]
        lines += ["| model | val PSNR | mean frame | bilinear x8 | margin | test PSNR | SSIM | minutes |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for key in ("wfvae", "quality"):
            r = results.get(key)
            if r is None:
                continue
            lines.append(
                f"| {key} | {r['val_psnr']:.2f} dB | {r['baselines']['mean_frame']:.2f} dB | "
                f"{r['baselines']['bilinear_x8']:.2f} dB | {r['margin_over_best_baseline_db']:+.2f} dB | "
                f"{r['test_psnr']:.2f} dB | {r['val_ssim']:.3f} | {r['run']['minutes']:.1f} |"
            )
        lines.append("")
    if "temporal" in results:
        t = results["temporal"]
        s = t["streaming"]
        lines += [
            "## TemporalModule, streamed frame by frame (test drive, frames fused online)",
            "",
        ]
        lines += [f"Latent std {s['latent_std']:.3f} (posterior std {s.get('posterior_std_mean', float('nan')):.4f}); "
                  f"input video's own warping error "
                  f"{s['input_warp_error']:.4f}. warp = occlusion-masked mean |O_t - warp(O_t-1)| "
                  "on [0, 1] images with the ground-truth flow.", ""]  # fmt: skip
        lines += [
            "| perturbation | method | warp error | flicker | PSNR |",
            "|---|---|---|---|---|",
        ]
        for setting, rows in s["table"].items():
            for method, r in rows.items():
                lines.append(
                    f"| {setting} | {method} | {r['warp_error']:.4f} | {r['flicker']:.4f} | {r['psnr']:.2f} |"
                )
        sm = t["summary"]
        lines += ["", f"At the default strength ({sm['default_setting']}): best variant "
                  f"{sm['best_variant']}, warping error {100 * sm['warp_error_change']:+.1f} % at "
                  f"{sm['psnr_cost_db']:+.2f} dB PSNR cost (goal: -20 % or better at <= 0.5 dB).", ""]  # fmt: skip
    if "stdiff" in results:
        lines += stdiff_markdown(results["stdiff"])
    (out / "results.md").write_text("\n".join(lines) + "\n")


METHOD_NAMES = {
    "copy_last": "copy last scan",
    "constant_velocity": "constant-velocity re-projection",
    "mean_of_k": "STDiff, mean of K",
    "best_of_k": "STDiff, best of K",
}


def stdiff_markdown(r: dict) -> list[str]:
    run = r["run"]
    lines = [
        "## STDiff forecasts (test drive 2011_09_26_drive_0005, 32 x 128 range images, 3 -> 3)",
        "",
        f"`{run['command']}`: {run['minutes']:.1f} min wall (1-min load average "
        f"{run['load_avg_1min_at_start']:.1f} at start, {run['load_avg_1min_at_end']:.1f} at end)."
        " Per predicted step; lower is better. range L1: metres on the true returns;"
        " Chamfer: metres, mean of both directions between the re-projected clouds; the last"
        " column scores only cells where the forecast has a return too (it spares the holes"
        " that re-projection leaves).",
        "",
        "| method | range L1 step 1 / 2 / 3 (m) | Chamfer step 1 / 2 / 3 (m) "
        "| range L1 where both return (m) |",
        "|---|---|---|---|",
    ]

    def steps(metric: str, method: str) -> str:
        return " / ".join(f"{v:.3f}" for v in r[f"{metric}_per_step"][method])

    for method, name in METHOD_NAMES.items():
        lines.append(
            f"| {name} | {steps('range_l1_m', method)} | {steps('chamfer_m', method)} "
            f"| {steps('range_l1_both_m', method)} |"
        )
    beats = r["beats_copy_last_every_step"]
    ok = all(all(v.values()) for v in beats.values())
    lines += ["", f"Beats copy-last at every step in range L1 and Chamfer, mean and best of K: "
              f"{'yes' if ok else 'NO'} ({json.dumps(beats)}).", ""]  # fmt: skip
    cf = r.get("cross_frame_attention")
    if cf:
        lines += [
            f"Roll-out with and without flow-guided cross-frame attention ({cf['sequences']} test "
            f"sequences, K = {cf['num_samples']}, same seeds; warping error of the range channel "
            f"with DIS flow of the ground truth, occlusion by forward-backward check; the ground "
            f"truth's own: {cf['ground_truth_warp_error']:.4f}):",
            "",
            "| roll-out | warp error | flicker | PSNR | range L1 (m) |",
            "|---|---|---|---|---|",
        ]
        for method, row in cf["table"].items():
            lines.append(
                f"| {method} | {row['warp_error']:.4f} | {row['flicker']:.4f} | "
                f"{row['psnr']:.2f} | {row['range_l1_m']:.3f} |"
            )
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (<= 15 min)")
    parser.add_argument("--only", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs in --work")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or ROOT / "logs" / ("results_quick" if args.quick else "results")
    out = args.out or ROOT / "docs" / "results" / ("quick" if args.quick else "")
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results: dict[str, Any] = json.loads(results_file.read_text()) if results_file.is_file() else {}
    results.update({
        "command": "python scripts/results.py" + (" --quick" if args.quick else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "seed": SEED,
    })  # fmt: skip
    t0 = time.time()
    if "wfvae" in args.only:
        results["wfvae"] = stage_wfvae(work, args.quick, args.reuse, "wfvae_kitti", "wfvae_kitti")
    if "quality" in args.only and not args.quick:
        results["quality"] = stage_wfvae(
            work, args.quick, args.reuse, "wfvae_kitti_quality", "wfvae_kitti_quality"
        )
    if "temporal" in args.only:
        # Quick mode freezes the flagship VAE (no quality run); full mode the quality VAE.
        vae_run, net = (
            (work / "wfvae_kitti", FLAGSHIP_NET)
            if args.quick
            else (work / "wfvae_kitti_quality", QUALITY_NET)
        )
        temporal = stage_temporal(work, args.quick, args.reuse, vae_run, net)
        temporal["summary"] = temporal_summary(temporal["streaming"])
        temporal["vae_run"] = str(vae_run)
        results["temporal"] = temporal
        results["temporal"].update(
            {k: temporal["summary"][k] for k in ("warp_error", "psnr", "flicker")}
        )
    if "stdiff" in args.only:
        results["stdiff"] = stage_stdiff(work, args.quick, args.reuse)
    results["minutes_total"] = round((time.time() - t0) / 60, 2)
    # Stages may run as separate processes at once (--only quality, --only stdiff): take the
    # file as it is now and replace only what this process produced.
    done = {s for s in args.only if s in results}
    latest = json.loads(results_file.read_text()) if results_file.is_file() else {}
    latest.update({k: v for k, v in results.items() if k not in STAGES or k in done})
    results = latest
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    write_figures(results, out)
    write_markdown(results, out)
    print(f"[results] written {results_file}", flush=True)


if __name__ == "__main__":
    main()
