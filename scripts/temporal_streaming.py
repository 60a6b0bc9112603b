"""Does the TemporalModule reduce flicker? Stream held-out drives frame by frame and measure.

For each perturbation setting (independent per-frame Gaussian noise on the latents at several
strengths, as a fraction of the latent std; independent posterior samples) and each method (the
VAE alone; the VAE with each trained TemporalModule run), every frame of the held-out drives is
encoded as a one-frame clip, perturbed, fused online with the previous fused latent
(`temporal.streaming.stream_decode`) and decoded. Reported per setting and method:

- warp_error: occlusion-masked mean |O_t - warp(O_{t-1}, flow_gt)| on [0, 1] images (Lai et al.
  2018, L1), with the synthetic KITTI's ground-truth flow and occlusion mask;
- flicker: `wavecast.metrics.temporal_flicker` (error of the frame differences against the
  clean input's);
- psnr: against the clean frames (`wavecast.metrics.psnr`).

The clean input video's own warping error is reported as the floor (`input`).

    python scripts/temporal_streaming.py --run gt=logs/train/runs/temporal_kitti/<time> \\
        --run dis=<run dir> --sigmas 0 0.1 0.25 0.5 --posterior --out streaming.json

Each run directory must hold `config_tree.yaml` and `checkpoints/last.ckpt` (a train.py run of a
temporal experiment); its `model.vae` / `model.vae_ckpt` give the frozen VAE, its `data` the
root, frame size and test drives (or `--drives`). The flow the module is given at evaluation is
the run's own `data.flow_source` (ground truth, DIS, ...), or none with `flow_input=predicted`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from temporal.streaming import perturb_latents, stream_decode, warping_error
from wavecast.checkpoints import load_checkpoint
from wavecast.data.flow_pairs import KittiFlowPairs
from wavecast.metrics import psnr, temporal_flicker


def load_run(run_dir: Path) -> tuple[torch.nn.Module, dict]:
    """The run's TemporalFusionModule (VAE from its vae_ckpt, TemporalModule from last.ckpt)."""
    cfg_path = run_dir / "config_tree.yaml"
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    for path in (cfg_path, ckpt_path):
        if not path.is_file():
            raise SystemExit(f"{path}: missing (is {run_dir} a train.py run of a temporal model?)")
    cfg = OmegaConf.load(cfg_path)
    module = instantiate(cfg.model)
    state = load_checkpoint(ckpt_path, "last.ckpt", weights_only=False)["state_dict"]
    temporal_state = {
        k[len("temporal.") :]: v for k, v in state.items() if k.startswith("temporal.")
    }
    module.temporal.load_state_dict(temporal_state)
    module.eval()
    return module, OmegaConf.to_container(cfg, resolve=True)


def drive_sequence(pairs: KittiFlowPairs, drive: str) -> dict[str, torch.Tensor]:
    """Consecutive pairs of one drive -> frames [T, 3, H, W], flows [T-1, 2, H, W], valid."""
    items = [pairs[i] for i, (k, _) in enumerate(pairs.clips) if pairs.drives[k].name == drive]
    items.sort(key=lambda it: it["start"])
    frames = torch.stack([items[0]["frames"][0]] + [it["frames"][1] for it in items])
    return {
        "frames": frames,
        "flow": torch.stack([it["flow"] for it in items]),
        "valid": torch.stack([it["flow_valid"] for it in items]),
    }


def sequences(root: str, drives: list[str], size: tuple[int, int], flow_source: str) -> dict:
    pairs = KittiFlowPairs(root, drives, image_size=size, flow_source=flow_source)
    return {d: drive_sequence(pairs, d) for d in drives}


def latent_flows(module, seq: dict[str, torch.Tensor], latent_size) -> torch.Tensor | None:
    if getattr(module, "flow_input", "given") == "predicted":
        return None
    flow_lat, _ = module.latent_flow(seq["flow"], None, latent_size)
    return flow_lat


def settings(sigmas: list[float], posterior: bool) -> list[tuple[str, float, bool]]:
    out = [(f"gauss_{s:g}", s, False) for s in sigmas]
    if posterior:
        out.append(("posterior", 0.0, True))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR (repeat)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5])
    parser.add_argument("--posterior", action="store_true", help="also posterior samples")
    parser.add_argument("--drives", nargs="+", default=None, help="default: the runs' test drives")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    runs = {}
    for spec in args.run:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--run {spec!r}: expected NAME=RUN_DIR")
        runs[name] = load_run(Path(path))
    first_cfg = next(iter(runs.values()))[1]
    data = first_cfg["data"]
    drives = args.drives or list(data["test_drives"])
    size = tuple(data["image_size"])
    vae = next(iter(runs.values()))[0].vae  # every run must share the frozen VAE (checked below)
    digests = {name: m.vae_digest for name, (m, _) in runs.items()}
    if len(set(digests.values())) > 1:
        raise SystemExit(f"the runs were trained on different VAE weights: {digests}")

    t0 = time.time()
    truth = sequences(data["root"], drives, size, "ground_truth")  # metrics use the exact flow
    by_source = {"ground_truth": truth}
    for _, cfg in runs.values():
        src = cfg["data"]["flow_source"]
        if src not in by_source:
            by_source[src] = sequences(data["root"], drives, size, src)

    with torch.no_grad():
        # One encode per drive: its mode is the clean latent, its samples the posterior setting.
        posts = {d: vae.encode(s["frames"].unsqueeze(2)).posterior for d, s in truth.items()}
        clean = {d: p.mode()[:, :, 0] for d, p in posts.items()}
        latent_std = float(torch.cat([z.flatten() for z in clean.values()]).std())
        # How far posterior samples stray from the mode (a small KL weight shrinks it).
        post_std = float(torch.cat([p.std.flatten() for p in posts.values()]).mean())
        # The flow each run's module is given, per drive (the same at every setting).
        given_flows = {
            (name, d): latent_flows(
                module, by_source[cfg["data"]["flow_source"]][d], tuple(clean[d].shape[-2:])
            )
            for name, (module, cfg) in runs.items()
            for d in truth
        }
        table: dict[str, dict[str, dict[str, float]]] = {}
        floor = [warping_error(s["frames"], s["flow"], s["valid"]) for s in truth.values()]
        for setting, sigma, posterior in settings(args.sigmas, args.posterior):
            rows: dict[str, list[dict[str, float]]] = {}
            for k, (d, seq) in enumerate(truth.items()):
                seed = args.seed * 1000 + k
                if posterior:
                    gen = torch.Generator().manual_seed(seed)
                    z = posts[d].sample(generator=gen)[:, :, 0]
                else:
                    z = perturb_latents(clean[d], sigma, latent_std, seed=seed)
                methods = {"vae": (None, None)}
                for name, (module, _) in runs.items():
                    methods[f"vae+temporal[{name}]"] = (module.temporal, given_flows[name, d])
                for method, (temporal, flows) in methods.items():
                    out = stream_decode(vae, z, temporal, flows)
                    x, y = seq["frames"], out
                    rows.setdefault(method, []).append(
                        {
                            "warp_error": float(warping_error(y, seq["flow"], seq["valid"])),
                            "flicker": float(
                                temporal_flicker(y[None], x[None], layout="btchw").mean()
                            ),
                            "psnr": float(psnr(y, x).mean()),
                        }
                    )
            table[setting] = {
                m: {k: sum(r[k] for r in rs) / len(rs) for k in rs[0]} for m, rs in rows.items()
            }
    result = {
        "drives": drives,
        "frames": {d: int(s["frames"].shape[0]) for d, s in truth.items()},
        "image_size": list(size),
        "latent_std": latent_std,
        "posterior_std_mean": post_std,
        "seed": args.seed,
        "input_warp_error": float(torch.stack(floor).mean()),
        "runs": {
            name: {
                "flow_source": cfg["data"]["flow_source"],
                "flow_input": cfg["model"].get("flow_input", "given"),
                "alpha": float(m.temporal.alpha.detach()),
            }
            for name, (m, cfg) in runs.items()
        },
        "table": table,
        "seconds": round(time.time() - t0, 1),
    }
    text = json.dumps(result, indent=2)
    if args.out is None:
        print(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        print(f"written {args.out}")


if __name__ == "__main__":
    main()
