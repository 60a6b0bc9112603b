"""Evaluation metrics shared by the models: image quality, temporal flicker, LPIPS, FVD, LiDAR.

Pretrained networks (LPIPS backbones, I3D) come from local files only; see
:mod:`wavecast.metrics.weights`.
"""

from wavecast.metrics.dataset import (
    FramePSNR,
    FrameSSIM,
    MaskedL1,
    MeanOf,
    RangeL1,
    TemporalFlicker,
)
from wavecast.metrics.flicker import brightness_flicker, temporal_flicker
from wavecast.metrics.fvd import FVD, FeatureStats, frechet_distance, preprocess_i3d
from wavecast.metrics.image import psnr, ssim
from wavecast.metrics.lpips import LPIPS
from wavecast.metrics.range import (
    bev_histogram,
    bev_jsd,
    bev_mmd,
    chamfer_distance,
    range_l1,
)
from wavecast.metrics.weights import (
    LPIPSWeights,
    WeightsError,
    resolve_i3d_weights,
    resolve_lpips_weights,
)

__all__ = [
    "FVD",
    "FramePSNR",
    "FrameSSIM",
    "MaskedL1",
    "MeanOf",
    "RangeL1",
    "TemporalFlicker",
    "LPIPS",
    "FeatureStats",
    "LPIPSWeights",
    "WeightsError",
    "bev_histogram",
    "bev_jsd",
    "bev_mmd",
    "brightness_flicker",
    "chamfer_distance",
    "frechet_distance",
    "preprocess_i3d",
    "psnr",
    "range_l1",
    "resolve_i3d_weights",
    "resolve_lpips_weights",
    "ssim",
    "temporal_flicker",
]
