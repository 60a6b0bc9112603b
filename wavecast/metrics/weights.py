"""Where pretrained metric / loss weights come from: local files only, resolved in one place.

Nothing is ever downloaded. A network whose weights are not configured is switched off (LPIPS
term, LPIPS metric, FVD) and that is said ONCE per process and kind, never papered over with
random weights.

Lookup order for each kind: the explicit argument (config value), then the folder named by the
environment variable ``WAVECAST_WEIGHTS_DIR``, searched for the usual file names:

=================  =====================================================================
LPIPS ``vgg``      backbone ``vgg16-397923af.pth`` (torchvision), heads ``vgg.pth`` (lpips)
LPIPS ``alex``     backbone ``alexnet-owt-7be5be79.pth`` (torchvision), heads ``alex.pth``
FVD                ``i3d_torchscript.pt`` (StyleGAN-V's TorchScript I3D)
=================  =====================================================================

An LPIPS spec is a folder holding both files, or a mapping ``{backbone: path, lin: path}``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WEIGHTS_ENV = "WAVECAST_WEIGHTS_DIR"

# First name is the canonical one (what torchvision / the lpips package ship); the others are
# accepted aliases.
BACKBONE_FILES: dict[str, tuple[str, ...]] = {
    "vgg": ("vgg16-397923af.pth", "vgg16.pth"),
    "alex": ("alexnet-owt-7be5be79.pth", "alexnet.pth"),
}
LIN_FILES: dict[str, tuple[str, ...]] = {
    "vgg": ("vgg.pth", "lpips_vgg.pth"),
    "alex": ("alex.pth", "lpips_alex.pth"),
}
I3D_FILES: tuple[str, ...] = ("i3d_torchscript.pt",)

_noticed: set[str] = set()


class WeightsError(FileNotFoundError):
    """A configured weights file is missing, unreadable or has the wrong keys / shapes."""


@dataclass(frozen=True)
class LPIPSWeights:
    """Local files for one LPIPS network: torchvision backbone + lpips linear heads."""

    net: str
    backbone: Path
    lin: Path


_evaluating = False


@contextlib.contextmanager
def evaluation_only() -> Iterator[None]:
    """Models built inside evaluate, never train: notices about training-only terms say so."""
    global _evaluating
    before, _evaluating = _evaluating, True
    try:
        yield
    finally:
        _evaluating = before


def evaluating() -> bool:
    """True inside `evaluation_only` (eval.py)."""
    return _evaluating


def notice_once(key: str, message: str) -> None:
    """Log ``message`` as a warning the first time ``key`` is seen in this process."""
    if key in _noticed:
        return
    _noticed.add(key)
    log.warning(message)


def reset_notices() -> None:
    """Forget which notices were given (tests)."""
    _noticed.clear()


def _check_net(net: str) -> str:
    if net not in BACKBONE_FILES:
        raise ValueError(f"LPIPS net must be one of {sorted(BACKBONE_FILES)}, got {net!r}")
    return net


def _existing_file(path: str | Path, what: str) -> Path:
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise WeightsError(f"{what}: file {p} does not exist")
    return p


def _find_in_folder(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise WeightsError(f"{what}: none of {list(names)} found in {folder}")


def _env_folder() -> Path | None:
    value = os.environ.get(WEIGHTS_ENV)
    return Path(os.path.expanduser(value)) if value else None


def _lpips_from_folder(folder: Path, net: str) -> LPIPSWeights:
    if not folder.is_dir():
        raise WeightsError(f"LPIPS ({net}) weights folder {folder} does not exist")
    return LPIPSWeights(
        net,
        _find_in_folder(folder, BACKBONE_FILES[net], f"LPIPS {net} backbone"),
        _find_in_folder(folder, LIN_FILES[net], f"LPIPS {net} linear heads"),
    )


def resolve_lpips_weights(
    spec: Any,
    net: str = "vgg",
    *,
    consequence: str = "LPIPS is not computed",
    config_key: str = "model.loss.lpips_weights",
) -> LPIPSWeights | None:
    """Local LPIPS weights for ``net`` ("vgg" | "alex"), or None (after a once-only notice).

    ``spec``: None (look in ``$WAVECAST_WEIGHTS_DIR``), a folder, or a mapping with keys
    ``backbone`` and ``lin``. A spec that is given but wrong raises :class:`WeightsError`
    naming the file; it never falls back to "disabled". ``consequence`` and ``config_key`` only
    shape the notice ("LPIPS disabled: no local weights configured (set <config_key> ...);
    <consequence>").
    """
    net = _check_net(net)
    if spec is None:
        folder = _env_folder()
        if folder is None:
            notice_once(
                f"lpips-{net}-{config_key}",
                f"LPIPS disabled: no local weights configured (set {config_key} "
                f"to a folder with {BACKBONE_FILES[net][0]} and {LIN_FILES[net][0]}, or to "
                f"{{backbone: <file>, lin: <file>}}, or set ${WEIGHTS_ENV}); {consequence}. "
                "Nothing is downloaded.",
            )
            return None
        return _lpips_from_folder(folder, net)
    if isinstance(spec, Mapping) or hasattr(spec, "keys"):
        keys = set(spec.keys())
        if keys != {"backbone", "lin"}:
            raise WeightsError(
                f"LPIPS weights mapping needs exactly the keys 'backbone' and 'lin', got {sorted(keys)}"
            )
        return LPIPSWeights(
            net,
            _existing_file(spec["backbone"], f"LPIPS {net} backbone"),
            _existing_file(spec["lin"], f"LPIPS {net} linear heads"),
        )
    if isinstance(spec, (str, os.PathLike)):
        path = Path(os.path.expanduser(str(spec)))
        if path.is_file():
            raise WeightsError(
                f"LPIPS weights {path} is a single file; give the folder holding "
                f"{BACKBONE_FILES[net][0]} and {LIN_FILES[net][0]}, or {{backbone, lin}}"
            )
        return _lpips_from_folder(path, net)
    raise TypeError(
        f"LPIPS weights spec must be None, a path or a mapping, got {type(spec).__name__}"
    )


def resolve_i3d_weights(path: str | os.PathLike | None = None) -> Path | None:
    """The local TorchScript I3D file for FVD, or None (after a once-only notice).

    An explicit ``path`` that does not exist raises :class:`WeightsError`.
    """
    if path is not None:
        return _existing_file(path, "FVD I3D weights")
    folder = _env_folder()
    if folder is not None:
        for name in I3D_FILES:
            if (folder / name).is_file():
                return folder / name
    notice_once(
        "i3d",
        f"FVD disabled: no local I3D weights configured (give the path of {I3D_FILES[0]} or put "
        f"it in ${WEIGHTS_ENV}). Nothing is downloaded.",
    )
    return None
