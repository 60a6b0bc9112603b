"""WF-VAE: wavelet-driven energy-flow causal video VAE (networks only, no Lightning)."""

from wfvae.causal_conv import ChunkCache
from wfvae.distributions import DiagonalGaussian
from wfvae.model import (
    WFVAE,
    WFVAE_CONFIGS,
    DecoderOutput,
    EncoderOutput,
    WFVAEOutput,
    wfvae_config,
)

__all__ = [
    "WFVAE",
    "WFVAE_CONFIGS",
    "ChunkCache",
    "DecoderOutput",
    "DiagonalGaussian",
    "EncoderOutput",
    "WFVAEOutput",
    "wfvae_config",
]
