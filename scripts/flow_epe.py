"""End-point error of the OpenCV flows (DIS, Farneback) against the synthetic KITTI's exact flow.

    python scripts/flow_epe.py --root data/synthetic_kitti --split val
    python scripts/flow_epe.py --split all --image-size 64 192    # on the training resolution

For every consecutive pair (t-1, t) of the split's drives (image_02), the flow t-1 -> t is
estimated with `wavecast.flow.estimate_flow` and compared with the ground truth on its valid
pixels (visible at t, inside the frame). Pixels of all pairs are pooled. Prints JSON: per method
(and for the zero flow, the do-nothing baseline) the mean and median EPE in pixels, the share of
pixels under 1 px and under 3 px, and the seconds per pair.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def split_drives(root: Path, split: str) -> list[str]:
    """Drive names of `split` ("train" / "val" / "test" / "all") from the SYNTHETIC.json manifest."""
    manifest_path = root / "SYNTHETIC.json"
    if not manifest_path.is_file():
        raise SystemExit(
            f"{manifest_path}: not found; ground-truth flow exists only in the synthetic KITTI "
            "(python scripts/make_synthetic_kitti.py --root data/synthetic_kitti --size small)"
        )
    drives = json.loads(manifest_path.read_text())["drives"]
    names = sorted(n for n, d in drives.items() if split == "all" or d["split"] == split)
    if not names:
        raise SystemExit(f"{manifest_path}: no drives in split {split!r}")
    return names


def summarise(epe, seconds: float, pairs: int) -> dict[str, float]:
    import numpy as np

    return {
        "mean_epe_px": float(np.mean(epe)),
        "median_epe_px": float(np.median(epe)),
        "pct_below_1px": float(100.0 * np.mean(epe < 1.0)),
        "pct_below_3px": float(100.0 * np.mean(epe < 3.0)),
        "seconds_per_pair": seconds / max(pairs, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--root", type=Path, default=ROOT / "data" / "synthetic_kitti")
    p.add_argument("--split", default="val", choices=["train", "val", "test", "all"])
    p.add_argument("--drives", nargs="*", default=None, help="drive names (instead of --split)")
    p.add_argument("--methods", nargs="+", default=["dis", "farneback"])
    p.add_argument(
        "--image-size",
        nargs=2,
        type=int,
        default=None,
        metavar=("H", "W"),
        help="resize (cover + centre crop) frames and ground truth first; default: native size",
    )
    p.add_argument("--max-pairs", type=int, default=None, help="evenly spaced pairs at most")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from wavecast.data.datamodules import evenly_spaced
    from wavecast.data.flow_pairs import KittiFlowPairs
    from wavecast.data.kitti_raw import KittiRawDrive
    from wavecast.flow import FLOW_METHODS, estimate_flow

    for m in args.methods:
        if m not in FLOW_METHODS or m == "raft":
            raise SystemExit(f"--methods: {m!r} is not one of dis, farneback")
    drives = args.drives or split_drives(args.root, args.split)
    size = args.image_size or KittiRawDrive(args.root, drives[0], ("image_02",)).image_size()
    ds = KittiFlowPairs(args.root, drives, image_size=size, flow_source="ground_truth")
    indices = evenly_spaced(len(ds), args.max_pairs)

    epe: dict[str, list[np.ndarray]] = {m: [] for m in ["zero", *args.methods]}
    seconds = dict.fromkeys(epe, 0.0)
    n_valid = 0
    for i in indices:
        item = ds[i]
        frames, gt, valid = item["frames"], item["flow"][None], item["flow_valid"][0]
        n_valid += int(valid.sum())
        for m in epe:
            start = time.perf_counter()
            if m == "zero":
                flow = torch.zeros_like(gt)
            else:
                flow = estimate_flow(frames[:1], frames[1:], method=m, value_range=(-1.0, 1.0))
            seconds[m] += time.perf_counter() - start
            err = (flow - gt).norm(dim=1)[0]
            epe[m].append(err[valid].numpy())

    result = {
        "root": str(args.root),
        "split": "custom" if args.drives else args.split,
        "drives": drives,
        "image_size": list(size),
        "pairs": len(indices),
        "valid_pixels": n_valid,
        "methods": {
            m: summarise(np.concatenate(v), seconds[m], len(indices)) for m, v in epe.items()
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return result


if __name__ == "__main__":
    main()
