"""Named STDiff configurations (constructor kwargs of :class:`stdiff.model.STDiff`).

- ``kitti_range``: the KITTI LiDAR range-image model of the published fork (1 x 64 x 512,
  204.2 M parameters).
- ``reduced``: the same architecture at 64 x 128 with channels [32, 64, 64, 128, 128] and
  64 motion channels (the speed / memory benchmark configuration).
- ``tiny``: the reference fixture's model (16 x 32, 0.58 M parameters; tests).
"""

from __future__ import annotations

import copy
from typing import Any

#: The noise schedule the kitti_range model was trained with (shared/reference/stdiff/scheduler.json).
DEFAULT_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "squaredcos_cap_v2",
    "trained_betas": None,
    "variance_type": "fixed_small",
    "clip_sample": True,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "clip_sample_range": 1.0,
    "sample_max_value": 1.0,
}

_DOWN5 = ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]
_UP5 = ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"]

_TDE_KITTI: dict[str, Any] = {
    "in_channels": 1,
    "model_channels": 64,
    "n_downs": 2,
    "learn_diff_image": True,
    "n_layers": 2,
    "nonlinearity": "tanh",
    "sde": True,
    "method": "euler_heun",
    "noise_type": "diagonal",
    "sde_type": "stratonovich",
    "dt": 0.1,
    "adaptive": False,
    "rtol": 1e-3,
    "atol": 1e-3,
    "adjoint": True,
}

STDIFF_CONFIGS: dict[str, dict[str, Any]] = {
    "kitti_range": {
        "unet": {
            "sample_size": [64, 512],
            "in_channels": 2,
            "out_channels": 1,
            "m_channels": 256,
            "block_out_channels": [128, 256, 256, 512, 512],
            "layers_per_block": 2,
            "down_block_types": _DOWN5,
            "up_block_types": _UP5,
            "attention_head_dim": [None, 128, 128, 128, 128],
            "norm_num_groups": 32,
            "norm_eps": 1e-5,
        },
        "tde": _TDE_KITTI,
        "autoregressive": True,
        "super_res_training": False,
    },
    "reduced": {
        "unet": {
            "sample_size": [64, 128],
            "in_channels": 2,
            "out_channels": 1,
            "m_channels": 64,
            "block_out_channels": [32, 64, 64, 128, 128],
            "layers_per_block": 2,
            "down_block_types": _DOWN5,
            "up_block_types": _UP5,
            # 32 channels per head: the same head counts (2 and 4) as kitti_range.
            "attention_head_dim": [None, 32, 32, 32, 32],
            "norm_num_groups": 32,
            "norm_eps": 1e-5,
        },
        "tde": {**_TDE_KITTI, "model_channels": 16},
        "autoregressive": True,
        "super_res_training": False,
    },
    "tiny": {
        "unet": {
            "sample_size": [16, 32],
            "in_channels": 2,
            "out_channels": 1,
            "m_channels": 16,
            "block_out_channels": [8, 16, 16, 24, 24],
            "layers_per_block": 2,
            "down_block_types": _DOWN5,
            "up_block_types": _UP5,
            "attention_head_dim": [None, 8, 8, 8, 8],
            "norm_num_groups": 4,
            "norm_eps": 1e-5,
        },
        "tde": {**_TDE_KITTI, "model_channels": 4},
        "autoregressive": True,
        "super_res_training": False,
    },
}


def stdiff_config(name: str, **overrides: Any) -> dict[str, Any]:
    """Constructor kwargs of a named configuration; ``unet`` / ``tde`` overrides are merged
    into the preset's sections, other keys replace."""
    if name not in STDIFF_CONFIGS:
        raise ValueError(f"unknown STDiff config {name!r}; known: {sorted(STDIFF_CONFIGS)}")
    cfg = copy.deepcopy(STDIFF_CONFIGS[name])
    for key, value in overrides.items():
        if key in ("unet", "tde") and isinstance(value, dict):
            cfg[key].update(copy.deepcopy(value))
        else:
            cfg[key] = copy.deepcopy(value)
    return cfg
