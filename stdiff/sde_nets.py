"""Drift and diffusion nets of the motion SDE, and the torchsde-facing :class:`MotionSDE`.

Both nets are small autonomous conv nets on the motion state ``[N, M, h, w]``:
Conv3x3, ``n_layers`` x [nonlinearity, Conv3x3], nonlinearity, zero-initialised Conv3x3.
The zero init makes the first prediction equal the context. The diffusion is further squashed
by ``tanh``. torchsde integrates the flat state ``[N, M*h*w]`` (``(M, h, w)`` row-major).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NOISE_TYPES = ("diagonal",)
SDE_TYPES = ("stratonovich", "ito")
_NONLINEARITIES = {"tanh": torch.tanh}


class SDEConvNet(nn.Module):
    """``[N, M, h, w] -> [N, M, h, w]``; ``convs.0`` .. ``convs.{n_layers+1}`` (the last is zero-init)."""

    def __init__(self, channels: int, n_layers: int = 2, nonlinearity: str = "tanh") -> None:
        super().__init__()
        if nonlinearity not in _NONLINEARITIES:
            raise ValueError(
                f"SDE net: nonlinearity {nonlinearity!r} not supported; use one of "
                f"{sorted(_NONLINEARITIES)}"
            )
        self.channels = channels
        self.act = _NONLINEARITIES[nonlinearity]
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in range(n_layers + 2)
        )
        nn.init.zeros_(self.convs[-1].weight)
        nn.init.zeros_(self.convs[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.convs[0](x)
        for conv in self.convs[1:]:
            x = conv(self.act(x))
        return x


class DriftNet(SDEConvNet):
    """Drift ``f(x)`` of the motion SDE (time-independent)."""


class DiffusionNet(SDEConvNet):
    """Diagonal diffusion ``g(x) = tanh(net(x))`` of the motion SDE (time-independent)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(super().forward(x))


class MotionSDE(nn.Module):
    """Drift and (unless ``sde=False``) diffusion nets with torchsde's ``noise_type`` and
    ``sde_type``; :meth:`flat` gives the view torchsde integrates.

    ``sde=False`` builds no diffusion net: an ODE on the drift (torchsde then integrates it
    with zero diffusion).
    """

    def __init__(
        self,
        channels: int,
        n_layers: int = 2,
        nonlinearity: str = "tanh",
        sde: bool = True,
        noise_type: str = "diagonal",
        sde_type: str = "stratonovich",
    ) -> None:
        super().__init__()
        if noise_type not in NOISE_TYPES:
            raise ValueError(
                f"MotionSDE: noise_type {noise_type!r} not supported (the conv diffusion net is "
                f"elementwise: use one of {NOISE_TYPES})"
            )
        if sde_type not in SDE_TYPES:
            raise ValueError(f"MotionSDE: sde_type {sde_type!r} not in {SDE_TYPES}")
        self.noise_type = noise_type
        self.sde_type = sde_type
        self.drift = DriftNet(channels, n_layers, nonlinearity)
        self.diffusion = DiffusionNet(channels, n_layers, nonlinearity) if sde else None

    def flat(
        self,
        state_shape: tuple[int, int, int],
        drift_only: bool = False,
        compute_dtype: torch.dtype = torch.float32,
    ) -> FlatMotionSDE:
        """torchsde's view for states of shape ``(M, h, w)``; ``drift_only`` zeroes the diffusion;
        ``compute_dtype`` bfloat16 evaluates the nets under bf16 autocast (see FlatMotionSDE)."""
        return FlatMotionSDE(self, state_shape, drift_only, compute_dtype)


class FlatMotionSDE(nn.Module):
    """``f(t, y)``, ``g(t, y)`` on the flat state ``y [N, M*h*w]`` (``(M, h, w)`` row-major) for
    one integration. A separate object per call: torchsde's adjoint calls f and g again in
    backward, so shape and drift-only flag must not be shared mutable state of the model.

    ``compute_dtype`` bfloat16: the drift and diffusion nets run under bf16 autocast (their
    convs in bf16; the TDE's forward + backward 2.7-2.8x faster on a CPU with bf16 units at the
    kitti_range state, 256 x 16 x 128), in the forward solve and in the adjoint's; the state, the
    Brownian increments and the solver's sums stay float32, as weights and optimiser state do in
    mixed-precision training.
    float32 (the default) is the published arithmetic.
    """

    def __init__(
        self,
        sde: MotionSDE,
        state_shape: tuple[int, int, int],
        drift_only: bool,
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if compute_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(
                f"FlatMotionSDE: compute_dtype must be torch.float32 or torch.bfloat16, got "
                f"{compute_dtype}"
            )
        self.compute_dtype = compute_dtype
        self.sde = sde
        self.noise_type = sde.noise_type
        self.sde_type = sde.sde_type
        self.state_shape = tuple(state_shape)
        self.drift_only = drift_only or sde.diffusion is None

    def _unflat(self, y: Tensor, net: nn.Module) -> Tensor:
        # Channels-last: oneDNN's kernels for these small 3x3 convs run ~1.3x faster (forward
        # and backward, measured at 64 channels x 16 x 32) than on the row-major view, which
        # is worth the two small copies. The flat layout (and so which Brownian increment
        # drives which element) stays (M, h, w) row-major.
        x = y.view(y.shape[0], *self.state_shape).to(net.convs[0].weight.dtype)
        return x.contiguous(memory_format=torch.channels_last)

    def _autocast(self, y: Tensor):
        """bf16 autocast around a net evaluation when ``compute_dtype`` is bfloat16; else off
        (the caller's autocast never reaches the SDE: TDE.integrate turns it off)."""
        bf16 = self.compute_dtype == torch.bfloat16
        return torch.autocast(y.device.type, dtype=torch.bfloat16, enabled=bf16)

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        """Drift; ``t`` is ignored (autonomous)."""
        with self._autocast(y):
            return self.sde.drift(self._unflat(y, self.sde.drift)).flatten(1).to(y.dtype)

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        """Diagonal diffusion; zeros in ODE / drift-only mode."""
        if self.drift_only:
            return torch.zeros_like(y)
        net = self.sde.diffusion
        with self._autocast(y):
            return net(self._unflat(y, net)).flatten(1).to(y.dtype)

    def f_and_g(self, t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Drift and diffusion at the same state, both nets in one pass: their first convs
        share the input (one conv with the output channels stacked), the later ones run as one
        two-group conv. Half the conv calls of ``f`` then ``g`` for the same arithmetic; the
        solver's first evaluation of every step (``f_and_g_prod``) and the adjoint's
        evaluations take this path."""
        if self.drift_only:
            return self.f(t, y), torch.zeros_like(y)
        with self._autocast(y):
            return self._f_and_g(y)

    def _f_and_g(self, y: Tensor) -> tuple[Tensor, Tensor]:
        drift, diffusion = self.sde.drift, self.sde.diffusion
        x = self._unflat(y, drift)
        pairs = list(zip(drift.convs, diffusion.convs))
        first_d, first_g = pairs[0]
        x = F.conv2d(
            x,
            torch.cat((first_d.weight, first_g.weight)),
            torch.cat((first_d.bias, first_g.bias)),
            padding=1,
        )
        for conv_d, conv_g in pairs[1:]:
            x = F.conv2d(
                drift.act(x),
                torch.cat((conv_d.weight, conv_g.weight)),
                torch.cat((conv_d.bias, conv_g.bias)),
                padding=1,
                groups=2,
            )
        f, g = x.chunk(2, dim=1)
        return f.flatten(1).to(y.dtype), torch.tanh(g).flatten(1).to(y.dtype)

    def f_and_g_prod(self, t: Tensor, y: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Drift and diffusion times the Brownian increment ``v`` (diagonal noise)."""
        f, g = self.f_and_g(t, y)
        return f, g * v
