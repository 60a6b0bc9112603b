"""Convert a checkpoint of the published WF-VAE code into a Wavecast checkpoint.

The output loads with Lightning (``{"state_dict": {"net.<key>": ...}, "hyper_parameters":
{...}, "wavecast": {"model": "wfvae", "net_config": ...}}``), or with ``--plain`` is a bare
``torch.save`` of the :class:`wfvae.WFVAE` state dict. It is written to a temporary file in the
target folder and moved into place, so an interrupted run never leaves a partial file.

Usage::

    python scripts/convert_reference.py REF.ckpt OUT.ckpt --config wfvae-large-16chn.json
    python scripts/convert_reference.py fixture.pt OUT.pt --plain   # config stored in the file

The reference config is the model's ``config.json`` (``_class_name: WFVAEModel``); it may also
come from a ``config`` entry (JSON string or dict) in the checkpoint file itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import lightning
import torch

from wavecast.checkpoints import atomic_torch_save
from wfvae import WFVAE
from wfvae.reference import translate_config, unwrap_reference_checkpoint


def _load_config(path: Path | None, ckpt: dict[str, Any]) -> dict[str, Any]:
    if path is not None:
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read the reference config JSON ({err})") from err
    cfg = ckpt.get("config") if isinstance(ckpt, dict) else None
    if isinstance(cfg, str):
        return json.loads(cfg)
    if isinstance(cfg, dict):
        return cfg
    raise ValueError("no --config given and the checkpoint holds no 'config' entry")


def convert(
    src: Path,
    dst: Path,
    config_path: Path | None = None,
    plain: bool = False,
    prefer_ema: bool = True,
    haar_scale: str = "reference",
    prefix: str = "net.",
) -> dict[str, Any]:
    """Convert ``src`` to ``dst``; returns our model config. Raises ValueError on bad input."""
    try:
        raw = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - report the file at fault
        raise ValueError(f"{src}: cannot load as a torch checkpoint ({err})") from err
    ref_config = _load_config(config_path, raw)
    state_dict = unwrap_reference_checkpoint(raw, prefer_ema=prefer_ema)
    model = WFVAE.from_reference(state_dict, ref_config, strict=True, haar_scale=haar_scale)
    config = dict(model.config)
    ours = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if plain:
        payload: Any = ours
    else:
        payload = {
            "state_dict": {f"{prefix}{k}": v for k, v in ours.items()},
            "hyper_parameters": {"net": {"_target_": "wfvae.model.WFVAE", **config}},
            # Lightning refuses a checkpoint without its version key (eval.py / ckpt_path=...).
            "pytorch-lightning_version": lightning.__version__,
            "wavecast": {
                "model": "wfvae",
                "net_config": config,
                "source": {"file": str(src), "reference_config": translate_config(ref_config)},
            },
        }
    atomic_torch_save(payload, dst)
    return config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="reference checkpoint (.ckpt / .pt / .bin)")
    p.add_argument("dst", type=Path, help="output file")
    p.add_argument("--config", type=Path, default=None, help="reference config.json")
    p.add_argument("--plain", action="store_true", help="write a bare WFVAE state dict")
    p.add_argument("--no-ema", action="store_true", help="ignore ema_state_dict if present")
    p.add_argument(
        "--haar-scale",
        choices=["reference", "orthonormal"],
        default="reference",
        help="Haar kernels of the converted model (reference = bit parity with the checkpoint)",
    )
    args = p.parse_args(argv)
    try:
        config = convert(
            args.src,
            args.dst,
            args.config,
            plain=args.plain,
            prefer_ema=not args.no_ema,
            haar_scale=args.haar_scale,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst} ({'plain state dict' if args.plain else 'Lightning checkpoint'})")
    print(json.dumps(config, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
