"""TemporalModule: latent-space fusion of frame t-1 into frame t by flow warping and an alpha gate.

    z_warp         = warp(z_prev, flow)                     # backward sampling at p - flow(p)
    z_warp_refined = z_warp + refiner(z_warp, z_cur, valid)  # small residual conv net
    z_fused        = alpha * z_warp_refined + (1 - alpha) * z_cur

Extensions, each behind a constructor switch: a latent flow predictor (used when no flow is
given), a spatial alpha map from a conv head, and `MultiScaleTemporalFusion`, which applies one
TemporalModule per chosen decoder layer of a host network through forward hooks.

Alpha override (for the warmup callback, DDP-safe): `module.alpha_override = value` makes every
forward use `value` as alpha while keeping `alpha_param` (and the spatial alpha head) in the
autograd graph, so DDP never sees an unused parameter and `requires_grad` is never toggled.
`alpha_override_grad` chooses what the parameters receive meanwhile:
- "zero" (default): `alpha = value + 0 * alpha_learned`, so their gradient is exactly zero and
  they stay where they are; `set_alpha(target)` at the end of the warmup then hands over to the
  learned alpha without a jump.
- "straight_through": `alpha = alpha_learned + (value - alpha_learned).detach()`, so they get
  the gradient evaluated at the ramp value (shows which way the loss pulls alpha).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import torch
import torch.nn as nn

from wavecast.warping import PADDING_MODES, check_flow, resize_flow, warp

OVERRIDE_GRAD_MODES = ("zero", "straight_through")


def _conv_head(c_in: int, hidden: int, c_out: int, init_scale: float) -> nn.Sequential:
    """conv3x3 -> SiLU -> conv3x3 with the last layer's default init scaled by `init_scale`."""
    net = nn.Sequential(
        nn.Conv2d(c_in, hidden, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(hidden, c_out, 3, padding=1),
    )
    with torch.no_grad():
        net[-1].weight.mul_(init_scale)
        net[-1].bias.zero_()
    return net


class WarpRefiner(nn.Module):
    """Residual correction of the warped latent: z_warp + net([z_warp, z_cur, valid]).

    The last layer starts small (`init_scale` times its default init) rather than at zero: the
    refiner begins as a near-identity, so early training keeps the warp it is given, yet every
    weight (the first layer's too) gets a non-zero gradient from the first step. An exact zero
    init would leave the first layer without gradient until the last layer has moved.
    """

    def __init__(self, channels: int, hidden: int = 32, init_scale: float = 1e-2) -> None:
        super().__init__()
        self.net = _conv_head(2 * channels + 1, hidden, channels, init_scale)

    def forward(
        self, z_warp: torch.Tensor, z_cur: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """z_warp, z_cur [B, C, H, W], valid [B, 1, H, W] -> refined [B, C, H, W]."""
        return z_warp + self.net(torch.cat((z_warp, z_cur, valid), dim=1))


class LatentFlowPredictor(nn.Module):
    """A light conv net predicting a t-1 -> t flow [B, 2, H, W] (latent pixels) from (z_prev, z_cur).

    Output bounded by `max_flow` through a scaled tanh; it starts near zero (small last layer),
    i.e. near the identity warp.
    """

    def __init__(
        self, channels: int, hidden: int = 32, max_flow: float = 8.0, init_scale: float = 1e-2
    ) -> None:
        super().__init__()
        if max_flow <= 0:
            raise ValueError(f"LatentFlowPredictor.max_flow must be > 0, got {max_flow}")
        self.max_flow = float(max_flow)
        self.net = nn.Sequential(
            nn.Conv2d(2 * channels, hidden, 3, padding=1),
            nn.SiLU(),
            _conv_head(hidden, hidden, 2, init_scale),
        )

    def forward(self, z_prev: torch.Tensor, z_cur: torch.Tensor) -> torch.Tensor:
        raw = self.net(torch.cat((z_prev, z_cur), dim=1))
        return self.max_flow * torch.tanh(raw / self.max_flow)


class TemporalModule(nn.Module):
    """Fuse the warped latent of frame t-1 into the latent of frame t.

    Args:
        channels: latent channels C.
        alpha_init: sigmoid(alpha_param) at construction, in (0, 1); a warning above 0.8 (early
            training would trust an inaccurate warp).
        learnable_alpha: alpha_param is an nn.Parameter (True) or a buffer (False).
        refiner: use the residual `WarpRefiner` (else z_warp_refined = z_warp).
        padding_mode: "zeros" | "border" | "reflection" for samples warped in from outside.
        mask_invalid: blend weight 0 where the warp sampled outside the frame (z_fused = z_cur
            there), instead of trusting the padding.
        flow_predictor: predict a flow with `LatentFlowPredictor` when none is given. Its
            parameters are unused in a step where a flow is given (DDP then needs
            find_unused_parameters=True, or always / never pass flows).
        spatial_alpha: alpha map [B, 1, H, W] = sigmoid(alpha_param + head([z_warp_refined,
            z_cur, valid])) instead of a scalar alpha.
    """

    def __init__(
        self,
        channels: int,
        alpha_init: float = 0.3,
        learnable_alpha: bool = True,
        refiner: bool = True,
        refiner_hidden: int = 32,
        refiner_init_scale: float = 1e-2,
        padding_mode: str = "border",
        mask_invalid: bool = True,
        flow_predictor: bool = False,
        flow_predictor_hidden: int = 32,
        max_predicted_flow: float = 8.0,
        spatial_alpha: bool = False,
        spatial_alpha_hidden: int = 16,
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"TemporalModule.channels must be >= 1, got {channels}")
        alpha_init = float(alpha_init)
        if not 0.0 < alpha_init < 1.0:
            raise ValueError(f"TemporalModule.alpha_init must be in (0, 1), got {alpha_init}")
        if alpha_init > 0.8:
            warnings.warn(
                f"TemporalModule.alpha_init={alpha_init} > 0.8: early training would trust an "
                "inaccurate warp (0.2 to 0.5 recommended)",
                stacklevel=2,
            )
        if padding_mode not in PADDING_MODES:
            raise ValueError(
                f"TemporalModule.padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}"
            )
        self.channels = channels
        self.padding_mode = padding_mode
        self.mask_invalid = mask_invalid
        logit = torch.tensor(math.log(alpha_init / (1.0 - alpha_init)))
        if learnable_alpha:
            self.alpha_param = nn.Parameter(logit)
        else:
            self.register_buffer("alpha_param", logit)
        self.refiner = (
            WarpRefiner(channels, refiner_hidden, refiner_init_scale) if refiner else None
        )
        self.flow_predictor = (
            LatentFlowPredictor(channels, flow_predictor_hidden, max_predicted_flow)
            if flow_predictor
            else None
        )
        self.alpha_head = (
            _conv_head(2 * channels + 1, spatial_alpha_hidden, 1, 1e-2) if spatial_alpha else None
        )
        # Set by AlphaWarmup; plain attributes (not state), so a checkpoint never freezes a ramp.
        self.alpha_override: float | None = None
        self.alpha_override_grad: str = "zero"

    # ---------------------------------------------------------------- alpha
    def _override(self, alpha: torch.Tensor) -> torch.Tensor:
        if self.alpha_override is None:
            return alpha
        value = torch.as_tensor(float(self.alpha_override), dtype=alpha.dtype, device=alpha.device)
        if self.alpha_override_grad == "zero":
            return value + 0.0 * alpha
        if self.alpha_override_grad == "straight_through":
            return alpha + (value - alpha).detach()
        raise ValueError(
            f"TemporalModule.alpha_override_grad must be one of {OVERRIDE_GRAD_MODES}, "
            f"got {self.alpha_override_grad!r}"
        )

    @property
    def alpha(self) -> torch.Tensor:
        """The scalar alpha the next forward uses (the override's value during a warmup)."""
        return self._override(torch.sigmoid(self.alpha_param))

    @torch.no_grad()
    def set_alpha(self, value: float) -> None:
        """Write logit(value) into alpha_param (in place, so optimizers keep tracking it)."""
        value = float(value)
        if not 0.0 < value < 1.0:
            raise ValueError(f"TemporalModule.set_alpha: value must be in (0, 1), got {value}")
        self.alpha_param.fill_(math.log(value / (1.0 - value)))

    # ---------------------------------------------------------------- checks
    @staticmethod
    def _check_inputs(z_prev, z_cur, s_prev, s_cur, flow) -> None:
        for name, z in (("z_prev", z_prev), ("z_cur", z_cur)):
            if not isinstance(z, torch.Tensor) or z.ndim != 4:
                shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
                raise ValueError(f"TemporalModule: {name} must be [B, C, H, W], got {shape}")
        if z_prev.shape != z_cur.shape:
            raise ValueError(
                f"TemporalModule: z_prev {tuple(z_prev.shape)} and z_cur {tuple(z_cur.shape)} "
                "must have the same shape"
            )
        if flow is not None:
            check_flow(flow, name="TemporalModule flow", like=z_cur)
        for name, s in (("s_prev", s_prev), ("s_cur", s_cur)):
            if s is None:
                continue
            if s.ndim != 2 or s.shape[0] != z_cur.shape[0]:
                raise ValueError(
                    f"TemporalModule: {name} must be [B, S] with B={z_cur.shape[0]}, "
                    f"got {tuple(s.shape)}"
                )
        if s_prev is not None and s_cur is not None and s_prev.shape != s_cur.shape:
            raise ValueError(
                f"TemporalModule: s_prev {tuple(s_prev.shape)} and s_cur {tuple(s_cur.shape)} "
                "must have the same shape"
            )

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        z_prev: torch.Tensor,
        z_cur: torch.Tensor,
        s_prev: torch.Tensor | None = None,
        s_cur: torch.Tensor | None = None,
        flow: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor | None]]:
        """z_prev, z_cur [B, C, H, W]; s_prev, s_cur [B, S] or None; flow [B, 2, H, W] (t-1 -> t,
        latent pixels, dx then dy) or None = identity warp (or the predicted flow when a flow
        predictor is configured).

        Returns z_fused [B, C, H, W], s_fused [B, S] or None, and aux with `alpha` (scalar
        tensor), `alpha_map` ([B, 1, H, W] blend weight actually used), `z_warp`,
        `z_warp_refined`, `z_warp_refined_mean`, `valid_mask` [B, 1, H, W], `flow`.
        """
        self._check_inputs(z_prev, z_cur, s_prev, s_cur, flow)
        if flow is None and self.flow_predictor is not None:
            flow = self.flow_predictor(z_prev, z_cur)
        if flow is None:
            z_warp = z_prev
            valid = torch.ones_like(z_cur[:, :1])
        else:
            z_warp, valid = warp(z_prev, flow, padding_mode=self.padding_mode, return_mask=True)
        z_ref = self.refiner(z_warp, z_cur, valid) if self.refiner is not None else z_warp

        alpha = self.alpha
        if self.alpha_head is not None:
            logits = self.alpha_param + self.alpha_head(torch.cat((z_ref, z_cur, valid), dim=1))
            weight = self._override(torch.sigmoid(logits))
        else:
            weight = alpha
        if self.mask_invalid and flow is not None:
            weight = weight * valid
        z_fused = weight * z_ref + (1.0 - weight) * z_cur

        s_fused = None
        if s_prev is not None and s_cur is not None:
            s_fused = alpha * s_prev + (1.0 - alpha) * s_cur
        alpha_map = weight if weight.ndim == 4 else weight.expand_as(z_cur[:, :1])
        aux = {
            "alpha": alpha,
            "alpha_map": alpha_map,
            "z_warp": z_warp,
            "z_warp_refined": z_ref,
            "z_warp_refined_mean": z_ref.mean(),
            "valid_mask": valid,
            "flow": flow,
        }
        return z_fused, s_fused, aux


class MultiScaleTemporalFusion(nn.Module):
    """Temporal fusion at several layers of a host network, through forward hooks.

    The host processes a clip whose frames are laid out as [B*T, C, H, W] (layout "bt", frames
    of one clip consecutive) or [B, C, T, H, W] (layout "bcthw"). After each chosen layer (by
    its name in `host.named_modules()`), frame t's activation is fused with frame t-1's by a
    TemporalModule of that layer, frame by frame: z_prev is frame t-1's fused activation when
    `recurrent` (so information is carried along the clip), its raw activation otherwise.

    Flows between consecutive frames [B, T-1, 2, H_f, W_f] (pixels of their own grid) can be
    given with `set_flow`; each layer resizes them to its grid and rescales the values.
    This module owns the TemporalModules (register it in the LightningModule that trains them);
    the host is only hooked, never modified.
    """

    def __init__(
        self,
        channels: dict[str, int],
        num_frames: int,
        layout: str = "bt",
        recurrent: bool = True,
        **temporal_kwargs,
    ) -> None:
        super().__init__()
        if layout not in ("bt", "bcthw"):
            raise ValueError(
                f"MultiScaleTemporalFusion.layout must be 'bt' or 'bcthw', got {layout!r}"
            )
        if num_frames < 1:
            raise ValueError(f"MultiScaleTemporalFusion.num_frames must be >= 1, got {num_frames}")
        if not channels:
            raise ValueError("MultiScaleTemporalFusion.channels must name at least one layer")
        self.names = list(channels)
        self.num_frames = num_frames
        self.layout = layout
        self.recurrent = recurrent
        self.enabled = True
        self.fusions = nn.ModuleDict(
            {self._key(n): TemporalModule(c, **temporal_kwargs) for n, c in channels.items()}
        )
        self._handles: list = []
        self._flow: torch.Tensor | None = None
        self.last_aux: dict[str, list[dict]] = {}

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def temporal_modules(self) -> Iterable[TemporalModule]:
        return self.fusions.values()

    def attach(self, host: nn.Module) -> MultiScaleTemporalFusion:
        """Register the forward hooks on `host` (raises KeyError naming an unknown layer)."""
        self.detach()
        modules = dict(host.named_modules())
        for name in self.names:
            if name not in modules:
                raise KeyError(
                    f"MultiScaleTemporalFusion: host has no module named {name!r} "
                    f"(some names: {list(modules)[1:8]})"
                )
            self._handles.append(modules[name].register_forward_hook(self._make_hook(name)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def set_flow(self, flow: torch.Tensor | None) -> None:
        """Flows between consecutive frames, [B, T-1, 2, H, W], for the next host forward."""
        if flow is not None and (flow.ndim != 5 or flow.shape[1:3] != (self.num_frames - 1, 2)):
            raise ValueError(
                f"MultiScaleTemporalFusion.set_flow: flow must be [B, {self.num_frames - 1}, 2, H, W], "
                f"got {tuple(flow.shape)}"
            )
        self._flow = flow

    def _make_hook(self, name: str):
        def hook(module: nn.Module, inputs, output):
            if not self.enabled:
                return output
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"MultiScaleTemporalFusion: layer {name!r} returns {type(output).__name__}, "
                    "expected a tensor"
                )
            return self.fuse(name, output)

        return hook

    def fuse(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Fuse consecutive frames of activation x (layout as configured) with layer `name`'s module."""
        t = self.num_frames
        if self.layout == "bt":
            if x.ndim != 4 or x.shape[0] % t:
                raise ValueError(
                    f"MultiScaleTemporalFusion: layer {name!r} output {tuple(x.shape)} is not "
                    f"[B*T, C, H, W] with T={t}"
                )
            frames = x.view(x.shape[0] // t, t, *x.shape[1:])
        else:
            if x.ndim != 5 or x.shape[2] != t:
                raise ValueError(
                    f"MultiScaleTemporalFusion: layer {name!r} output {tuple(x.shape)} is not "
                    f"[B, C, T, H, W] with T={t}"
                )
            frames = x.transpose(1, 2)
        tm = self.fusions[self._key(name)]
        h, w = frames.shape[-2:]
        flows = None
        if self._flow is not None:
            f = self._flow.to(x.dtype)
            flows = resize_flow(f.flatten(0, 1), (h, w)).view(f.shape[0], t - 1, 2, h, w)
        out = [frames[:, 0]]
        auxes = []
        for i in range(1, t):
            z_prev = out[-1] if self.recurrent else frames[:, i - 1]
            flow = flows[:, i - 1] if flows is not None else None
            fused, _, aux = tm(z_prev, frames[:, i], flow=flow)
            out.append(fused)
            auxes.append(aux)
        self.last_aux[name] = auxes
        stacked = torch.stack(out, dim=1)
        if self.layout == "bt":
            return stacked.flatten(0, 1)
        return stacked.transpose(1, 2)


def aux_scalars(aux: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
    """Scalars worth logging from a TemporalModule aux dict (alpha, mean refined latent, valid fraction)."""
    out = {
        "alpha": aux["alpha"].detach(),
        "z_warp_refined_mean": aux["z_warp_refined_mean"].detach(),
    }
    if aux.get("valid_mask") is not None:
        out["valid_fraction"] = aux["valid_mask"].detach().mean()
    return out


__all__ = [
    "LatentFlowPredictor",
    "MultiScaleTemporalFusion",
    "TemporalModule",
    "WarpRefiner",
    "aux_scalars",
]
