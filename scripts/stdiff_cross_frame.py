"""Does flow-guided cross-frame attention make STDiff's roll-outs more consistent over time?

Rolls out a trained STDiff run on its held-out test sequences twice with the same seeds: plain,
and with every UNet attention block routed through `temporal.flow_attention.CrossFrameMemory`
(the current frame also attends to the previous frame's keys / values warped by the flow of the
two latest frames). Reported per method, over the frames [last observed, predicted 1..Tp]:

- warp_error: occlusion-masked mean |O_t - warp(O_{t-1})| of the range channel on [0, 1]
  images (Lai et al. 2018, L1). Range images have no ground-truth flow, so the flow is OpenCV
  DIS between consecutive *ground-truth* frames, and the mask is its forward-backward check
  (as Lai et al. do with FlowNet2 on the real video). The ground truth's own value is the floor.
- flicker: `wavecast.metrics.temporal_flicker` against the ground-truth frames;
- range_l1_m per step (mean of K) and psnr: by the run's own `STDiffModule.score`, the code
  that scores the test metrics and the baselines.

    python scripts/stdiff_cross_frame.py --run logs/train/runs/stdiff_kitti_range_forecast/<time> \\
        --out cross_frame.json [--max-sequences 15 --num-samples 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from stdiff.pipeline import STDiffPipeline
from temporal.streaming import warping_error
from wavecast.checkpoints import load_checkpoint
from wavecast.flow import estimate_flow, forward_backward_consistency
from wavecast.metrics import temporal_flicker

# CrossFrameMemory's defaults with DIS flow: the published design, not tuned on this data.
CROSS_FRAME = {"flow_method": "dis"}


def load_run(run_dir: Path) -> tuple[Any, Any]:
    """(STDiffModule with the run's last weights, resolved config)."""
    cfg_path, ckpt = run_dir / "config_tree.yaml", run_dir / "checkpoints" / "last.ckpt"
    for path in (cfg_path, ckpt):
        if not path.is_file():
            raise SystemExit(f"{path}: missing (is {run_dir} a train.py run of an STDiff model?)")
    cfg = OmegaConf.load(cfg_path)
    module = instantiate(cfg.model)
    state = load_checkpoint(ckpt, "last.ckpt", weights_only=False)
    module.load_state_dict(state["state_dict"])
    return module.eval(), cfg


def gt_flows(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DIS flows t-1 -> t of one sequence ``[T, C, H, W]`` and their fwd-bwd valid masks."""
    a, b = frames[:-1], frames[1:]
    fw = estimate_flow(a, b, "dis", value_range=(-1.0, 1.0))
    bw = estimate_flow(b, a, "dis", value_range=(-1.0, 1.0))
    return fw, forward_backward_consistency(fw, bw).bool()


def evaluate(module: Any, dm: Any, args: argparse.Namespace) -> dict[str, Any]:
    pipe = STDiffPipeline(module.net)
    r = module.range_space.channel
    rows: dict[str, dict[str, list]] = {m: {} for m in ("plain", "cross_frame")}
    floor: list[float] = []
    seen = 0
    for batch_idx, batch in enumerate(dm.test_dataloader()):
        if seen >= args.max_sequences:
            break
        frames = batch["frames"]
        vo, vp = frames[:, : module.n_obs], frames[:, module.n_obs :]
        vo, vp = vo[: args.max_sequences - seen], vp[: args.max_sequences - seen]
        batch = {k: v[: vo.shape[0]] if torch.is_tensor(v) else v for k, v in batch.items()}
        seen += vo.shape[0]
        # Ground-truth range channels [Tp+1, 1, H, W], their flows and the floor: once per sequence.
        truths = [torch.cat([vo[j, -1:], vp[j]])[:, r : r + 1].float() for j in range(vo.shape[0])]
        flows = [gt_flows(truth) for truth in truths]
        floor += [float(warping_error(t, *f)) for t, f in zip(truths, flows, strict=True)]
        for method in rows:
            g = torch.Generator().manual_seed(1000 + batch_idx)  # same noise for both methods
            out = pipe(
                vo,
                module.observed_times(),
                module.future_times(),
                num_inference_steps=module.num_inference_steps,
                num_samples=args.num_samples,
                generator=g,
                scheduler_type=module.scheduler_type,
                cross_frame_attention=CROSS_FRAME if method == "cross_frame" else None,
            )
            pred = out["frames"].float().clamp(-1, 1)  # [K, B, Tp, C, H, W]
            scores = module.score(pred, vp, batch)
            rec = rows[method]
            rec.setdefault("range_l1_m", []).append(scores["range_l1_m"].mean(0))  # [B, Tp]
            rec.setdefault("psnr", []).append(scores["psnr"].mean(0))
            for j, (truth, (flow, valid)) in enumerate(zip(truths, flows, strict=True)):
                for i in range(pred.shape[0]):
                    seq = torch.cat([vo[j, -1:, r : r + 1].float(), pred[i, j, :, r : r + 1]])
                    rec.setdefault("warp_error", []).append(float(warping_error(seq, flow, valid)))
                    flick = temporal_flicker(seq.unsqueeze(0), truth.unsqueeze(0), layout="btchw")
                    rec.setdefault("flicker", []).append(float(flick.mean()))
    table = {}
    for method, rec in rows.items():
        l1 = torch.cat(rec["range_l1_m"]).double()
        table[method] = {
            "warp_error": sum(rec["warp_error"]) / len(rec["warp_error"]),
            "flicker": sum(rec["flicker"]) / len(rec["flicker"]),
            "psnr": float(torch.cat(rec["psnr"]).double().nanmean()),
            "range_l1_m": float(l1.nanmean()),
            "range_l1_m_per_step": [float(v) for v in l1.nanmean(0)],
        }
    return {"table": table, "ground_truth_warp_error": sum(floor) / len(floor), "sequences": seen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="train.py run directory")
    parser.add_argument("--out", type=Path, required=True, help="JSON to write")
    parser.add_argument("--max-sequences", type=int, default=15)
    parser.add_argument("--num-samples", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    module, cfg = load_run(args.run)
    dm = instantiate(cfg.data)
    dm.setup("test")
    module.check_data(dm)
    t0 = time.time()
    with torch.no_grad():
        result = evaluate(module, dm, args)
    result.update(
        {
            "run": str(args.run),
            "num_samples": args.num_samples,
            "num_inference_steps": module.num_inference_steps,
            "cross_frame_attention": CROSS_FRAME,
            "minutes": round((time.time() - t0) / 60, 2),
        }
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for method, row in result["table"].items():
        print(method, {k: v for k, v in row.items() if k != "range_l1_m_per_step"})
    print("ground truth warp error", result["ground_truth_warp_error"])


if __name__ == "__main__":
    main()
