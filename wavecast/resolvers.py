"""OmegaConf resolvers used by the configs; registered by train.py / eval.py before Hydra starts."""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def _rank_suffix() -> str:
    # Lightning's re-executed DDP children, torchrun and SLURM set one of these.
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            rank = int(os.environ[var])
            return "" if rank == 0 else f"_rank{rank}"
    return ""


def register_resolvers() -> None:
    """`${rank_suffix:}` -> "" on rank 0, "_rank<k>" elsewhere (per-rank log files)."""
    if not OmegaConf.has_resolver("rank_suffix"):
        OmegaConf.register_new_resolver("rank_suffix", _rank_suffix)
