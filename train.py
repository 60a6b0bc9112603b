"""Train a model: `python train.py experiment=wfvae_kitti` (see README)."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("WAVECAST_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    from wavecast.run import train

    return train(cfg)


if __name__ == "__main__":
    main()
