"""Loading checkpoints of the published STDiff code (``STDiffDiffusers``) into :class:`STDiff`.

Two translations: the reference config ``{"unet": UNet2DMotionCond kwargs, "tde":
STDiff.DiffNet section}`` -> our kwargs (:func:`translate_config`), and reference state-dict
names -> ours (:func:`reference_key_map`). The UNet keeps its names under ``unet.`` (was
``diffusion_unet.``); the TDE modules are renamed (``motion_encoder.model.{3i}`` ->
``motion_encoder.convs.{i}``, ``conv_gru_cell.{GateConv,NewStateConv}`` ->
``context_gru.{gate_conv,candidate_conv}``, ``diff_unet.diff_unet_{f,g}.net.{2i}`` ->
``motion_sde.{drift,diffusion}.convs.{i}``). Unmapped keys in either direction are an error.
"""

from __future__ import annotations

import json
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from stdiff.model import STDiff

#: Defaults of the reference ``UNet2DMotionCond.__init__`` for the keys we translate.
UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "m_channels": 0,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896],
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
}
# Reference options this implementation does not have: key -> the only supported value.
_UNET_FIXED = {
    "time_embedding_type": "positional",
    "resnet_time_scale_shift": "default",
    "class_embed_type": None,
    "num_class_embeds": None,
    "act_fn": "silu",
}
_UNET_PASSED = (
    "sample_size",
    "in_channels",
    "out_channels",
    "center_input_sample",
    "m_channels",
    "freq_shift",
    "flip_sin_to_cos",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "mid_block_scale_factor",
    "downsample_padding",
    "attention_head_dim",
    "norm_num_groups",
    "norm_eps",
    "add_attention",
)
_TDE_KEYS = {"autoregressive", "super_res_training", "MotionEncoder", "DiffUnet", "Int"}


def _as_dict(config: dict[str, Any] | str, what: str) -> dict[str, Any]:
    if isinstance(config, str):
        config = json.loads(config)
    if not isinstance(config, dict):
        raise ValueError(f"reference {what} must be a dict (or JSON), got {type(config).__name__}")
    return config


def _unknown(section: dict[str, Any], known: set[str] | tuple[str, ...], where: str) -> None:
    extra = sorted(set(section) - set(known))
    if extra:
        raise ValueError(f"reference config {where}: unknown keys {extra}")


def translate_config(config: dict[str, Any] | str) -> dict[str, Any]:
    """Reference ``{"unet": ..., "tde": ...}`` -> :class:`STDiff` kwargs.

    ``tde.MotionEncoder.image_size`` is dropped (our TDE takes the motion size from its
    input). In ODE mode (``Int.sde: false``) the reference calls torchdiffeq with
    ``ode_options.step_size``; we integrate the drift with torchsde at that step (methods
    torchsde lacks, e.g. dopri5, are an error). A non-autoregressive UNet whose in_channels
    exceed its out_channels is the fork's ``concat_observed`` variant.
    """
    config = _as_dict(config, "config")
    _unknown(config, ("unet", "tde", "unet_full"), "top level")
    if "unet" not in config or "tde" not in config:
        raise ValueError("reference config: needs both 'unet' and 'tde' sections")
    unet_in = _as_dict(config["unet"], "config 'unet'")
    _unknown(unet_in, UNET_DEFAULTS, "'unet'")
    unet_cfg = {**UNET_DEFAULTS, **unet_in}
    for key, want in _UNET_FIXED.items():
        if unet_cfg[key] != want:
            raise ValueError(
                f"reference config 'unet': {key}={unet_cfg[key]!r} is not supported (only {want!r})"
            )
    unet = {k: unet_cfg[k] for k in _UNET_PASSED}
    if isinstance(unet["sample_size"], (list, tuple)):
        unet["sample_size"] = [int(s) for s in unet["sample_size"]]

    tde_in = _as_dict(config["tde"], "config 'tde'")
    _unknown(tde_in, _TDE_KEYS, "'tde'")
    missing = sorted(_TDE_KEYS - set(tde_in))
    if missing:
        raise ValueError(f"reference config 'tde': missing keys {missing}")
    me, du, integ = tde_in["MotionEncoder"], tde_in["DiffUnet"], tde_in["Int"]
    _unknown(
        me,
        ("learn_diff_image", "image_size", "in_channels", "model_channels", "n_downs"),
        "'tde.MotionEncoder'",
    )
    _unknown(du, ("n_layers", "nonlinear"), "'tde.DiffUnet'")
    _unknown(integ, ("sde", "method", "sde_options", "ode_options"), "'tde.Int'")
    sde = bool(integ.get("sde", True))
    opts = dict(integ.get("sde_options") or {})
    _unknown(
        opts, ("noise_type", "sde_type", "dt", "rtol", "atol", "adaptive"), "'tde.Int.sde_options'"
    )
    method = integ.get("method", "euler_heun")
    tde: dict[str, Any] = {
        "in_channels": int(me["in_channels"]),
        "model_channels": int(me["model_channels"]),
        "n_downs": int(me["n_downs"]),
        "learn_diff_image": bool(me["learn_diff_image"]),
        "n_layers": int(du["n_layers"]),
        "nonlinearity": du["nonlinear"],
        "sde": sde,
        "method": method,
        "noise_type": opts.get("noise_type", "diagonal"),
        "sde_type": opts.get("sde_type", "stratonovich"),
        # The kitti yaml writes rtol / atol as strings ("1e-3").
        "dt": float(opts.get("dt", 0.1)),
        "rtol": float(opts.get("rtol", 1e-3)),
        "atol": float(opts.get("atol", 1e-3)),
        "adaptive": bool(opts.get("adaptive", False)),
        "adjoint": True,  # the reference always calls sdeint_adjoint
    }
    if not sde:
        ode = dict(integ.get("ode_options") or {})
        tde["dt"] = float(ode.get("step_size") or tde["dt"])
        if method == "euler":
            tde["sde_type"] = "ito"
        elif method not in ("midpoint", "heun", "euler_heun"):
            raise ValueError(
                f"reference config 'tde.Int': ODE method {method!r} has no torchsde equivalent "
                "(use euler, midpoint or heun)"
            )
    autoreg = bool(tde_in["autoregressive"])
    return {
        "unet": unet,
        "tde": tde,
        "autoregressive": autoreg,
        "super_res_training": bool(tde_in["super_res_training"]),
        "concat_observed": (not autoreg) and unet["in_channels"] != unet["out_channels"],
    }


def reference_key_map(kwargs: dict[str, Any]) -> dict[str, str]:
    """Reference module path -> our module path for the TDE (our kwargs ``kwargs``).

    UNet keys are mapped by prefix (``diffusion_unet.`` -> ``unet.``) in :func:`map_reference_key`.
    """
    tde = kwargs["tde"]
    m = {}
    for i in range(tde["n_downs"] + 1):
        m[f"tde_model.motion_encoder.model.{3 * i}"] = f"tde.motion_encoder.convs.{i}"
    m["tde_model.conv_gru_cell.GateConv"] = "tde.context_gru.gate_conv"
    m["tde_model.conv_gru_cell.NewStateConv"] = "tde.context_gru.candidate_conv"
    for ref, ours in (("f", "drift"), ("g", "diffusion")):
        for i in range(tde["n_layers"] + 2):
            m[f"tde_model.diff_unet.diff_unet_{ref}.net.{2 * i}"] = (
                f"tde.motion_sde.{ours}.convs.{i}"
            )
    return m


def map_reference_key(key: str, module_map: dict[str, str]) -> str | None:
    """Our name of one reference key, or None when it maps to nothing."""
    if key.startswith("diffusion_unet."):
        return "unet." + key[len("diffusion_unet.") :]
    module, _, param = key.rpartition(".")
    if module in module_map and param in ("weight", "bias"):
        return f"{module_map[module]}.{param}"
    return None


def convert_reference_state_dict(
    state_dict: dict[str, Tensor],
    kwargs: dict[str, Any],
    expected: dict[str, tuple[int, ...]] | None = None,
    strict: bool = True,
) -> dict[str, Tensor]:
    """Reference state dict -> ours (same tensors, our names).

    ``kwargs`` are our constructor kwargs; ``expected`` (our key -> shape) enables the
    coverage and shape checks. ValueError lists unmapped keys in both directions and shape
    mismatches (``strict=False``: unmapped keys only warn).
    """
    module_map = reference_key_map(kwargs)
    out: dict[str, Tensor] = {}
    unmapped: list[str] = []
    ref_of: dict[str, str] = {}
    for key, value in state_dict.items():
        ours = map_reference_key(key, module_map)
        if ours is None:
            unmapped.append(key)
        else:
            out[ours] = value
            ref_of[ours] = key
    problems: list[str] = []
    missing: list[str] = []
    if expected is not None:
        missing = sorted(set(expected) - set(out))
        extra = sorted(set(out) - set(expected))
        unmapped += [ref_of[k] for k in extra]
        for k in extra:
            del out[k]
        for key, value in out.items():
            if tuple(value.shape) != tuple(expected[key]):
                problems.append(
                    f"shape of {key} (reference {ref_of[key]}): checkpoint {tuple(value.shape)} "
                    f"!= model {tuple(expected[key])}"
                )
    if unmapped or missing:
        msg = (
            f"reference state dict: {len(unmapped)} reference keys map to nothing "
            f"{sorted(unmapped)[:20]}; {len(missing)} model keys not covered {missing[:20]}"
        )
        if strict:
            problems.insert(0, msg)
        else:
            warnings.warn(msg, stacklevel=2)
    if problems:
        raise ValueError("; ".join(problems))
    return out


def model_parameter_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Our state-dict tensor names -> shapes (the extra state entry excluded)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if torch.is_tensor(v)}


def load_reference_state_dict(
    model: STDiff, state_dict: dict[str, Tensor], strict: bool = True
) -> None:
    """Convert a reference state dict and load it into ``model`` (built from the translated config)."""
    kwargs = {
        "tde": {
            "n_downs": model.tde.motion_encoder.n_downs,
            "n_layers": len(model.tde.motion_sde.drift.convs) - 2,
        }
    }
    converted = convert_reference_state_dict(
        state_dict, kwargs, expected=model_parameter_shapes(model), strict=strict
    )
    converted["_extra_state"] = model.get_extra_state()
    model.load_state_dict(converted, strict=strict)
