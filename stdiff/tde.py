"""TemporalDynamicsEncoder (TDE): motion encoder + ConvGRU context + neural SDE with torchsde.

``context_encode``: the ConvGRU state starts at zero and takes one update per encoded
(difference) image in time order. ``future_predict``: torchsde integrates the flat context
from ``t_last_observed`` over the requested (possibly irregular, fractional) future times and
the start state is dropped. Every call draws a fresh Brownian path; its entropy comes from
``generator`` (or torch's global RNG), so seeding torch makes the motion reproducible.
"""

from __future__ import annotations

import torch
import torchsde
from torch import Tensor, nn

from stdiff.conv_gru import ConvGRUCell
from stdiff.intra_op_threads import enter_in_backward, intra_op_threads, leave_in_backward
from stdiff.motion_encoder import MotionEncoder
from stdiff.sde_nets import MotionSDE

# torchsde solvers by the calculus they integrate (torchsde raises late, at the first call).
_STRATONOVICH_ONLY = {"euler_heun", "heun", "midpoint", "reversible_heun", "log_ode"}
_ITO_ONLY = {"euler"}
_METHODS = _STRATONOVICH_ONLY | _ITO_ONLY | {"milstein", "srk"}
_LEVY_AREA = {"srk": "space-time", "log_ode": "foster"}


def _check_times(ts: Tensor, what: str) -> None:
    if ts.dim() != 1 or ts.numel() < 2:
        raise ValueError(f"TDE: {what} must be a 1-D tensor of >= 2 times, got {tuple(ts.shape)}")
    if not bool((ts[1:] > ts[:-1]).all()):
        raise ValueError(
            f"TDE: {what} must be strictly increasing (future times after the last observed "
            f"time), got {ts.tolist()}"
        )


class TemporalDynamicsEncoder(nn.Module):
    """Predicts motion features ``[Tp, N, M, h, w]`` at future times from observed frames.

    ``M = model_channels * 2**n_downs``, ``h, w = H / 2**n_downs, W / 2**n_downs``.
    Integration options go straight to torchsde: ``method``, ``noise_type``, ``sde_type``,
    fixed ``dt`` (or ``adaptive`` with ``rtol``/``atol``/``dt_min``), ``adjoint``
    (``sdeint_adjoint``, with ``adjoint_method``; ``reversible_heun`` defaults to its exact
    adjoint ``adjoint_reversible_heun``). ``sde=False`` builds no diffusion net and integrates
    the drift alone (torchsde with zero diffusion). ``ode_between_observations`` (off in the
    published model, which ignores ``idx_o``) advances the ConvGRU state with the drift between
    consecutive observation times before each update. ``sde_compute_dtype`` "bfloat16" runs the
    drift / diffusion nets under bf16 autocast, the state and solver in float32 (opt-in; the
    published arithmetic is "float32"). ``sde_threads`` runs the solve, forward and backward,
    on that many intra-op threads (None: the process's setting); small states solve faster on
    fewer threads (stdiff.intra_op_threads).
    """

    def __init__(
        self,
        in_channels: int = 1,
        model_channels: int = 64,
        n_downs: int = 2,
        learn_diff_image: bool = True,
        n_layers: int = 2,
        nonlinearity: str = "tanh",
        sde: bool = True,
        method: str = "euler_heun",
        noise_type: str = "diagonal",
        sde_type: str = "stratonovich",
        dt: float = 0.1,
        adaptive: bool = False,
        rtol: float = 1e-3,
        atol: float = 1e-3,
        dt_min: float = 1e-5,
        adjoint: bool = True,
        adjoint_method: str | None = None,
        ode_between_observations: bool = False,
        sde_compute_dtype: str = "float32",
        sde_threads: int | None = None,
    ) -> None:
        super().__init__()
        if method not in _METHODS:
            raise ValueError(f"TDE: method {method!r} is not a torchsde method {sorted(_METHODS)}")
        if (method in _STRATONOVICH_ONLY and sde_type != "stratonovich") or (
            method in _ITO_ONLY and sde_type != "ito"
        ):
            raise ValueError(f"TDE: method {method!r} does not integrate sde_type {sde_type!r}")
        if adjoint_method is None and method == "reversible_heun":
            adjoint_method = "adjoint_reversible_heun"
        if adjoint_method == "adjoint_reversible_heun" and method != "reversible_heun":
            raise ValueError(
                "TDE: adjoint_method 'adjoint_reversible_heun' needs method 'reversible_heun'"
            )
        if dt <= 0:
            raise ValueError(f"TDE: dt must be > 0, got {dt}")
        if sde_threads is not None and (
            not isinstance(sde_threads, int) or isinstance(sde_threads, bool) or sde_threads < 1
        ):
            raise ValueError(f"TDE: sde_threads must be None or an int >= 1, got {sde_threads!r}")
        if sde_compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"TDE: sde_compute_dtype must be 'float32' or 'bfloat16', got {sde_compute_dtype!r}"
            )
        self.motion_encoder = MotionEncoder(in_channels, model_channels, n_downs, learn_diff_image)
        m = self.motion_encoder.out_channels
        self.motion_channels = m
        self.context_gru = ConvGRUCell(m, m, kernel_size=3)
        self.motion_sde = MotionSDE(m, n_layers, nonlinearity, sde, noise_type, sde_type)
        self.sde = sde
        self.method = method
        self.dt = float(dt)
        self.adaptive = bool(adaptive)
        self.rtol = float(rtol)
        self.atol = float(atol)
        self.dt_min = float(dt_min)
        self.adjoint = adjoint
        self.adjoint_method = adjoint_method
        self.ode_between_observations = ode_between_observations
        self.sde_compute_dtype = getattr(torch, sde_compute_dtype)
        self.sde_threads = sde_threads

    # ------------------------------------------------------------------ context
    def context_encode(self, Vo: Tensor, idx_o: Tensor) -> Tensor:
        """Observed frames ``[N, To, C, H, W]`` at times ``idx_o [To]`` -> context ``[N, M, h, w]``."""
        if Vo.dim() != 5:
            raise ValueError(f"TDE: Vo must be [N, To, C, H, W], got {tuple(Vo.shape)}")
        if idx_o.dim() != 1 or idx_o.numel() != Vo.shape[1]:
            raise ValueError(
                f"TDE: idx_o must have To={Vo.shape[1]} entries, got shape {tuple(idx_o.shape)}"
            )
        feats = self.motion_encoder.encode_sequence(Vo)  # [N, T', M, h, w]
        # A difference image is known at the later of its two frames.
        times = idx_o[1:] if self.motion_encoder.learn_diff_image else idx_o
        h = feats.new_zeros(feats.shape[0], *feats.shape[2:])
        for i in range(feats.shape[1]):
            if self.ode_between_observations and i > 0:
                h = self.integrate(h, times[i - 1 : i + 1], drift_only=True)[-1]
            h = self.context_gru(feats[:, i], h)
        return h

    # ------------------------------------------------------------------ SDE
    def brownian(
        self, ts: Tensor, state: Tensor, generator: torch.Generator | None = None
    ) -> torchsde.BrownianInterval:
        """A fresh Brownian path over ``[ts[0], ts[-1]]`` for the flat state ``[B, D]``.

        The entropy is drawn from ``generator`` (or torch's global RNG), so it is reproducible
        under ``torch.manual_seed`` / a seeded generator and different on every call.
        """
        dev = generator.device if generator is not None else torch.device("cpu")
        entropy = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=dev).item())
        return torchsde.BrownianInterval(
            t0=ts[0],
            t1=ts[-1],
            size=tuple(state.shape),
            dtype=state.dtype,
            device=state.device,
            entropy=entropy,
            levy_area_approximation=_LEVY_AREA.get(self.method, "none"),
        )

    def integrate(
        self,
        y0: Tensor,
        ts: Tensor,
        *,
        generator: torch.Generator | None = None,
        bm: torchsde.BrownianInterval | None = None,
        drift_only: bool = False,
    ) -> Tensor:
        """Integrate the motion SDE from ``y0 [B, M, h, w]`` at ``ts[0]``; returns the states
        at ``ts[1:]``: ``[T-1, B, M, h, w]``.

        ``ts`` is cast to float32 (the reference's time grid: float32 steps of ``dt``, output
        times linearly interpolated). ``bm`` replaces the fresh Brownian path (shape
        ``[B, M*h*w]``); ``drift_only`` integrates with zero diffusion, keeping the weights.
        """
        ts = ts.to(device=y0.device, dtype=torch.float32)
        _check_times(ts, "integration times")
        state = y0.float().reshape(y0.shape[0], -1)
        if bm is None:
            bm = self.brownian(ts, state, generator)
        elif tuple(bm.shape) != tuple(state.shape):
            raise ValueError(
                f"TDE: Brownian motion shape {tuple(bm.shape)} != state shape {tuple(state.shape)}"
            )
        drift_only = drift_only or not self.sde
        sde = self.motion_sde.flat(tuple(y0.shape[1:]), drift_only, self.sde_compute_dtype)
        kwargs = dict(
            method=self.method,
            dt=self.dt,
            adaptive=self.adaptive,
            rtol=self.rtol,
            atol=self.atol,
            dt_min=self.dt_min,
            bm=bm,
        )
        # The caller's autocast stops here: the state, the Brownian increments and the solver's
        # sums stay float32 (rounding would accumulate over the steps); sde_compute_dtype
        # decides the nets' precision (FlatMotionSDE).
        n = self.sde_threads
        state = leave_in_backward(state, n)
        with torch.autocast(y0.device.type, enabled=False), intra_op_threads(n):
            ys = self._solve(sde, state, ts, drift_only, kwargs)
        ys = enter_in_backward(ys, n)
        return ys[1:].reshape(ts.numel() - 1, *y0.shape).to(y0.dtype)

    def _solve(self, sde, state: Tensor, ts: Tensor, drift_only: bool, kwargs: dict) -> Tensor:
        if self.adjoint:
            nets = self.motion_sde.drift if drift_only else self.motion_sde
            return torchsde.sdeint_adjoint(
                sde,
                state,
                ts,
                adjoint_method=self.adjoint_method,
                adjoint_params=tuple(nets.parameters()),
                **kwargs,
            )
        return torchsde.sdeint(sde, state, ts, **kwargs)

    def future_predict(
        self,
        context: Tensor,
        ts: Tensor,
        *,
        generator: torch.Generator | None = None,
        bm: torchsde.BrownianInterval | None = None,
        drift_only: bool = False,
    ) -> Tensor:
        """Context ``[N, M, h, w]`` at ``ts[0]`` -> motion ``[T-1, N, M, h, w]`` at ``ts[1:]``."""
        return self.integrate(context, ts, generator=generator, bm=bm, drift_only=drift_only)

    def forward(
        self,
        Vo: Tensor,
        idx_o: Tensor,
        idx_p: Tensor,
        *,
        generator: torch.Generator | None = None,
        bm: torchsde.BrownianInterval | None = None,
        drift_only: bool = False,
    ) -> Tensor:
        """``Vo [N, To, C, H, W]``, ``idx_o [To]``, ``idx_p [Tp]`` -> ``m_future [Tp, N, M, h, w]``."""
        if idx_p.dim() != 1 or idx_p.numel() < 1:
            raise ValueError(f"TDE: idx_p must be a non-empty 1-D tensor, got {tuple(idx_p.shape)}")
        context = self.context_encode(Vo, idx_o)
        ts = torch.cat([idx_o[-1:].to(idx_p.dtype), idx_p]).to(context.device)
        return self.future_predict(context, ts, generator=generator, bm=bm, drift_only=drift_only)
