"""Train a model: `python train.py experiment=wfvae_kitti` (see README)."""

import logging
import math
import os
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

os.environ.setdefault("WAVECAST_ROOT", str(Path(__file__).resolve().parent))

from wavecast.resolvers import register_resolvers  # noqa: E402

register_resolvers()
log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    from wavecast.run import train

    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return train(cfg)
    # In a sweep a failing trial is recorded in its own run directory and the sweep goes on.
    try:
        return train(cfg)
    except Exception:
        out = Path(cfg.paths.output_dir)
        (out / "FAILED.txt").write_text(traceback.format_exc())
        log.exception("trial failed; recorded in %s/FAILED.txt, sweep continues", out)
        return math.inf if cfg.get("optimized_mode", "min") == "min" else -math.inf


if __name__ == "__main__":
    from wavecast.entry import run_with_hints

    run_with_hints(main, "train.yaml")
