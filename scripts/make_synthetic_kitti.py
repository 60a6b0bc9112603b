"""Generate the synthetic KITTI raw dataset (KITTI layout + ground truth + SYNTHETIC.json).

python scripts/make_synthetic_kitti.py --root data/synthetic_kitti --size small --seed 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from wavecast.data.synthetic import generate_synthetic_kitti
from wavecast.data.synthetic.writer import SIZES


def _disk_usage(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="output folder (KITTI raw root); default: where the configs look, "
        "data/synthetic_kitti (small) or data/synthetic_kitti_<size>",
    )
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument(
        "--overwrite", action="store_true", help="regenerate even if the manifest matches"
    )
    args = parser.parse_args(argv)
    if args.root is None:
        name = "synthetic_kitti" if args.size == "small" else f"synthetic_kitti_{args.size}"
        args.root = Path(__file__).resolve().parents[1] / "data" / name

    start = time.perf_counter()
    root = generate_synthetic_kitti(
        args.root, size=args.size, seed=args.seed, overwrite=args.overwrite
    )
    elapsed = time.perf_counter() - start
    manifest = json.loads((root / "SYNTHETIC.json").read_text())
    print(f"synthetic KITTI ({manifest['size']}, seed {manifest['seed']}) at {root.resolve()}")
    for name, drive in sorted(manifest["drives"].items()):
        w, h = drive["image_size"]["image_02"]
        print(
            f"  {drive['split']:5s} {drive['date']}/{name}: {drive['n_frames']} frames, images {w}x{h}"
        )
    lidar = manifest["lidar"]
    print(
        f"  lidar: {lidar['n_beams']} beams x {lidar['n_azimuth']} azimuths; ground truth in {root / 'ground_truth'}"
    )
    print(f"  {_disk_usage(root) / 2**20:.1f} MiB on disk, {elapsed:.1f} s")


if __name__ == "__main__":
    main()
