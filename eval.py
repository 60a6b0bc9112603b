"""Evaluate a checkpoint: `python eval.py experiment=wfvae_kitti ckpt_path=...` (see README)."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("WAVECAST_ROOT", str(Path(__file__).resolve().parent))

from wavecast.resolvers import register_resolvers  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="configs", config_name="eval.yaml")
def main(cfg: DictConfig) -> None:
    from wavecast.run import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    from wavecast.entry import run_with_hints

    run_with_hints(main, "eval.yaml")
