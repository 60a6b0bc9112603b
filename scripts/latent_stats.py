"""Measure WF-VAE latent mean / std per channel over a data split; write the scale / shift.

    python scripts/latent_stats.py --ckpt logs/.../last.ckpt --out latent_stats.json \
        experiment=wfvae_kitti data.root=/path/to/kitti_raw

Anything after the options is a Hydra override of configs/train.yaml (the same as train.py), so
the data and model are built exactly as in training; the weights come from --ckpt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WAVECAST_ROOT", str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--ckpt", required=True, help="Lightning checkpoint of a WF-VAE run")
    p.add_argument("--out", default="latent_stats.json")
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--max-batches", type=int, default=None)
    p.add_argument("--sample", action="store_true", help="use posterior samples, not the mean")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from wavecast.checkpoints import load_checkpoint
    from wfvae.latent_stats import LatentStats

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train.yaml", overrides=["paths.output_dir=.", *args.overrides])
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model)
    ckpt = load_checkpoint(args.ckpt, "--ckpt", weights_only=False)
    if "state_dict" not in ckpt:
        raise SystemExit(f"{args.ckpt}: not a Lightning checkpoint (no 'state_dict' key)")
    module.load_state_dict(ckpt["state_dict"])
    net = module.net.eval()
    datamodule.prepare_data()
    datamodule.setup("fit" if args.split in ("train", "val") else "test")
    loader = getattr(datamodule, f"{'val' if args.split == 'val' else args.split}_dataloader")()
    stats = LatentStats()
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if args.max_batches is not None and i >= args.max_batches:
                break
            post = net.encode(batch["video"]).posterior
            stats.update(post.sample() if args.sample else post.mode())
    result = {"checkpoint": str(args.ckpt), "split": args.split, **stats.result()}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
