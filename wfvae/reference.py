"""Loading checkpoints of the published WF-VAE code (``WFVAEModel``, v1) into :class:`WFVAE`.

Two translations: the reference constructor config -> our kwargs (:func:`translate_config`)
and the reference state-dict names -> ours (:func:`reference_key_map`). Every reference key
must map and every one of our keys must be covered; anything left over is an error naming the
keys. The reference stores its Haar kernels (16 as frozen parameters, 24 as buffers); ours are
constants, so those entries are checked against the reference kernels and then dropped. Its
Conv2d weights ``[O, I, k, k]`` become our ``(1, k, k)`` Conv3d weights ``[O, I, 1, k, k]``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from wfvae.haar import haar_kernels_2d, haar_kernels_3d

if TYPE_CHECKING:
    from wfvae.model import WFVAE

#: Defaults of the reference ``WFVAEModel.__init__`` (used for keys a config file omits).
REFERENCE_DEFAULTS: dict[str, Any] = {
    "latent_dim": 8,
    "base_channels": 128,
    "encoder_num_resblocks": 2,
    "encoder_energy_flow_hidden_size": 64,
    "decoder_num_resblocks": 2,
    "decoder_energy_flow_hidden_size": 128,
    "attention_type": "AttnBlock3DFix",
    "use_attention": True,
    "dropout": 0.0,
    "norm_type": "groupnorm",
    "t_interpolation": "nearest",
    "connect_res_layer_num": 1,
    "scale": [0.18215, 0.18215, 0.18215, 0.18215],
    "shift": [0, 0, 0, 0],
    "l1_dowmsample_block": "Downsample",
    "l1_downsample_wavelet": "HaarWaveletTransform2D",
    "l2_dowmsample_block": "Spatial2xTime2x3DDownsample",
    "l2_downsample_wavelet": "HaarWaveletTransform3D",
    "l1_upsample_block": "Upsample",
    "l1_upsample_wavelet": "InverseHaarWaveletTransform2D",
    "l2_upsample_block": "Spatial2xTime2x3DUpsample",
    "l2_upsample_wavelet": "InverseHaarWaveletTransform3D",
}

# Module choices of the reference that this implementation provides (the released ones).
_FIXED_CHOICES = (
    "l1_dowmsample_block",
    "l1_downsample_wavelet",
    "l2_dowmsample_block",
    "l2_downsample_wavelet",
    "l1_upsample_block",
    "l1_upsample_wavelet",
    "l2_upsample_block",
    "l2_upsample_wavelet",
)
_PASSED_THROUGH = (
    "latent_dim",
    "base_channels",
    "encoder_num_resblocks",
    "encoder_energy_flow_hidden_size",
    "decoder_num_resblocks",
    "decoder_energy_flow_hidden_size",
    "use_attention",
    "dropout",
    "norm_type",
    "t_interpolation",
    "connect_res_layer_num",
)
# Stored in the reference config but not used by its encode/decode (and its default has 4
# entries whatever latent_dim is): not translated.
_UNUSED = ("scale", "shift")
_METADATA = ("_class_name", "_diffusers_version", "_name_or_path")

_HAAR3D_BANDS = ("h", "g", "hh", "gh", "h_v", "g_v", "hh_v", "gh_v")
_HAAR2D_BANDS = ("aa", "ad", "da", "dd")


def translate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Reference ``WFVAEModel`` kwargs (a parsed config JSON) -> :class:`WFVAE` kwargs.

    Raises ValueError for unknown keys or module choices this implementation does not have.
    The result uses ``haar_scale='reference'`` (bit parity with the reference's kernels).
    """
    if not isinstance(config, dict):
        raise ValueError(f"reference config must be a dict, got {type(config).__name__}")
    cls = config.get("_class_name", "WFVAEModel")
    if cls != "WFVAEModel":
        raise ValueError(
            f"reference config: _class_name {cls!r} is not the v1 'WFVAEModel' this loader handles"
        )
    unknown = sorted(set(config) - set(REFERENCE_DEFAULTS) - set(_METADATA))
    if unknown:
        raise ValueError(f"reference config: unknown keys {unknown}")
    cfg = {**REFERENCE_DEFAULTS, **{k: v for k, v in config.items() if k not in _METADATA}}
    for key in _FIXED_CHOICES:
        if cfg[key] != REFERENCE_DEFAULTS[key]:
            raise ValueError(
                f"reference config: {key}={cfg[key]!r} is not supported (only the released "
                f"{REFERENCE_DEFAULTS[key]!r})"
            )
    if cfg["use_attention"] and cfg["attention_type"] != "AttnBlock3DFix":
        raise ValueError(
            f"reference config: attention_type={cfg['attention_type']!r} is not supported "
            "(only 'AttnBlock3DFix', per-frame attention)"
        )
    out = {k: cfg[k] for k in _PASSED_THROUGH}
    out["haar_scale"] = "reference"
    return out


def reference_config(config: dict[str, Any]) -> dict[str, Any]:
    """:class:`WFVAE` kwargs (e.g. ``wfvae_config("bc64")``) -> reference ``WFVAEModel`` kwargs.

    The inverse of :func:`translate_config` for the architecture keys (``haar_scale`` and other
    options of ours that the reference lacks are dropped); used to build the published model
    with the same architecture, e.g. to time it beside ours (``scripts/benchmark.py``).
    """
    missing = [k for k in _PASSED_THROUGH if k not in config and k != "dropout"]
    if missing:
        raise ValueError(f"WFVAE config lacks {missing} (needed for the reference kwargs)")
    out = {k: v for k, v in REFERENCE_DEFAULTS.items() if k not in _UNUSED}
    out.update({k: config[k] for k in _PASSED_THROUGH if k in config})
    return out


def _res_block(ref: str, ours: str, norm: str, conv: str) -> dict[str, str]:
    m = {f"{ref}norm1{norm}": f"{ours}norm1", f"{ref}norm2{norm}": f"{ours}norm2"}
    for name in ("conv1", "conv2", "nin_shortcut"):
        m[f"{ref}{name}{conv}"] = f"{ours}{name}"
    return m


def _mid_block(ref: str, ours: str, norm: str, attention: bool) -> dict[str, str]:
    m = _res_block(f"{ref}0.", f"{ours}res1.", norm, ".conv")
    if attention:
        m[f"{ref}1.norm{norm}"] = f"{ours}attn.norm"
        for name in ("q", "k", "v", "proj_out"):
            m[f"{ref}1.{name}.conv"] = f"{ours}attn.{name}"
    m.update(_res_block(f"{ref}{2 if attention else 1}.", f"{ours}res2.", norm, ".conv"))
    return m


def reference_key_map(config: dict[str, Any]) -> dict[str, str]:
    """Reference module path -> our module path, for our kwargs ``config`` (parameters only).

    A reference key ``<module>.<param>`` maps to ``map[<module>].<param>``. Includes optional
    modules (shortcuts) that a given width may not create; coverage is checked on real keys.
    """
    ne, nd = config["encoder_num_resblocks"], config["decoder_num_resblocks"]
    r, att = config["connect_res_layer_num"], config["use_attention"]
    # The reference wraps LayerNorm (".norm") but uses nn.GroupNorm bare.
    norm = ".norm" if config["norm_type"] == "layernorm" else ""
    m: dict[str, str] = {}
    e, d = "encoder.", "decoder."
    m[f"{e}down1.0"] = f"{e}conv_in"
    for i in range(ne):
        m.update(_res_block(f"{e}down1.{i + 1}.", f"{e}blocks_l1.{i}.", norm, ""))
    m[f"{e}down1.{ne + 1}.conv"] = f"{e}down_l1.conv"
    m[f"{e}down2.0"] = f"{e}conv_l2"
    for i in range(ne):
        m.update(_res_block(f"{e}down2.{i + 1}.", f"{e}blocks_l2.{i}.", norm, ".conv"))
    m[f"{e}down2.{ne + 1}.conv.conv"] = f"{e}down_l2.conv"
    m[f"{e}connect_l1"] = f"{e}flow_w2"
    m[f"{e}connect_l2"] = f"{e}flow_w3"
    m.update(_mid_block(f"{e}mid.", f"{e}mid.", norm, att))
    m[f"{e}norm_out{norm}"] = f"{e}norm_out"
    m[f"{e}conv_out.conv"] = f"{e}conv_out"

    m[f"{d}conv_in.conv"] = f"{d}conv_in"
    m.update(_mid_block(f"{d}mid.", f"{d}mid.", norm, att))
    for level in ("up2", "up1"):
        for i in range(nd):
            m.update(_res_block(f"{d}{level}.{i}.", f"{d}{level}.blocks.{i}.", norm, ".conv"))
        # The 3D upsampler wraps a CausalConv3d, the 2D one a plain Conv2d.
        up_conv = ".conv.conv" if level == "up2" else ".conv"
        m[f"{d}{level}.{nd}{up_conv}"] = f"{d}{level}.upsample.conv"
        m.update(_res_block(f"{d}{level}.{nd + 1}.", f"{d}{level}.block_out.", norm, ".conv"))
    for i in range(2):
        m.update(_res_block(f"{d}layer.{i}.", f"{d}out_blocks.{i}.", norm, ".conv"))
    for ref_name, our_name in (("connect_l1", "flow_w2"), ("connect_l2", "flow_w3")):
        for i in range(r):
            m.update(_res_block(f"{d}{ref_name}.{i}.", f"{d}{our_name}.blocks.{i}.", norm, ".conv"))
        m[f"{d}{ref_name}.{r}"] = f"{d}{our_name}.conv"
    m[f"{d}norm_out{norm}"] = f"{d}norm_out"
    m[f"{d}conv_out"] = f"{d}conv_out"
    return m


def reference_haar_entries() -> dict[str, Tensor]:
    """The 40 Haar state-dict entries of a reference checkpoint and their values (fp32)."""
    k3 = haar_kernels_3d("reference").reshape(8, 1, 1, 2, 2, 2)
    k2 = haar_kernels_2d().reshape(4, 1, 1, 2, 2)
    out: dict[str, Tensor] = {}
    for mod in ("encoder.wavelet_transform_in", "encoder.wavelet_transform_l2"):
        for band, k in zip(_HAAR3D_BANDS, k3):
            out[f"{mod}.{band}_conv.conv.weight"] = k
    for mod in ("decoder.inverse_wavelet_transform_out", "decoder.inverse_wavelet_transform_l2"):
        for band, k in zip(_HAAR3D_BANDS, k3):
            out[f"{mod}.{band}"] = k
    for mod in ("encoder.wavelet_transform_l1", "decoder.inverse_wavelet_transform_l1"):
        for band, k in zip(_HAAR2D_BANDS, k2):
            out[f"{mod}.{band}"] = k
    return out


def map_reference_keys(
    ref_keys: list[str], config: dict[str, Any]
) -> tuple[dict[str, str], list[str], list[str]]:
    """Map reference keys to ours by name only.

    Returns ``(mapping, haar_keys, unmapped)``: ``mapping`` ref key -> our key, the Haar
    constant entries, and reference keys that match nothing.
    """
    module_map = reference_key_map(config)
    haar = reference_haar_entries()
    mapping: dict[str, str] = {}
    haar_keys: list[str] = []
    unmapped: list[str] = []
    for key in ref_keys:
        if key in haar:
            haar_keys.append(key)
            continue
        module, _, param = key.rpartition(".")
        if module in module_map and param in ("weight", "bias"):
            mapping[key] = f"{module_map[module]}.{param}"
        else:
            unmapped.append(key)
    return mapping, haar_keys, unmapped


def convert_reference_state_dict(
    state_dict: dict[str, Tensor],
    config: dict[str, Any],
    expected: dict[str, torch.Size] | None = None,
    strict: bool = True,
    check_haar: bool = True,
) -> dict[str, Tensor]:
    """Reference state dict -> ours (same tensors, our names).

    ``config`` are our kwargs (see :func:`translate_config`). ``expected`` (our key -> shape)
    enables the coverage and shape checks. Raises ValueError listing unmapped keys in both
    directions, shape mismatches and Haar entries that differ from the reference kernels
    (``strict=False`` turns unmapped keys into a warning).
    """
    mapping, haar_keys, unmapped = map_reference_keys(list(state_dict), config)
    problems: list[str] = []
    if check_haar:
        ref_haar = reference_haar_entries()
        for key in haar_keys:
            value = state_dict[key]
            if value.is_meta:
                continue
            want = ref_haar[key]
            if value.shape != want.shape or not torch.allclose(
                value.detach().float().cpu(), want, rtol=0, atol=1e-6
            ):
                problems.append(f"Haar entry {key} differs from the reference kernel")
    missing_haar = sorted(set(reference_haar_entries()) - set(haar_keys))
    # The reference's Conv2d weights [O, I, k, k] are our (1, k, k) Conv3d weights.
    out = {
        mapping[k]: state_dict[k].unsqueeze(2) if state_dict[k].dim() == 4 else state_dict[k]
        for k in mapping
    }
    missing: list[str] = []
    if expected is not None:
        missing = sorted(set(expected) - set(out))
        for key, value in out.items():
            if key in expected and tuple(value.shape) != tuple(expected[key]):
                problems.append(
                    f"shape of {key} (reference {_ref_of(mapping, key)}): checkpoint "
                    f"{tuple(value.shape)}, model {tuple(expected[key])}"
                )
        extra = sorted(set(out) - set(expected))
        unmapped += [_ref_of(mapping, k) for k in extra]
    if problems:
        raise ValueError("reference checkpoint: " + "; ".join(problems))
    if unmapped or missing or missing_haar:
        msg = (
            f"reference checkpoint keys not mapped to the model: {sorted(unmapped)}; model keys "
            f"missing from the checkpoint: {missing}; Haar entries missing: {missing_haar}"
        )
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    return out


def _ref_of(mapping: dict[str, str], our_key: str) -> str:
    return next(k for k, v in mapping.items() if v == our_key)


def load_reference_state_dict(
    model: WFVAE, state_dict: dict[str, Tensor], strict: bool = True
) -> None:
    """Load a reference state dict into ``model`` (built from the translated config)."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    ours = convert_reference_state_dict(state_dict, model.config, expected, strict=strict)
    model.load_state_dict(ours, strict=strict)


def unwrap_reference_checkpoint(obj: Any, prefer_ema: bool = True) -> dict[str, Tensor]:
    """The model state dict inside a reference checkpoint file's content.

    Handles a bare state dict, ``{"ema_state_dict": ...}`` (keys may start with ``module.``),
    ``{"state_dict": ...}`` and ``{"state_dict": {"gen_model": ...}}`` as the reference
    training script writes them.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"reference checkpoint: expected a dict, got {type(obj).__name__}")
    ema = obj.get("ema_state_dict")
    if prefer_ema and isinstance(ema, dict) and len(ema) > 0:
        return {k.removeprefix("module."): v for k, v in ema.items()}
    sd = obj.get("state_dict")
    if isinstance(sd, dict):
        inner = sd.get("gen_model")
        return inner if isinstance(inner, dict) else sd
    if all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    raise ValueError(
        "reference checkpoint: no state dict found (looked for ema_state_dict, state_dict, "
        f"state_dict.gen_model, or a bare dict of tensors); top-level keys {sorted(obj)[:10]}"
    )
