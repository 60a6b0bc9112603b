"""LPIPS (Zhang et al. 2018, v0.1 "lin" variant) from local weight files only.

Order of operations (as in the ``lpips`` package and the copy in the reference code):
inputs in [-1, 1] -> scaling layer ``(x - shift) / scale`` -> backbone taps -> unit-normalise each
feature vector over channels (``f / (||f||_2 + 1e-10)``) -> squared difference -> per-layer 1x1
linear head (no bias) -> spatial mean -> sum over the five layers.

Weights: the backbone from a torchvision file (``vgg16-397923af.pth`` / ``alexnet-owt-7be5be79.pth``),
the heads from the ``lpips`` package's ``vgg.pth`` / ``alex.pth`` (keys ``lin0.model.1.weight``
... ``lin4.model.1.weight``, shape ``[1, C_k, 1, 1]``). There is no random-weight fallback: a
missing path is an error here; callers that want "off when absent" go through
:mod:`wavecast.metrics.weights`. The reference's heads have a dropout before the 1x1 conv; it is
an identity here (index 0 of ``model`` is kept so the keys match), so the metric is
deterministic in train mode too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor, nn

from wavecast.metrics.backbones import build_backbone
from wavecast.metrics.weights import LPIPSWeights, WeightsError, resolve_lpips_weights

_LIN_KEY = re.compile(r"^(?:lin(\d)|lins\.(\d))\.model\.(\d)\.weight$")


class ScalingLayer(nn.Module):
    """[-1, 1] input -> the ImageNet-like scaling the lpips heads were trained with."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale


class LinearHead(nn.Module):
    """1x1 conv C -> 1 without bias; ``model.1`` so lpips-format keys load as they are."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def unit_normalize(f: Tensor, eps: float = 1e-10) -> Tensor:
    """Divide each spatial feature vector ``f [N, C, H, W]`` by its L2 norm over C."""
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """Learned perceptual distance; ``forward(x, y) -> [N]``.

    Args:
        net: "alex" (the evaluation standard) or "vgg" (used as a training loss).
        backbone_weights: torchvision weights file of the backbone.
        lin_weights: lpips-package weights file of the five linear heads.

    Raises :class:`WeightsError` when a path is None or a file does not fit (naming the file
    and the keys at fault). The module is frozen (``requires_grad=False``) and stays in eval mode;
    gradients still flow to the inputs, so it can serve as a loss.
    """

    def __init__(
        self,
        net: str = "alex",
        backbone_weights: str | os.PathLike | None = None,
        lin_weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if backbone_weights is None or lin_weights is None:
            raise WeightsError(
                f"LPIPS({net!r}) needs local backbone and linear-head weight files (got "
                f"backbone_weights={backbone_weights!r}, lin_weights={lin_weights!r}); see "
                "wavecast.metrics.weights for where they are looked up"
            )
        self.net_name = net
        self.scaling_layer = ScalingLayer()
        self.net = build_backbone(net)
        self.lins = nn.ModuleList(LinearHead(c) for c in self.net.channels)
        self.net.load_torchvision_file(backbone_weights)
        self.load_lin_file(lin_weights)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_weights(cls, weights: LPIPSWeights) -> LPIPS:
        return cls(weights.net, weights.backbone, weights.lin)

    @classmethod
    def from_config(cls, spec: object = None, net: str = "alex") -> LPIPS | None:
        """Resolve local weights (see :func:`resolve_lpips_weights`); None (said once) if absent."""
        weights = resolve_lpips_weights(
            spec, net, consequence="the LPIPS metric is skipped", config_key="lpips_weights"
        )
        return None if weights is None else cls.from_weights(weights)

    def train(self, mode: bool = True) -> LPIPS:
        # A frozen metric: never switch to training behaviour.
        return super().train(False)

    def load_lin_file(self, path: str | os.PathLike) -> None:
        path = Path(path)
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
            raise WeightsError(f"LPIPS linear-head weights {path}: cannot be read ({e})") from e
        if not isinstance(sd, dict):
            raise WeightsError(f"LPIPS linear-head weights {path}: not a state dict")
        found: dict[int, Tensor] = {}
        for key, value in sd.items():
            m = _LIN_KEY.match(key)
            if m:
                found[int(m.group(1) or m.group(2))] = value
        missing = [f"lin{k}.model.1.weight" for k in range(len(self.lins)) if k not in found]
        if missing:
            raise WeightsError(
                f"LPIPS linear-head weights {path}: missing keys {missing} (file has "
                f"{sorted(sd)[:8]}{' ...' if len(sd) > 8 else ''})"
            )
        for k, head in enumerate(self.lins):
            conv = head.model[1]
            if found[k].shape != conv.weight.shape:
                raise WeightsError(
                    f"LPIPS linear-head weights {path}: lin{k} has shape {tuple(found[k].shape)}, "
                    f"{self.net_name} needs {tuple(conv.weight.shape)} (wrong net for this file?)"
                )
            with torch.no_grad():
                conv.weight.copy_(found[k].to(torch.float32))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """``x, y [N, C, H, W]`` in [-1, 1], C = 3 (or 1, repeated to grey RGB) -> ``[N]``."""
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                f"LPIPS expects two [N, 3 or 1, H, W] tensors of one shape, got {tuple(x.shape)} "
                f"and {tuple(y.shape)}"
            )
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        n = x.shape[0]
        if torch.is_grad_enabled() and x.requires_grad != y.requires_grad:
            # As a loss only one side needs gradients: keep no activations for the other.
            with torch.no_grad():
                fixed = self.net(self.scaling_layer(y if x.requires_grad else x))
            moving = self.net(self.scaling_layer(x if x.requires_grad else y))
            pairs = zip(moving, fixed)
        else:
            # Both images through the backbone in one batch: half the calls, same result.
            feats = self.net(self.scaling_layer(torch.cat([x, y], dim=0)))
            pairs = ((f[:n], f[n:]) for f in feats)
        total = x.new_zeros(n)
        for (fx, fy), head in zip(pairs, self.lins):
            d = (unit_normalize(fx) - unit_normalize(fy)).pow(2)
            total = total + head(d).mean(dim=(1, 2, 3))
        return total

    @torch.no_grad()
    def video(self, x: Tensor, y: Tensor, frames_per_call: int = 32) -> Tensor:
        """Per-frame LPIPS of videos ``[B, C, T, H, W]`` -> ``[B, T]`` (no gradients)."""
        if x.shape != y.shape or x.dim() != 5:
            raise ValueError(
                f"LPIPS.video expects two [B, C, T, H, W] tensors of one shape, got "
                f"{tuple(x.shape)} and {tuple(y.shape)}"
            )
        b = x.shape[0]
        xf = rearrange(x, "b c t h w -> (b t) c h w")
        yf = rearrange(y, "b c t h w -> (b t) c h w")
        out = torch.cat(
            [self(xf[i : i + frames_per_call], yf[i : i + frames_per_call])
             for i in range(0, xf.shape[0], frames_per_call)]
        )  # fmt: skip
        return out.view(b, -1)
