"""WF-VAE (v1, the released architecture): wavelet-driven energy-flow causal video VAE.

Compression 4 x 8 x 8: ``[B, 3, 4n+1, H, W] -> [B, L, n+1, H/8, W/8]`` (H, W multiples of 8).

Chunked (streaming) inference: ``encode(x, chunk_size=c)`` runs chunks of ``1 + c`` then ``c``
video frames (``c`` a multiple of 4), ``decode(z, chunk_size=d)`` chunks of ``d >= 1`` latent
frames. A fresh :class:`ChunkCache` carries the causal context between chunks, so the result
equals the full pass to float rounding for every length, and memory holds only the output plus
a few frames of context per layer.

Activations and conv weights are channels-last (``torch.channels_last_3d``): the layout oneDNN
runs these convs fastest in, and the one in which LayerNorm over channels, per-frame 2D convs
and the attention token view need no transpose copies. Outputs are returned contiguous.
Fastest CPU inference: ``torch.autocast("cpu", dtype=torch.bfloat16)``; the Haar transforms,
the decoder's wavelet coefficients and sums stay in the input's precision (fp32), so latents,
wavelet outputs and video come back fp32.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from wfvae.blocks import ResnetBlock2D, ResnetBlock3D
from wfvae.causal_conv import CausalConv3d, ChunkCache, FrameConv2d
from wfvae.decoder import Decoder
from wfvae.distributions import DiagonalGaussian
from wfvae.encoder import Encoder
from wfvae.haar import HaarScale
from wfvae.norm import NormType
from wfvae.sampling import TimeInterpolation

FramesPolicy = Literal["error", "pad"]
ConvAlgorithm = Literal["auto", "direct"]

TIME_COMPRESSION = 4
SPACE_COMPRESSION = 8

# What every named configuration shares (the published recipe); they differ in size only.
_RECIPE: dict[str, Any] = dict(
    use_attention=True,
    norm_type="layernorm",
    t_interpolation="trilinear",
    connect_res_layer_num=1,
)


def _sized(latent_dim: int, base_channels: int, resblocks: int, flow_hidden: int) -> dict:
    """A configuration of the recipe: latent channels, base width, ResNet blocks per level and
    energy-flow hidden size (the same for encoder and decoder)."""
    return dict(
        latent_dim=latent_dim,
        base_channels=base_channels,
        encoder_num_resblocks=resblocks,
        decoder_num_resblocks=resblocks,
        encoder_energy_flow_hidden_size=flow_hidden,
        decoder_energy_flow_hidden_size=flow_hidden,
        **_RECIPE,
    )


#: Named configurations (constructor kwargs).
WFVAE_CONFIGS: dict[str, dict[str, Any]] = {
    # The published WF-VAE-L 16-channel model (examples/wfvae-large-16chn.json): 317 M params.
    "wfvae_l_16ch": _sized(latent_dim=16, base_channels=192, resblocks=2, flow_hidden=128),
    # WF-VAE-S: the L recipe at base width 128, 8 latent channels (141 M params).
    "wfvae_s": _sized(latent_dim=8, base_channels=128, resblocks=2, flow_hidden=128),
    # The spec's speed-table model "bc 64, efs 64" (latent 8, 2 ResNet blocks per level).
    "bc64": _sized(latent_dim=8, base_channels=64, resblocks=2, flow_hidden=64),
    # Small enough for unit tests on 2 CPU cores.
    "tiny": _sized(latent_dim=4, base_channels=8, resblocks=1, flow_hidden=16),
}


def wfvae_config(name: str, **overrides: Any) -> dict[str, Any]:
    """Constructor kwargs of a named configuration (see :data:`WFVAE_CONFIGS`), with overrides."""
    if name not in WFVAE_CONFIGS:
        raise ValueError(f"unknown WF-VAE config {name!r}; known: {sorted(WFVAE_CONFIGS)}")
    return {**copy.deepcopy(WFVAE_CONFIGS[name]), **overrides}


@dataclass
class EncoderOutput:
    """``posterior`` over ``[B, L, t, h, w]``; ``w2 [B, 12, 2t-1, H/4, W/4]`` and
    ``w3 [B, 24, t, H/8, W/8]`` are the encoder's wavelet coefficients (None when chunked).
    ``num_frames`` is the input length before any ``frames_policy='pad'`` padding."""

    posterior: DiagonalGaussian
    w2: Tensor | None
    w3: Tensor | None
    num_frames: int


@dataclass
class DecoderOutput:
    """``video [B, 3, T, H, W]``; ``w2_hat``/``w3_hat`` as in :class:`EncoderOutput` (None when
    chunked). ``w2_hat`` already includes ``IHaar3D(w3_hat)`` on its first 3 channels."""

    video: Tensor
    w2_hat: Tensor | None
    w3_hat: Tensor | None


@dataclass
class WFVAEOutput:
    recon: Tensor
    posterior: DiagonalGaussian
    z: Tensor
    w2: Tensor
    w3: Tensor
    w2_hat: Tensor
    w3_hat: Tensor


def _valid_lengths(t: int) -> tuple[int, int]:
    below = ((t - 1) // TIME_COMPRESSION) * TIME_COMPRESSION + 1
    return below, below + TIME_COMPRESSION


def _as_output(x: Tensor) -> Tensor:
    return x.contiguous()


class WFVAE(nn.Module):
    """WF-VAE v1. ``encode`` / ``decode`` / ``forward``; see the module docstring for shapes.

    Args:
        latent_dim: latent channels L.
        base_channels: bc; widths are bc, 2bc, 4bc.
        encoder_num_resblocks / decoder_num_resblocks: ResNet blocks per level.
        encoder_energy_flow_hidden_size / decoder_energy_flow_hidden_size: energy-flow width.
        use_attention: per-frame attention in the mid blocks.
        norm_type: "layernorm" (per position; required for chunked inference) or "groupnorm".
        t_interpolation: time upsampling of the decoder, "trilinear" or "nearest".
        connect_res_layer_num: ResNet blocks in each decoder energy-flow branch.
        dropout: dropout inside ResNet blocks.
        haar_scale: "orthonormal" (exact 1/(2 sqrt 2) 3D kernels) or "reference" (the literal
            0.3536 of the published code; needed for bit parity with its checkpoints).
        frames_policy: "error" rejects T != 4n+1; "pad" repeats the last frame up to the next
            4n+1 and crops decoded videos back to T.
        gradient_checkpointing: recompute ResNet blocks in backward (training memory).
        conv_algorithm: "auto" computes wide float32 3x3 convs on the CPU by Winograd F(4x4,
            3x3) where it measured faster (:mod:`wfvae.winograd`; 1.4-3x there, float32 error
            about ten times the direct conv's); "direct" always uses PyTorch's convolution.
    """

    configs = WFVAE_CONFIGS

    def __init__(
        self,
        latent_dim: int = 16,
        base_channels: int = 192,
        encoder_num_resblocks: int = 2,
        decoder_num_resblocks: int = 2,
        encoder_energy_flow_hidden_size: int = 128,
        decoder_energy_flow_hidden_size: int = 128,
        use_attention: bool = True,
        norm_type: NormType = "layernorm",
        t_interpolation: TimeInterpolation = "trilinear",
        connect_res_layer_num: int = 1,
        dropout: float = 0.0,
        haar_scale: HaarScale = "orthonormal",
        frames_policy: FramesPolicy = "error",
        gradient_checkpointing: bool = False,
        conv_algorithm: ConvAlgorithm = "auto",
    ) -> None:
        super().__init__()
        if frames_policy not in ("error", "pad"):
            raise ValueError(f"frames_policy must be 'error' or 'pad', got {frames_policy!r}")
        for name, v in (
            ("latent_dim", latent_dim),
            ("base_channels", base_channels),
            ("encoder_energy_flow_hidden_size", encoder_energy_flow_hidden_size),
            ("decoder_energy_flow_hidden_size", decoder_energy_flow_hidden_size),
        ):
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.config: dict[str, Any] = dict(
            latent_dim=latent_dim,
            base_channels=base_channels,
            encoder_num_resblocks=encoder_num_resblocks,
            decoder_num_resblocks=decoder_num_resblocks,
            encoder_energy_flow_hidden_size=encoder_energy_flow_hidden_size,
            decoder_energy_flow_hidden_size=decoder_energy_flow_hidden_size,
            use_attention=use_attention,
            norm_type=norm_type,
            t_interpolation=t_interpolation,
            connect_res_layer_num=connect_res_layer_num,
            dropout=dropout,
            haar_scale=haar_scale,
            frames_policy=frames_policy,
            gradient_checkpointing=gradient_checkpointing,
            conv_algorithm=conv_algorithm,
        )
        self.latent_dim = latent_dim
        self.norm_type = norm_type
        self.frames_policy = frames_policy
        self.encoder = Encoder(
            latent_dim,
            base_channels,
            encoder_num_resblocks,
            encoder_energy_flow_hidden_size,
            use_attention,
            dropout,
            norm_type,
            haar_scale,
        )
        self.decoder = Decoder(
            latent_dim,
            base_channels,
            decoder_num_resblocks,
            decoder_energy_flow_hidden_size,
            use_attention,
            dropout,
            norm_type,
            t_interpolation,
            connect_res_layer_num,
            haar_scale,
        )
        self.set_gradient_checkpointing(gradient_checkpointing)
        self.set_conv_algorithm(conv_algorithm)
        # Weights in the activations' layout: saves a per-call weight transpose in every conv.
        self.to(memory_format=torch.channels_last_3d)

    # ------------------------------------------------------------------ utilities
    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute every ResNet block in backward (full-clip training only)."""
        self.config["gradient_checkpointing"] = bool(enabled)
        for m in self.modules():
            if isinstance(m, ResnetBlock2D | ResnetBlock3D):
                m.gradient_checkpointing = bool(enabled)

    def set_conv_algorithm(self, algorithm: ConvAlgorithm) -> None:
        """Set the conv algorithm: "auto" (Winograd where it pays) or "direct" (see the class
        docstring)."""
        if algorithm not in ("auto", "direct"):
            raise ValueError(f"conv_algorithm must be 'auto' or 'direct', got {algorithm!r}")
        self.config["conv_algorithm"] = algorithm
        for m in self.modules():
            if isinstance(m, CausalConv3d | FrameConv2d):
                m.winograd = algorithm == "auto"

    def get_last_layer(self) -> nn.Parameter:
        """The decoder's final conv weight (for the GAN adaptive weight)."""
        return self.decoder.conv_out.weight

    @staticmethod
    def latent_frames(num_frames: int) -> int:
        """Latent length of a ``4n+1``-frame clip: ``n + 1``."""
        return (num_frames - 1) // TIME_COMPRESSION + 1

    @staticmethod
    def video_frames(latent_frames: int) -> int:
        """Decoded length of ``t`` latent frames: ``4(t-1) + 1``."""
        return (latent_frames - 1) * TIME_COMPRESSION + 1

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError naming the shape or dim at fault for an invalid video batch."""
        if not isinstance(x, Tensor):
            raise ValueError(f"WFVAE expects a torch.Tensor video, got {type(x).__name__}")
        if x.dim() != 5:
            raise ValueError(f"WFVAE expects video [B, 3, T, H, W], got shape {tuple(x.shape)}")
        b, c, t, h, w = x.shape
        if c != 3:
            raise ValueError(f"WFVAE expects 3 channels (dim 1), got shape {tuple(x.shape)}")
        if b < 1 or t < 1:
            raise ValueError(f"WFVAE got an empty batch or clip: shape {tuple(x.shape)}")
        for dim, name, size in ((3, "H", h), (4, "W", w)):
            if size % SPACE_COMPRESSION:
                raise ValueError(
                    f"WFVAE: {name} (dim {dim}) = {size} is not a multiple of "
                    f"{SPACE_COMPRESSION} (shape {tuple(x.shape)}); crop or pad the frames"
                )
        if (t - 1) % TIME_COMPRESSION and self.frames_policy == "error":
            below, above = _valid_lengths(t)
            raise ValueError(
                f"WFVAE: T (dim 2) = {t} frames is not of the form 4n+1 (shape "
                f"{tuple(x.shape)}); the nearest valid lengths are {below} and {above}. Trim or "
                f"pad the clip, or build WFVAE(frames_policy='pad') to repeat the last frame up "
                f"to {above} frames and crop the output back to {t}."
            )
        if not x.is_floating_point():
            raise ValueError(f"WFVAE expects a floating-point video, got dtype {x.dtype}")

    def _check_latent(self, z: Tensor) -> None:
        if not isinstance(z, Tensor) or z.dim() != 5 or z.shape[1] != self.latent_dim:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(
                f"WFVAE.decode expects z [B, {self.latent_dim}, t, h, w], got shape {shape}"
            )
        if z.shape[2] < 1:
            raise ValueError(f"WFVAE.decode got an empty latent clip: shape {tuple(z.shape)}")

    def _check_chunkable(self) -> None:
        if self.norm_type != "layernorm":
            raise ValueError(
                f"chunked inference needs norm_type='layernorm' (got {self.norm_type!r}): "
                "GroupNorm normalises over time, so chunks would change the result"
            )

    # ------------------------------------------------------------------ encode
    def encode(
        self, x: Tensor, chunk_size: int | None = None, cache: ChunkCache | None = None
    ) -> EncoderOutput:
        """Encode ``x [B, 3, T, H, W]`` (values in [-1, 1]).

        ``chunk_size``: video frames per chunk, a multiple of 4 (the first chunk takes one
        extra frame); None encodes the clip at once. ``cache`` may be passed to inspect the
        streaming state; it is cleared first. In chunked mode ``w2``/``w3`` are None.
        """
        self.check_input(x)
        num_frames = x.shape[2]
        x = self._pad_frames(x)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        t = x.shape[2]
        if chunk_size is not None:
            if int(chunk_size) != chunk_size or chunk_size < TIME_COMPRESSION or chunk_size % 4:
                raise ValueError(
                    f"encode chunk_size must be a positive multiple of 4 frames, got {chunk_size}"
                )
            chunk_size = int(chunk_size)
        if chunk_size is None or 1 + chunk_size >= t:
            moments, w2, w3 = self.encoder(x)
            moments = moments.to(x.dtype)
            return EncoderOutput(
                DiagonalGaussian.from_moments(_as_output(moments)),
                _as_output(w2),
                _as_output(w3),
                num_frames,
            )
        self._check_chunkable()
        cache = self._fresh(cache)
        bounds = [0, *range(1 + chunk_size, t, chunk_size), t]
        out: Tensor | None = None
        pos = 0
        for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            cache.final = i == len(bounds) - 2
            moments = self.encoder(x[:, :, s:e], cache)[0]
            if out is None:
                b, c, _, h, w = moments.shape
                out = moments.new_empty((b, c, self.latent_frames(t), h, w), dtype=x.dtype)
            out[:, :, pos : pos + moments.shape[2]] = moments
            pos += moments.shape[2]
            cache.record()
        assert out is not None and pos == out.shape[2]
        return EncoderOutput(DiagonalGaussian.from_moments(out), None, None, num_frames)

    def _pad_frames(self, x: Tensor) -> Tensor:
        t = x.shape[2]
        if (t - 1) % TIME_COMPRESSION == 0:
            return x
        target = _valid_lengths(t)[1]
        return torch.cat([x, x[:, :, -1:].expand(-1, -1, target - t, -1, -1)], dim=2)

    @staticmethod
    def _fresh(cache: ChunkCache | None) -> ChunkCache:
        if cache is None:
            return ChunkCache()
        cache.clear()
        return cache

    # ------------------------------------------------------------------ decode
    def decode(
        self,
        z: Tensor,
        chunk_size: int | None = None,
        num_frames: int | None = None,
        cache: ChunkCache | None = None,
    ) -> DecoderOutput:
        """Decode ``z [B, L, t, h, w]`` to ``[B, 3, 4(t-1)+1, 8h, 8w]``.

        ``chunk_size``: latent frames per chunk (any >= 1); None decodes at once.
        ``num_frames``: crop the video to this many frames (undo ``frames_policy='pad'``).
        In chunked mode ``w2_hat``/``w3_hat`` are None.
        """
        self._check_latent(z)
        t_lat = z.shape[2]
        t_out = self.video_frames(t_lat)
        if num_frames is not None and not 1 <= num_frames <= t_out:
            raise ValueError(f"decode num_frames={num_frames} outside 1..{t_out} for t={t_lat}")
        z = z.contiguous(memory_format=torch.channels_last_3d)
        if chunk_size is not None:
            if int(chunk_size) != chunk_size or chunk_size < 1:
                raise ValueError(f"decode chunk_size must be an int >= 1, got {chunk_size}")
            chunk_size = int(chunk_size)
        keep = t_out if num_frames is None else num_frames
        if chunk_size is None or chunk_size >= t_lat:
            video, w2_hat, w3_hat = self.decoder(z)
            return DecoderOutput(
                _as_output(video[:, :, :keep]), _as_output(w2_hat), _as_output(w3_hat)
            )
        self._check_chunkable()
        cache = self._fresh(cache)
        bounds = [*range(0, t_lat, chunk_size), t_lat]
        out: Tensor | None = None
        pos = 0
        for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            cache.final = i == len(bounds) - 2
            video = self.decoder(z[:, :, s:e], cache)[0]
            if out is None:
                b, c, _, h, w = video.shape
                out = video.new_empty((b, c, keep, h, w))
            n = min(video.shape[2], keep - pos)
            if n > 0:
                out[:, :, pos : pos + n] = video[:, :, :n]
            pos += video.shape[2]
            cache.record()
        assert out is not None and pos == t_out
        return DecoderOutput(out, None, None)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
    ) -> WFVAEOutput:
        """Full-clip reconstruction ``x -> recon`` (same shape as ``x``) with everything the
        losses need."""
        enc = self.encode(x)
        z = enc.posterior.sample(generator) if sample_posterior else enc.posterior.mode()
        dec = self.decode(z, num_frames=enc.num_frames)
        assert enc.w2 is not None and enc.w3 is not None
        assert dec.w2_hat is not None and dec.w3_hat is not None
        return WFVAEOutput(dec.video, enc.posterior, z, enc.w2, enc.w3, dec.w2_hat, dec.w3_hat)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_reference(
        cls,
        state_dict: dict[str, Tensor],
        config: dict[str, Any],
        strict: bool = True,
        **kwargs: Any,
    ) -> WFVAE:
        """Build from a reference ``WFVAEModel`` state dict and its constructor config.

        Every reference key must map to one of ours and vice versa (ValueError listing the
        unmapped keys otherwise); the reference's Haar kernels are checked against ours. Uses
        ``haar_scale='reference'`` unless overridden in ``kwargs`` (other WFVAE kwargs too).
        With ``strict=False`` unmapped keys are reported as a warning instead.
        """
        from wfvae.reference import load_reference_state_dict, translate_config

        model = cls(**{**translate_config(config), **kwargs})
        load_reference_state_dict(model, state_dict, strict=strict)
        return model
