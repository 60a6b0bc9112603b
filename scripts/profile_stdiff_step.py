"""Where the time of one STDiff training step goes (torch.profiler), before changing any code.

    OMP_NUM_THREADS=1 python scripts/profile_stdiff_step.py                  # reduced, adjoint on/off
    python scripts/profile_stdiff_step.py --threads 1 2 --out profile.json

One training step of the reduced configuration (64 x 128, batch 1, 3 -> 3 frames, AdamW,
gradient clipping; the step of scripts/bench/stdiff_train.py; fp32 or ``--mode bf16_cl``), SDE adjoint on (as published)
and off, after one warm-up step, each in a fresh process. Every op's self time is put in one
group, so the shares add up to the profiled step:

- ``sde_solver``: everything inside torchsde (``sdeint`` / ``sdeint_adjoint`` and the Brownian
  path, wrapped in ``record_function`` ranges here) and the backward of what ran there (the
  adjoint's backward solve; without the adjoint, the autograd nodes whose forward op ran inside
  the solver, matched by sequence number), its ops and its Python overhead alike;
- ``optimizer``: gradient clipping and AdamW's step;
- the rest by the outermost aten op an op's time falls under: ``conv_forward``,
  ``conv_backward``, ``attention`` (SDPA forward / backward), ``group_norm`` (forward /
  backward), ``elementwise_copies`` (pointwise ops, casts, copies, cat, fills), ``other``
  (matmuls, reductions, random numbers, and the time outside any aten op: Python, autograd
  engine, ``record_function`` overhead).

Also: the SDE solver's share split the same way (with its Python / autograd overhead), the
share of the SPADE modules (forward + backward, marked the same way), the top ops and the
step's wall time with and without the profiler. The machine may be loaded: the shares are what
to read, not the seconds; the load average is recorded. No model code is changed: the ranges
come from wrappers around torchsde's entry points and forward hooks on the SPADE modules.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GROUPS = (
    "conv_forward",
    "conv_backward",
    "attention",
    "group_norm",
    "sde_solver",
    "elementwise_copies",
    "optimizer",
    "other",
)
SDE, SPADE, OPTIMIZER, MODEL = "sde_solver", "spade", "optimizer", "model"
_OTHER_OPS = (
    "mm",
    "addmm",
    "bmm",
    "matmul",
    "linear",
    "sum",
    "mean",
    "norm",
    "linalg_vector_norm",
    "_foreach_norm",
    "max",
    "min",
    "amax",
    "var_mean",
    "randn",
    "normal_",
    "randint",
    "random_",
    "uniform_",
    "item",
    "_local_scalar_dense",
    "allclose",
    "isclose",
    "all",
    "any",
)


def op_kind(name: str | None) -> str:
    """The group of an op's time by its outermost aten op (None: outside any aten op)."""
    if name is None:
        return "python_autograd_overhead"
    op = name.removeprefix("aten::")
    if op == "convolution_backward":
        return "conv_backward"
    if op.startswith("conv") or "convolution" in op:
        return "conv_forward"
    if "scaled_dot_product" in op or "flash_attention" in op or "efficient_attention" in op:
        return "attention"
    if "group_norm" in op:
        return "group_norm"
    if op in _OTHER_OPS:
        return "other_ops"
    return "elementwise_copies"


@contextlib.contextmanager
def marked_regions(model: Any):
    """``record_function`` ranges: ``sde_solver`` around torchsde's entry points (as
    stdiff.tde calls them) and ``spade`` around every SPADE module's forward."""
    import torch
    import torchsde
    from torch.autograd.profiler import record_function

    from stdiff.spade import SPADE as SPADEModule

    def wrap(fn):
        def wrapper(*args, **kwargs):
            with record_function(SDE):
                return fn(*args, **kwargs)

        return wrapper

    saved = {n: getattr(torchsde, n) for n in ("sdeint", "sdeint_adjoint", "BrownianInterval")}
    for n, fn in saved.items():
        setattr(torchsde, n, wrap(fn))
    handles, open_ranges = [], {}

    def pre(module, args):
        rf = record_function(SPADE)
        rf.__enter__()
        open_ranges[id(module)] = rf

    def post(module, args, out):
        open_ranges.pop(id(module)).__exit__(None, None, None)

    for m in model.modules():
        if isinstance(m, SPADEModule):
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(torchsde, n, fn)
        for h in handles:
            h.remove()
        assert torch is not None


def attribute(events: list, step_name: str) -> dict:
    """Self time (us) of every event under the ``step_name`` range by (region, kind), and the
    top aten ops. Backward nodes inherit the region of their forward op (sequence number);
    the adjoint's backward node (``...Sdeint...Backward``) is the SDE's."""
    step = next(e for e in events if e.name == step_name)
    parent: dict[int, Any] = {}
    for e in events:
        parent[id(e)] = e.cpu_parent

    def chain(e):
        while e is not None:
            yield e
            e = parent.get(id(e))

    def is_node(a) -> bool:
        return a.name.startswith("autograd::engine::evaluate_function")

    def is_adjoint(a) -> bool:
        return is_node(a) and ("Sdeint" in a.name or "Adjoint" in a.name)

    # Forward ops under a range (not inside a backward node) give their sequence number its
    # region; a backward node takes the region of its forward op.
    seq_region: dict[int, str] = {}
    for e in events:
        if e.name.startswith("aten::") and e.sequence_nr >= 0:
            for a in chain(e):
                if is_node(a):
                    break
                if a.name in (SDE, SPADE, OPTIMIZER):
                    seq_region.setdefault(e.sequence_nr, a.name)
                    break

    def region(e) -> str:
        for a in chain(e):
            if a.name in (SDE, SPADE, OPTIMIZER) or is_adjoint(a):
                return SDE if is_adjoint(a) else a.name
            if is_node(a) and a.sequence_nr in seq_region:
                return seq_region[a.sequence_nr]
        return MODEL

    def outermost_aten(e) -> str | None:
        name = None
        for a in chain(e):
            if a.name.startswith("aten::"):
                name = a.name
        return name

    in_step = set()
    for e in events:
        if any(a is step for a in chain(e)):
            in_step.add(id(e))
    table: dict[tuple[str, str], float] = defaultdict(float)
    top: Counter[str] = Counter()
    for e in events:
        if id(e) not in in_step:
            continue
        us = e.self_cpu_time_total
        top_op = outermost_aten(e)
        table[(region(e), op_kind(top_op))] += us
        if top_op is not None:
            top[top_op] += us
    return {"table": table, "top": top, "step_us": step.cpu_time_total}


def shares(table: dict[tuple[str, str], float], total: float) -> dict:
    """The brief's groups (they sum to 1), the SDE's and SPADE's parts, the overhead."""
    flat = dict.fromkeys(GROUPS, 0.0)
    sde: dict[str, float] = defaultdict(float)
    spade: dict[str, float] = defaultdict(float)
    overhead = 0.0
    for (reg, kind), us in table.items():
        if kind == "python_autograd_overhead":
            overhead += us
        if reg == SDE:
            flat["sde_solver"] += us
            sde[kind] += us
        elif reg == OPTIMIZER:
            flat["optimizer"] += us
        else:
            if reg == SPADE:
                spade[kind] += us
            flat[kind if kind in flat else "other"] += us
    return {
        "shares": {k: v / total for k, v in flat.items()},
        "sde_solver_parts": {k: v / total for k, v in sorted(sde.items())},
        "spade_share": sum(spade.values()) / total,
        "spade_parts": {k: v / total for k, v in sorted(spade.items())},
        "python_autograd_overhead_share": overhead / total,
    }


def profile_case(adjoint: bool, threads: int, config: str = "reduced", mode: str = "fp32") -> dict:
    """Warm-up step, one unprofiled step (wall time), one profiled step; the shares."""
    import torch
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    from scripts.bench.stdiff import training_step_parts

    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    model, opt, loss_fn = training_step_parts(config, mode, adjoint)

    def step():
        with record_function("step"):
            loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with record_function(OPTIMIZER):
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()

    with marked_regions(model):
        step()  # warm-up (and AdamW's state)
        t0 = time.perf_counter()
        step()
        wall = time.perf_counter() - t0
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            step()
            wall_profiled = time.perf_counter() - t0
    events = list(prof.events())
    att = attribute(events, "step")
    total = sum(att["table"].values())
    out = {
        "config": config,
        "precision": mode,
        "adjoint": adjoint,
        "threads": threads,
        "step_s": wall,
        "step_s_profiled": wall_profiled,
        "aten_events": sum(1 for e in events if e.name.startswith("aten::")),
        "attributed_over_step_range": total / att["step_us"],
        **shares(att["table"], total),
        "top_ops": [
            {"op": op, "share": us / total, "kind": op_kind(op)}
            for op, us in att["top"].most_common(12)
        ],
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "torch": torch.__version__,
    }
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--adjoint", choices=["on", "off", "both"], default="both")
    p.add_argument(
        "--config", default="reduced", help="STDiff config (reduced | kitti_range | tiny)"
    )
    p.add_argument(
        "--mode",
        default="fp32",
        help="fp32 | fp32_cl | bf16 | bf16_cl (as scripts/benchmark.py's --stdiff-modes)",
    )
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    adjoints = {"on": [True], "off": [False], "both": [True, False]}[args.adjoint]
    rows = []
    ctx = mp.get_context("spawn")
    for n in args.threads:
        for adjoint in adjoints:
            with ctx.Pool(1) as pool:
                row = pool.apply(profile_case, (adjoint, n, args.config, args.mode))
            print(
                json.dumps({k: row[k] for k in ("adjoint", "threads", "shares")}), file=sys.stderr
            )
            rows.append(row)
    text = json.dumps({"stdiff_step_profile": rows}, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
