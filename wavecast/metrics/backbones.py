"""VGG16 and AlexNet convolutional feature stacks, laid out exactly like torchvision's.

Why hand-written: torchvision does not import with the CPU torch this project uses, yet LPIPS
needs only the ``features`` part of these two classifiers. The module indices here equal
torchvision's ``vgg16().features`` / ``alexnet().features``, so their state dicts share keys
(``0.weight``, ``0.bias``, ``2.weight``, ...) and a torchvision weights file loads directly
(full-model files with ``features.``/``classifier.`` keys are accepted too).

``forward`` returns the activations LPIPS taps (after the ReLU at the end of each slice).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from wavecast.metrics.weights import WeightsError

# torchvision's VGG "D" configuration (VGG16); "M" = 2x2 max-pool.
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class FeatureBackbone(nn.Module):
    """A torchvision-compatible ``features`` stack that returns the LPIPS taps.

    ``layers`` is indexed like torchvision; ``taps`` are the indices whose outputs are
    returned; ``channels`` their channel counts.
    """

    def __init__(
        self, name: str, layers: list[nn.Module], taps: tuple[int, ...], channels: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.name = name
        self.layers = nn.Sequential(*layers)
        self.taps = taps
        self.channels = channels

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x [N, 3, H, W]`` (already LPIPS-scaled) -> one ``[N, C_k, H_k, W_k]`` per tap."""
        feats = []
        last = self.taps[-1]
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.taps:
                feats.append(x)
            if i == last:
                break
        return feats

    # state_dict keys are "0.weight" ... like torchvision's `features`, not "layers.0.weight".
    def torchvision_state_dict(self) -> dict[str, Tensor]:
        return {k.removeprefix("layers."): v for k, v in self.state_dict().items()}

    def load_torchvision_file(self, path: str | Path) -> None:
        """Load a torchvision weights file (full model or ``features`` only).

        Raises :class:`WeightsError` naming the file and the missing / mismatched keys.
        """
        path = Path(path)
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
            raise WeightsError(f"{self.name} backbone weights {path}: cannot be read ({e})") from e
        if not isinstance(sd, dict):
            raise WeightsError(f"{self.name} backbone weights {path}: not a state dict")
        if "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if any(k.startswith("features.") for k in sd):
            sd = {
                k.removeprefix("features."): v for k, v in sd.items() if k.startswith("features.")
            }
        ours = self.torchvision_state_dict()
        missing = sorted(set(ours) - set(sd), key=_natural)
        unexpected = sorted(set(sd) - set(ours) - _classifier_keys(sd), key=_natural)
        if missing or unexpected:
            raise WeightsError(
                f"{self.name} backbone weights {path} do not match torchvision's "
                f"{self.name}().features: missing keys {missing}, unexpected keys {unexpected}"
            )
        bad = [
            f"{k}: file {tuple(sd[k].shape)} vs {tuple(v.shape)}"
            for k, v in ours.items()
            if sd[k].shape != v.shape
        ]
        if bad:
            raise WeightsError(f"{self.name} backbone weights {path}: shape mismatch: {bad}")
        self.layers.load_state_dict({k: sd[k].to(torch.float32) for k in ours})


def _classifier_keys(sd: dict) -> set[str]:
    return {k for k in sd if k.startswith("classifier.")}


def _natural(key: str) -> tuple[int, str]:
    head = key.split(".", 1)[0]
    return (int(head), key) if head.isdigit() else (10**6, key)


def vgg16_features() -> FeatureBackbone:
    """VGG16 features; taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (indices 3, 8, 15, 22, 29)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = int(v)
    return FeatureBackbone("vgg16", layers, (3, 8, 15, 22, 29), (64, 128, 256, 512, 512))


def alexnet_features() -> FeatureBackbone:
    """AlexNet features (torchvision's one-weird-trick variant); taps after each of the 5 ReLUs."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    ]
    return FeatureBackbone("alexnet", layers, (1, 4, 7, 9, 11), (64, 192, 384, 256, 256))


BACKBONES = {"vgg": vgg16_features, "alex": alexnet_features}


def build_backbone(net: str) -> FeatureBackbone:
    """``net``: "vgg" (VGG16) or "alex" (AlexNet), with PyTorch's default (random) init: call
    :meth:`FeatureBackbone.load_torchvision_file` before using it as a metric."""
    if net not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {net!r}")
    return BACKBONES[net]()
