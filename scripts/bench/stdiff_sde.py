"""Section ``stdiff_sde`` (only when named): the TDE alone (context encoding + the motion SDE,
forward + backward) at the kitti_range and reduced sizes, with the SDE's nets in float32 (the
published arithmetic) and in bf16 (``sde_compute_dtype: bfloat16``), on the process's threads
and on one (``@1``: ``sde_threads: 1``), SDE adjoint on and off; and what bf16 costs
numerically: the motion path and the SDE nets' gradient against all-fp32.

Time: channels-last model under the mode's autocast (bf16 for the bf16 modes), one warm-up
call, best of ``--repeats``. Numerics: random SDE weights (the published init zeroes
the nets' last convs, which would hide any difference), the same context and Brownian path,
30 Euler-Heun steps from t = 2 to 5; relative L2 error of the path and of the gradient of its
mean square, for bf16 autocast around the SDE's fp32 nets (what autocast alone changes: the
context) and with the nets in bf16 too.
"""

from __future__ import annotations

import os

from scripts.bench.harness import Context, emit, in_process, set_threads, timeit
from scripts.bench.stdiff import (
    STDIFF_SIZES,
    autocast,
    benchmark_clip,
    stdiff_model,
    stdiff_threads,
)

#: (config, mode) of the timed cases, each with the SDE adjoint on and off.
TIME_CASES = (
    ("kitti_range", "bf16_cl"),
    ("kitti_range", "bf16sde_cl"),
    ("kitti_range", "bf16sde_cl@1"),
    ("reduced", "fp32_cl"),
    ("reduced", "fp32_cl@1"),
    ("reduced", "bf16sde_cl"),
    ("reduced", "bf16sde_cl@1"),
)


def _inputs(config: str):
    vo, _, idx_o, idx_p = benchmark_clip(*STDIFF_SIZES[config])
    return vo, idx_o, idx_p


def tde_time_case(config: str, mode: str, adjoint: bool, threads: int, repeats: int) -> dict:
    """TDE forward + backward (a mean-square loss on the motion) in a fresh process."""
    import torch

    set_threads(threads)
    model = stdiff_model(config, mode, adjoint=adjoint)
    vo, idx_o, idx_p = _inputs(config)

    def call():
        model.zero_grad(set_to_none=True)
        with autocast(mode):
            m = model.tde(vo, idx_o, idx_p, generator=torch.Generator().manual_seed(1))
        m.float().square().mean().backward()

    return {
        "config": config,
        "mode": mode,
        "adjoint": adjoint,
        "tde_forward_backward_s": timeit(call, repeats),
        "loadavg": os.getloadavg(),
    }


def tde_numerics_case(config: str, threads: int) -> dict:
    """Relative errors of the motion path and gradient against all-fp32 (see the docstring)."""
    import torch

    set_threads(threads)
    vo, idx_o, _ = _inputs(config)
    ts = torch.tensor([2.0, 3.0, 4.0, 5.0])
    runs = {}
    for mode in ("fp32", "bf16_cl", "bf16sde_cl"):
        model = stdiff_model(config, mode, adjoint=False)
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for p in model.tde.motion_sde.parameters():
                scale = p[0].numel() ** -0.5 if p.dim() > 1 else 0.1
                p.copy_(torch.randn(p.shape, generator=g) * scale)
            with autocast(mode):
                context = model.tde.context_encode(vo, idx_o).float()
        path = model.tde.integrate(context, ts, generator=torch.Generator().manual_seed(0))
        path.square().mean().backward()
        grad = torch.cat([p.grad.flatten() for p in model.tde.motion_sde.parameters()])
        runs[mode] = (path.detach(), grad)

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    ref_path, ref_grad = runs["fp32"]
    out = {"config": config, "solver_steps": 30}
    for mode, name in (("bf16_cl", "autocast_fp32_sde"), ("bf16sde_cl", "bf16_sde")):
        out[f"{name}_path_rel_err"] = rel(runs[mode][0], ref_path)
        out[f"{name}_grad_rel_err"] = rel(runs[mode][1], ref_grad)
    return out


def run(ctx: Context) -> dict:
    n = stdiff_threads(ctx)[0]
    rows = []
    for config, mode in TIME_CASES:
        for adjoint in (True, False):
            case = (config, mode, adjoint, n, ctx.args.repeats)
            rows.append(emit(in_process(tde_time_case, *case)))
    numerics = emit(in_process(tde_numerics_case, "kitti_range", n))
    return {"stdiff_sde": rows, "stdiff_sde_numerics": numerics}
