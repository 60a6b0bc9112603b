"""ConvGRU cell: the recurrent context encoder of the temporal dynamics encoder."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvGRUCell(nn.Module):
    """One ConvGRU update ``(x [N, C_in, h, w], h [N, C_h, h, w]) -> h' [N, C_h, h, w]``.

    ``u, r = sigmoid(gate_conv([x, h]))`` (u first); ``h~ = tanh(candidate_conv([x, r*h]))``;
    ``h' = (1 - u) * h + h~``. The candidate is deliberately *not* scaled by ``u``: that is
    the published STDiff rule, which trained checkpoints depend on.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        pad = kernel_size // 2
        cat = in_channels + hidden_channels
        self.gate_conv = nn.Conv2d(cat, 2 * hidden_channels, kernel_size, padding=pad)
        self.candidate_conv = nn.Conv2d(cat, hidden_channels, kernel_size, padding=pad)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        if x.shape[1] != self.in_channels or h.shape[1] != self.hidden_channels:
            raise ValueError(
                f"ConvGRUCell: expected input [N, {self.in_channels}, h, w] and state "
                f"[N, {self.hidden_channels}, h, w], got {tuple(x.shape)} and {tuple(h.shape)}"
            )
        gates = torch.sigmoid(self.gate_conv(torch.cat((x, h), dim=1)))
        u, r = gates.split(self.hidden_channels, dim=1)
        h_new = torch.tanh(self.candidate_conv(torch.cat((x, r * h), dim=1)))
        return torch.addcmul(h_new, 1 - u, h)
