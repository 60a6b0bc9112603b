"""STDiff: stochastic temporal diffusion for video prediction (networks only, no Lightning).

A temporal dynamics encoder (motion encoder, ConvGRU context, neural SDE integrated with
torchsde) predicts motion features at arbitrary future times; a SPADE-modulated diffusion UNet
denoises each future frame conditioned on them.
"""

from stdiff.configs import DEFAULT_SCHEDULER_CONFIG, STDIFF_CONFIGS, stdiff_config
from stdiff.model import STDiff, random_future_subset
from stdiff.pipeline import STDiffPipeline
from stdiff.tde import TemporalDynamicsEncoder
from stdiff.unet_motion import UNet2DMotionCond

__all__ = [
    "DEFAULT_SCHEDULER_CONFIG",
    "STDIFF_CONFIGS",
    "STDiff",
    "STDiffPipeline",
    "TemporalDynamicsEncoder",
    "UNet2DMotionCond",
    "random_future_subset",
    "stdiff_config",
]
