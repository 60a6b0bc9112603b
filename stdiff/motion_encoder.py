"""MotionEncoder: the CNN that turns observed frames (or their differences) into motion features.

Conv5x5 (C -> ch), ReLU, then ``n_downs - 1`` times [MaxPool2, Conv5x5 (ch -> 2ch), ReLU], then
MaxPool2, Conv7x7 (ch -> 2ch), ReLU: ``model_channels * 2**n_downs`` channels at
``H / 2**n_downs x W / 2**n_downs`` (from the MCnet motion encoder, as in STDiff).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MotionEncoder(nn.Module):
    """``[B, C, H, W] -> [B, model_channels * 2**n_downs, H / 2**n_downs, W / 2**n_downs]``.

    With ``learn_diff_image`` (the STDiff default) :meth:`encode_sequence` encodes the To-1
    differences of consecutive observed frames (values in [-2, 2]) instead of the frames.
    """

    def __init__(
        self,
        in_channels: int = 1,
        model_channels: int = 64,
        n_downs: int = 2,
        learn_diff_image: bool = True,
    ) -> None:
        super().__init__()
        if n_downs < 1:
            raise ValueError(f"MotionEncoder: n_downs must be >= 1, got {n_downs}")
        self.in_channels = in_channels
        self.n_downs = n_downs
        self.learn_diff_image = learn_diff_image
        ch = model_channels
        convs = [nn.Conv2d(in_channels, ch, 5, padding=2)]
        for _ in range(n_downs - 1):
            convs.append(nn.Conv2d(ch, ch * 2, 5, padding=2))
            ch *= 2
        convs.append(nn.Conv2d(ch, ch * 2, 7, padding=3))
        self.convs = nn.ModuleList(convs)
        self.out_channels = ch * 2

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, M, H / 2**n_downs, W / 2**n_downs]``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"MotionEncoder: expected [B, {self.in_channels}, H, W], got {tuple(x.shape)}"
            )
        factor = 2**self.n_downs
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"MotionEncoder: frame size {tuple(x.shape[-2:])} must be divisible by "
                f"2**n_downs = {factor}"
            )
        x = F.relu(self.convs[0](x))
        for conv in self.convs[1:]:
            x = F.relu(conv(F.max_pool2d(x, 2)))
        return x

    def encode_sequence(self, frames: Tensor) -> Tensor:
        """Observed clip ``[N, To, C, H, W] -> [N, T', M, h, w]`` with ``T' = To - 1`` in
        difference mode (needs To >= 2), else ``T' = To``."""
        if frames.dim() != 5:
            raise ValueError(
                f"MotionEncoder: expected Vo [N, To, C, H, W], got {tuple(frames.shape)}"
            )
        if self.learn_diff_image:
            if frames.shape[1] < 2:
                raise ValueError(
                    f"MotionEncoder: difference images need To >= 2 observed frames, got "
                    f"{frames.shape[1]}"
                )
            frames = frames[:, 1:] - frames[:, :-1]
        n, t = frames.shape[:2]
        feats = self(frames.flatten(0, 1))
        return feats.unflatten(0, (n, t))
