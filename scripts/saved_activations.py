"""Where the memory of one STDiff training step goes: the tensors autograd keeps for backward
after the forward (the activation part of the step's peak), by module and by dtype.

    python scripts/saved_activations.py --config kitti_range --mode bf16sde_cl --adjoint off
    python scripts/saved_activations.py --config kitti_range --mode bf16sde_cl --norm unfused

One forward of the benchmarked step (scripts/bench/stdiff.py's ``training_step_parts``: batch
1, 3 -> 3 frames, the mode's autocast) under ``torch.autograd.graph.saved_tensors_hooks``;
every storage is counted once (a tensor the next op keeps too is not counted twice), under the
module whose forward was running when it was saved (the first ``--depth`` name parts).
``--norm unfused`` swaps stdiff.lean_norm's nodes for the plain ops they replace
(``silu(group_norm(x.float()))``, ``instance_norm(h.float()) * scale + shift``), to measure
what they save. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def use_unfused_norms() -> None:
    """Replace the lean GroupNorm->SiLU and SPADE-modulation nodes by the plain ops."""
    import torch
    import torch.nn.functional as F

    import stdiff.spade as spade
    import stdiff.unet_blocks as blocks
    import stdiff.unet_motion as unet
    from stdiff.lean_norm import group_norm

    def group_norm_silu(norm, x):
        return F.silu(group_norm(norm, x))

    def instance_norm_modulate(h, scale, shift, eps):
        return torch.addcmul(shift, spade.instance_norm(h, eps), scale)

    blocks.group_norm_silu = unet.group_norm_silu = group_norm_silu
    spade.instance_norm_modulate = instance_norm_modulate


def saved_activations(config: str, mode: str, adjoint: bool, depth: int) -> dict:
    import torch

    from scripts.bench.stdiff import training_step_parts

    model, _, loss_fn = training_step_parts(config, mode, adjoint)
    names = {m: n or "(root)" for n, m in model.named_modules()}
    stack = ["(root)"]

    def enter(module, args) -> None:
        stack.append(names[module])

    def leave(module, args, output) -> None:  # None: keep the module's output
        stack.pop()

    for m in names:
        m.register_forward_pre_hook(enter)
        m.register_forward_hook(leave)
    storages: dict[int, int] = {}
    by_module: Counter = Counter()
    by_dtype: Counter = Counter()

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in storages:
            storages[storage.data_ptr()] = storage.nbytes()
            by_module[".".join(stack[-1].split(".")[:depth])] += storage.nbytes()
            by_dtype[str(t.dtype).removeprefix("torch.")] += storage.nbytes()
        return t

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    seconds = time.perf_counter() - start
    del loss
    gb = 1e-9
    return {
        "config": config,
        "mode": mode,
        "adjoint": adjoint,
        "forward_s": seconds,
        "saved_gb": sum(storages.values()) * gb,
        "saved_gb_by_dtype": {k: v * gb for k, v in by_dtype.most_common()},
        "saved_gb_by_module": {k: v * gb for k, v in by_module.most_common(25)},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="kitti_range", help="reduced | kitti_range | tiny")
    p.add_argument("--mode", default="bf16sde_cl", help="as scripts/benchmark.py's --stdiff-modes")
    p.add_argument("--adjoint", choices=("on", "off"), default="off")
    p.add_argument("--norm", choices=("lean", "unfused"), default="lean")
    p.add_argument("--depth", type=int, default=3, help="module name parts to group by")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.norm == "unfused":
        use_unfused_norms()
    out = saved_activations(args.config, args.mode, args.adjoint == "on", args.depth)
    out["norm"] = args.norm
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
