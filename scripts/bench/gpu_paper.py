"""Section ``gpu_paper``: expected training-step time and memory of the target configs on one
H100 SXM / H200 SXM, on paper (no GPU needed), and the batch sizes that fit.

How the figures are made (one CPU thread, well under 3 minutes):

- Every step runs once on the ``meta`` device (shapes and dtypes, no arithmetic, no memory)
  under :class:`StepSimulator`, a dispatch mode that sees every aten op of forward, backward,
  gradient clipping and AdamW. Per op it records the FLOPs (the formulas of FlopCounterMode,
  ``torch.utils.flop_counter.flop_registry``: convolutions, matmuls, attention), the bytes read
  and written (tensor inputs + outputs, once each: eager kernels without fusion) and whether it
  launches a kernel (views do not). Data-dependent Python (the SDE's time grid, ``.item()``)
  works because small tensors carry a real CPU "twin" computed beside their meta value; those
  ``.item()`` calls are counted as host syncs (each one would stall a GPU).
- Memory is the peak of live tensor storage during the second step (the first one creates
  AdamW's state), tracked op by op: weights + gradients + AdamW state + saved activations +
  transients -- what ``torch.cuda.max_memory_allocated`` reports, before the allocator's
  fragmentation, CUDA context and cuDNN workspaces (covered by the headroom below).
- Attention runs as the flash kernel's meta function (what SDPA picks on a Hopper GPU; no
  ``L x L`` matrix), not the CPU / meta math fallback.
- Batch: the step is simulated at batch 1 and batch 2; memory = fixed + batch x per-sample
  (the two points fix the line), FLOPs, bytes and GPU time scale linearly with the batch
  (the optimizer's part is counted once), the launch count does not depend on the batch.
- Precision: the ``fp32`` simulation gives the fp32 / TF32 rows; the ``bf16`` one runs the model
  in bf16 (the SDE nets stay fp32, as under autocast), its activation bytes are a lower bound of
  bf16 autocast's (autocast keeps norms / softmax / losses in fp32; the fp32 rows bound it from
  above). Fixed memory is counted as mixed precision keeps it: fp32 weights, gradients and
  AdamW's two moments (16 B / parameter), plus bf16 weight copies (2 B) for bf16.

Expected step time on one GPU (``gpus`` in references.json, NVIDIA datasheets; dense peaks):
per op ``max(FLOPs / (peak x compute_fraction), bytes / (bandwidth x bandwidth_fraction))``
(roofline), summed; the host floor is ``kernels x launch_us`` (eager PyTorch: Python,
dispatcher and launch per op); the step takes the larger of the two (the host queues kernels
ahead of the GPU unless a sync stalls it). ``bound`` says which term dominates: compute,
bandwidth (memory-bound ops, e.g. convs with 16-64 channels whose FLOPs per byte are below the
ridge point, and all elementwise ops) or host. Largest batch: ``floor((memory x (1 - headroom)
- reserved - fixed) / per_sample)``.

Assumptions (``ASSUMPTIONS``, echoed in the output):
- compute_fraction 0.4 on tensor cores (bf16, TF32): cuDNN implicit-GEMM convolutions at 64-512
  channels reach 40-60 % of the dense peak in published training runs (MLPerf ResNet-50 /
  UNet3D on H100 sit near 50 %); the roofline term handles narrower layers. 0.7 of the CUDA-core
  FP32 peak (non-tensor-core SIMT GEMM kernels).
- bandwidth_fraction 0.75 of the HBM peak for unfused elementwise / small-conv kernels (STREAM
  -like copies reach ~0.9).
- launch_us 30 us of host time per kernel: eager PyTorch's Python, dispatcher and launch per
  op, as measured on one H200 machine (``--only gpu``, 2026-12-04; docs/benchmarks/): the
  host-bound steps took 29-39 us a simulated kernel (STDiff reduced 30 / 39 us without / with the
  SDE adjoint, kitti_range bf16 batch 1 34 us, the WF-VAE flagship 29 us). The first estimate,
  8 us (the CUDA launch alone is 4-5 us), put those steps 3-4x too fast. Launch-bound steps
  gain from larger batches, CUDA graphs or torch.compile.
- headroom 10 % of the memory for fragmentation and cuDNN workspaces; reserved 1.5 GB for the
  CUDA context and library handles; memory = the datasheet's GB (1e9 bytes).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import weakref
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.bench.harness import REFERENCES, Context, emit, in_process, set_threads

REPO = Path(__file__).resolve().parents[2]

#: Achievable fractions and overheads behind the estimates (see the module docstring).
ASSUMPTIONS: dict[str, Any] = {
    "compute_fraction": {"bf16": 0.4, "tf32": 0.4, "fp32": 0.7},
    "bandwidth_fraction": 0.75,
    "launch_us": 30.0,
    "sync_us": 15.0,
    "headroom": 0.10,
    "reserved_gb": 1.5,
    "fixed_bytes_per_param": {"fp32": 16, "tf32": 16, "bf16": 18},
    "optimizer_bytes_per_param": {"fp32": 40, "tf32": 40, "bf16": 46},
}

#: GPU precisions: which simulation (dtype) they use and which datasheet peak.
PRECISIONS: dict[str, tuple[str, str]] = {
    "bf16": ("bf16", "bf16_dense_tflops"),
    "tf32": ("fp32", "tf32_dense_tflops"),
    "fp32": ("fp32", "fp32_tflops"),
}


# ------------------------------------------------------------------------ pure arithmetic
def compute_time_s(flops: float, peak_tflops: float, fraction: float) -> float:
    """Seconds for ``flops`` at ``fraction`` of a ``peak_tflops`` TFLOP/s peak."""
    return flops / (peak_tflops * 1e12 * fraction)


def bandwidth_time_s(nbytes: float, bandwidth_tbs: float, fraction: float) -> float:
    """Seconds to move ``nbytes`` at ``fraction`` of a ``bandwidth_tbs`` TB/s peak."""
    return nbytes / (bandwidth_tbs * 1e12 * fraction)


def ridge_flop_per_byte(
    peak_tflops: float, bandwidth_tbs: float, compute_fraction: float, bandwidth_fraction: float
) -> float:
    """Arithmetic intensity (FLOP / byte) above which an op is compute-bound."""
    return (peak_tflops * compute_fraction) / (bandwidth_tbs * bandwidth_fraction)


def segment_times(
    ops: list[tuple[str, float, float]],
    peak_tflops: float,
    bandwidth_tbs: float,
    compute_fraction: float,
    bandwidth_fraction: float,
    launch_us: float,
) -> list[tuple[float, float, float]]:
    """``ops`` = [(kind, flops, bytes)] in order, kind "sync" for a host sync: the stretches
    between syncs as (GPU compute s, GPU bandwidth s, host s), per op the slower of compute and
    memory (roofline) and ``launch_us`` of host time per kernel."""
    segments: list[tuple[float, float, float]] = []
    compute = memory = host = 0.0
    for kind, flops, nbytes in ops:
        if kind == "sync":
            segments.append((compute, memory, host))
            compute = memory = host = 0.0
            continue
        tc = compute_time_s(flops, peak_tflops, compute_fraction)
        tm = bandwidth_time_s(nbytes, bandwidth_tbs, bandwidth_fraction)
        if tc >= tm:
            compute += tc
        else:
            memory += tm
        host += launch_us * 1e-6
    segments.append((compute, memory, host))
    return segments


def step_breakdown(
    segments: list[tuple[float, float, float]],
    fixed_gpu_s: float,
    fixed_host_s: float,
    batch: int,
    sync_s: float,
) -> dict[str, float]:
    """Expected step time at ``batch`` and where it goes. Between two syncs the host queues
    kernels ahead of the GPU, so a stretch takes the longer of its GPU time (batch x the
    batch-1 figures) and its host time; each sync adds ``sync_s``; the optimizer (fixed GPU
    and host time, once per step, memory-bound) is one more stretch. Returns ``step_s`` and
    its parts ``compute``, ``bandwidth``, ``host``, ``sync`` (they sum to ``step_s``)."""
    parts = {"compute": 0.0, "bandwidth": 0.0, "host": 0.0, "sync": 0.0}
    for compute, memory, host in segments:
        if batch * (compute + memory) >= host:
            parts["compute"] += batch * compute
            parts["bandwidth"] += batch * memory
        else:
            parts["host"] += host
    parts["sync"] = (len(segments) - 1) * sync_s
    if fixed_gpu_s >= fixed_host_s:
        parts["bandwidth"] += fixed_gpu_s
    else:
        parts["host"] += fixed_host_s
    return {"step_s": sum(parts.values()), **parts}


def usable_bytes(memory_gb: float, headroom: float, reserved_gb: float) -> float:
    """Bytes left for the step: the memory less the headroom fraction and the reserved GB."""
    return memory_gb * 1e9 * (1.0 - headroom) - reserved_gb * 1e9


def max_batch(
    memory_gb: float,
    fixed_bytes: float,
    per_sample_bytes: float,
    headroom: float,
    reserved_gb: float,
) -> int:
    """Largest batch with ``fixed + batch x per_sample`` within the usable memory (0: not
    even one sample fits)."""
    room = usable_bytes(memory_gb, headroom, reserved_gb) - fixed_bytes
    if room < per_sample_bytes:
        return 0
    return int(math.floor(room / per_sample_bytes))


def gpu_specs() -> dict[str, dict[str, Any]]:
    """The GPUs of references.json (``gpus``), by name."""
    return dict(json.loads(REFERENCES.read_text())["gpus"]["specs"])


# ---------------------------------------------------------------------------- simulation
#: Ops that only write their output (their tensor inputs give a shape / are overwritten).
_WRITE_ONLY = {
    "zeros_like",
    "ones_like",
    "full_like",
    "rand_like",
    "randn_like",
    "fill_",
    "zero_",
    "normal_",
    "uniform_",
    "new_zeros",
    "new_ones",
    "new_full",
    "zeros",
    "ones",
    "full",
    "randn",
    "rand",
    "randint",
    "arange",
    "scalar_tensor",
}
#: Ops that allocate without touching memory or only describe tensors (no kernel).
_NO_KERNEL = {
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "lift_fresh",
    "_local_scalar_dense",
    "sym_size",
    "sym_stride",
    "sym_numel",
    "is_same_size",
    "_has_compatible_shallow_copy_type",
    "set_",
}
_SMALL = 64  # elements: tensors this small get a real CPU twin
SMALL_CHANNELS = 64  # the "small-channel" convs of the bandwidth check


def _kind(name: str) -> str:
    if "convolution_backward" in name:
        return "conv_backward"
    if "convolution" in name:
        return "conv"
    if "attention" in name:
        return "attention"
    if name in ("mm", "addmm", "bmm", "baddbmm"):
        return "matmul"
    return "other"


@dataclass
class OpRecord:
    kind: str
    flops: float
    nbytes: float
    detail: str | None = None  # conv: "cin>cout k3x3 @HxW" (for the small-channel check)


@dataclass
class PhaseStats:
    ops: list[OpRecord] = field(default_factory=list)
    kernels: int = 0
    syncs: int = 0


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size()


def _conv_detail(args: tuple, backward: bool) -> str | None:
    """``"cin>cout k3x3 @64x128"`` (input size) of a convolution / convolution_backward."""
    import torch

    # convolution(input, weight, ...) / convolution_backward(grad_out, input, weight, ...)
    x, w = (args[1], args[2]) if backward else (args[0], args[1])
    if not isinstance(w, torch.Tensor) or w.dim() < 3:
        return None
    k = "x".join(str(s) for s in w.shape[2:])
    size = "x".join(str(s) for s in x.shape[2:])
    return f"{w.shape[1]}>{w.shape[0]} k{k} @{size}"


class StepSimulator:
    """Dispatch mode for steps on the meta device: FLOPs, bytes and kernels per op and phase,
    host syncs, and the peak of live storage (see the module docstring).

    Tensors given to :meth:`external` (parameters, buffers) count as their own fixed bytes and
    are not tracked; everything the ops create on ``track_devices`` is, until its last tensor
    dies (``("meta", "cpu")`` runs the same bookkeeping on a real CPU step, for the tests)."""

    def __init__(self, track_devices: tuple[str, ...] = ("meta",)) -> None:
        from torch.utils.weak import WeakIdKeyDictionary

        self.twins = WeakIdKeyDictionary()
        self.phases: dict[str, PhaseStats] = defaultdict(PhaseStats)
        self.phase = "setup"
        self.recording = False
        self.external_keys: set[int] = set()
        self.external_bytes = 0
        self.refs: Counter[int] = Counter()
        self.live = 0
        self.peak = 0
        self.op_counts: Counter[str] = Counter()
        self.track_devices = track_devices

    # ------------------------------------------------------------------ memory
    def external(self, tensors: Any) -> None:
        for t in tensors:
            key = t.untyped_storage()._cdata
            if key not in self.external_keys:
                self.external_keys.add(key)
                self.external_bytes += t.untyped_storage().nbytes()

    def reset_peak(self) -> None:
        self.peak = self.live

    def _track(self, t: Any) -> None:
        if t.device.type not in self.track_devices:
            return
        key = t.untyped_storage()._cdata
        if key in self.external_keys:
            return
        self.refs[key] += 1
        if self.refs[key] == 1:
            self.live += t.untyped_storage().nbytes()
            self.peak = max(self.peak, self.live)
        weakref.finalize(t, self._release, key, t.untyped_storage().nbytes())

    def _release(self, key: int, nbytes: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.live -= nbytes

    # ------------------------------------------------------------------ the mode
    @contextlib.contextmanager
    def active(self, bf16: bool = False) -> Iterator[StepSimulator]:
        sim = self

        from torch.utils._python_dispatch import TorchDispatchMode

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return sim._dispatch(func, args, kwargs or {})

        with _meta_patches(bf16), _Mode():
            yield self

    def _dispatch(self, func: Any, args: tuple, kwargs: dict) -> Any:
        import torch
        from torch.utils._pytree import tree_flatten, tree_map
        from torch.utils.flop_counter import flop_registry

        name = func._overloadpacket.__name__
        flat = tree_flatten((args, kwargs))[0]
        metas = [t for t in flat if isinstance(t, torch.Tensor) and t.device.type == "meta"]
        stats = self.phases[self.phase]
        if name == "_local_scalar_dense" and metas:
            if self.recording:
                stats.syncs += 1
                stats.ops.append(OpRecord("sync", 0.0, 0.0))
            return self.twins[args[0]].item()
        out = func(*args, **kwargs)
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]

        # Small tensors carry a real CPU twin (times, step counters, scheduler indices).
        if metas and all(t.numel() <= _SMALL and t in self.twins for t in metas):

            def real(x: Any) -> Any:
                if isinstance(x, torch.Tensor) and x.device.type == "meta":
                    return self.twins[x]
                if isinstance(x, torch.device) and x.type == "meta":
                    return torch.device("cpu")
                return x

            rargs, rkwargs = tree_map(real, (args, kwargs))
            rout = func(*rargs, **rkwargs)
            routs = [o for o in tree_flatten(rout)[0] if isinstance(o, torch.Tensor)]
            for o, r in zip(outs, routs, strict=False):
                if o.device.type == "meta":
                    self.twins[o] = r
            if isinstance(out, torch.Tensor) and out.device.type != "meta":
                out = rout  # e.g. a small meta tensor copied to the CPU
        elif not metas and name == "_to_copy":
            src = args[0]
            if (
                isinstance(out, torch.Tensor)
                and out.device.type == "meta"
                and out.numel() <= _SMALL
            ):
                self.twins[out] = src.to(dtype=out.dtype)

        for o in outs:
            self._track(o)
        on_meta = metas or any(o.device.type == "meta" for o in outs)
        if not self.recording or not on_meta or func.is_view or name in _NO_KERNEL:
            return out  # (host-side CPU ops are not GPU kernels)
        self.op_counts[name] += 1
        stats.kernels += 1
        seen: set[int] = set()
        nbytes = 0
        if name not in _WRITE_ONLY:
            for t in flat:
                if isinstance(t, torch.Tensor) and id(t) not in seen:
                    seen.add(id(t))
                    nbytes += _nbytes(t)
        nbytes += sum(_nbytes(o) for o in outs)
        flops = 0
        if func._overloadpacket in flop_registry:
            flops = flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)
        kind = _kind(name)
        detail = _conv_detail(args, kind == "conv_backward") if kind.startswith("conv") else None
        stats.ops.append(OpRecord(kind, float(flops), float(nbytes), detail))
        return out


#: Functions autocast runs in bf16 (their floating inputs cast) and in fp32.
_AUTOCAST_LOW = {
    "torch.nn.functional": (
        "conv1d",
        "conv2d",
        "conv3d",
        "conv_transpose1d",
        "conv_transpose2d",
        "conv_transpose3d",
        "linear",
        "scaled_dot_product_attention",
    ),
    "torch": ("matmul", "mm", "bmm", "addmm", "baddbmm"),
}
_AUTOCAST_FP32 = {"torch.nn.functional": ("group_norm", "layer_norm", "softmax", "log_softmax")}


@contextlib.contextmanager
def _meta_patches(bf16: bool) -> Iterator[None]:
    """What the meta device needs beyond the dispatch mode, and bf16 autocast on it.

    torchsde seeds a Generator on the state's device (none exists for meta: plain ``empty``);
    SDPA runs as the flash kernel's meta functions, as on the GPU. There is no autocast for
    meta tensors: ``torch.autocast("meta", enabled=...)`` and ``torch.is_autocast_enabled
    ("meta")`` are emulated (on with ``bf16``), and while it is on the functions of
    ``_AUTOCAST_LOW`` (``get_autocast_dtype``: bf16) get their floating meta inputs cast to bf16 (differentiably, above
    autograd: the casts are kernels and the bf16 copies are what backward saves, as under
    CUDA autocast, weights included) and those of ``_AUTOCAST_FP32`` to fp32."""
    import importlib

    import torch
    import torchsde._brownian.brownian_interval as bi

    state = {"on": bf16}
    saved: list[tuple[Any, str, Any]] = []

    def patch(obj: Any, name: str, new: Any) -> None:
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, new)

    orig_randn, orig_autocast, orig_enabled = bi._randn, torch.autocast, torch.is_autocast_enabled

    def randn(size, dtype, device, seed):
        if torch.device(device).type == "meta":
            return torch.empty(size, dtype=dtype, device=device)
        return orig_randn(size, dtype, device, seed)

    @contextlib.contextmanager
    def meta_autocast(enabled: bool) -> Iterator[None]:
        before = state["on"]
        state["on"] = bool(enabled) and bf16
        try:
            yield
        finally:
            state["on"] = before

    def autocast(device_type, dtype=None, enabled=True, cache_enabled=None):
        if device_type == "meta":
            return meta_autocast(enabled)
        return orig_autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)

    def is_autocast_enabled(*args):
        if args and str(args[0]) == "meta":
            return state["on"]
        return orig_enabled(*args)

    orig_dtype = torch.get_autocast_dtype

    def get_autocast_dtype(device_type):
        if str(device_type) == "meta":
            return torch.bfloat16
        return orig_dtype(device_type)

    def casting(fn: Any, dtype: Any, flash: bool = False) -> Any:
        def cast(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != dtype:
                return x.to(dtype)
            return x

        def wrapper(*args, **kwargs):
            meta = any(isinstance(x, torch.Tensor) and x.device.type == "meta" for x in args)
            if meta and state["on"]:
                args = tuple(cast(x) for x in args)
                kwargs = {k: cast(v) for k, v in kwargs.items()}
            if flash and meta and len(args) == 3 and not kwargs:
                return _FlashMeta.apply(*args)
            return fn(*args, **kwargs)

        return wrapper

    patch(bi, "_randn", randn)
    patch(torch, "autocast", autocast)
    patch(torch, "is_autocast_enabled", is_autocast_enabled)
    patch(torch, "get_autocast_dtype", get_autocast_dtype)
    for module_name, names in _AUTOCAST_LOW.items():
        module = importlib.import_module(module_name)
        for name in names:
            flash = name == "scaled_dot_product_attention"
            patch(module, name, casting(getattr(module, name), torch.bfloat16, flash))
    for module_name, names in _AUTOCAST_FP32.items():
        module = importlib.import_module(module_name)
        for name in names:
            patch(module, name, casting(getattr(module, name), torch.float32))
    try:
        yield
    finally:
        for obj, name, old in reversed(saved):
            setattr(obj, name, old)


def _flash_meta_class():
    import torch

    aten = torch.ops.aten

    class FlashMeta(torch.autograd.Function):
        """SDPA as the flash-attention kernels (meta tensors only): saves q, k, v, out and the
        log-sum-exp, as the GPU kernel does."""

        @staticmethod
        def forward(ctx, q, k, v):
            out, lse, cq, ck, mq, mk, seed, offset, _ = aten._scaled_dot_product_flash_attention(
                q, k, v, 0.0, False, False
            )
            ctx.save_for_backward(q, k, v, out, lse, seed, offset)
            ctx.rest = (cq, ck, mq, mk)
            return out

        @staticmethod
        def backward(ctx, grad):
            q, k, v, out, lse, seed, offset = ctx.saved_tensors
            cq, ck, mq, mk = ctx.rest
            dq, dk, dv = aten._scaled_dot_product_flash_attention_backward(
                grad.contiguous(), q, k, v, out, lse, cq, ck, mq, mk, 0.0, False, seed, offset
            )
            return dq, dk, dv

    return FlashMeta


class _LazyFlash:
    _cls = None

    def apply(self, *args):
        if _LazyFlash._cls is None:
            _LazyFlash._cls = _flash_meta_class()
        return _LazyFlash._cls.apply(*args)


_FlashMeta = _LazyFlash()


# ------------------------------------------------------------------------------ the steps
@dataclass
class Case:
    """How a simulated target is reported: name, op, input shape, the batch its config trains
    with (None: inference) and a note."""

    name: str
    op: str  # train | encode | decode
    shape: str
    config_batch: int | None
    note: str


def _stdiff_build(config: str, adjoint: bool):
    import torch

    from stdiff import STDiff, stdiff_config

    with torch.device("meta"):
        return STDiff(**stdiff_config(config, tde={"adjoint": adjoint}))


def _wfvae_flagship_kwargs() -> dict:
    """configs/model/net/wfvae.yaml with experiment=wfvae_kitti's model.net overrides."""
    from omegaconf import OmegaConf

    net = OmegaConf.load(REPO / "configs/model/net/wfvae.yaml")
    exp = OmegaConf.load(REPO / "configs/experiment/wfvae_kitti.yaml")
    cfg = OmegaConf.to_container(OmegaConf.merge(net, exp.model.net))
    cfg.pop("_target_")
    return cfg


def _wfvae_build(name: str):
    import torch

    from wfvae.model import WFVAE, wfvae_config

    kwargs = _wfvae_flagship_kwargs() if name == "flagship" else wfvae_config(name)
    with torch.device("meta"):
        return WFVAE(**kwargs)


def simulate(
    target: str, batch: int, dtype_name: str, steps: int = 2
) -> tuple[StepSimulator, int, int]:
    """Simulate ``steps`` steps of a target at ``batch`` (statistics and peak of the last);
    returns the simulator, the parameter count and the number of parameter tensors."""
    kind, _, rest = target.partition(":")
    # Built outside the simulator: parameters and buffers are its external (fixed) bytes.
    if kind == "stdiff":
        config, adj = rest.split(",")
        model = _stdiff_build(config, adj == "adjoint")
        step = _stdiff_step(model, config, batch)
    else:
        name, op = rest.split(",")
        model = _wfvae_build(name)
        step = _wfvae_step(model, name, op, batch)
    params = list(model.parameters())
    sim = StepSimulator()
    sim.external(params)
    sim.external(list(model.buffers()))
    with sim.active(bf16=dtype_name == "bf16"):
        for i in range(steps):
            sim.recording = i == steps - 1
            if sim.recording:
                sim.reset_peak()
            step(sim)
    return sim, sum(p.numel() for p in params), len(params)


STDIFF_SIZES = {"reduced": (64, 128), "kitti_range": (64, 512)}


def _stdiff_step(model, config: str, batch: int) -> Callable[[StepSimulator], None]:
    import torch

    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, foreach=False
    )
    h, w = STDIFF_SIZES[config]
    idx_o, idx_p = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([3.0, 4.0, 5.0])

    def step(sim: StepSimulator) -> None:
        sim.phase = "forward_backward"
        # A fresh scheduler: diffusers' add_noise moves its table to the samples' device.
        sched = model.make_scheduler()
        vo = torch.empty(batch, 3, 1, h, w, device="meta")
        vp = torch.empty(batch, 3, 1, h, w, device="meta")
        loss, _ = model.training_loss(
            vo, vp, idx_o, idx_p, sched, generator=torch.Generator().manual_seed(1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        del loss, vo, vp
        sim.phase = "optimizer"
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


WFVAE_SHAPES = {  # (frames, height, width) by (name, op)
    ("flagship", "train"): (9, 64, 192),
    ("wfvae_l_16ch", "train"): (25, 256, 256),
    ("wfvae_l_16ch", "encode"): (17, 256, 256),
    ("wfvae_l_16ch", "decode"): (17, 256, 256),
}


def _wfvae_step(model, name: str, op: str, batch: int) -> Callable[[StepSimulator], None]:
    import torch

    from wfvae.losses import WFVAELoss

    t, h, w = WFVAE_SHAPES[(name, op)]
    if op != "train":
        model.eval()
        lat = model.latent_dim if hasattr(model, "latent_dim") else None

        def infer(sim: StepSimulator) -> None:
            sim.phase = "forward"
            with torch.no_grad():
                if op == "encode":
                    x = torch.empty(batch, 3, t, h, w, device="meta")
                    model.encode(x).posterior.mode()
                else:
                    z = torch.empty(batch, lat, (t - 1) // 4 + 1, h // 8, w // 8, device="meta")
                    model.decode(z)

        return infer

    # The flagship's loss without LPIPS (no local VGG weights: off, as in the CPU runs).
    loss_fn = WFVAELoss(perceptual_weight=0.0, kl_weight=1e-6, wavelet_weight=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4, foreach=False)

    def step(sim: StepSimulator) -> None:
        sim.phase = "forward_backward"
        x = torch.empty(batch, 3, t, h, w, device="meta")
        out = model(x, sample_posterior=True)
        loss, _ = loss_fn.generator_loss(x, out, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        del loss, out, x
        sim.phase = "optimizer"
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


#: The targets: (key, case, simulation target).
TARGETS: list[tuple[str, Case]] = [
    (
        "stdiff:reduced,adjoint",
        Case("stdiff_reduced", "train", "3->3 x 64x128", 1, "SDE adjoint on (as published)"),
    ),
    (
        "stdiff:reduced,direct",
        Case("stdiff_reduced", "train", "3->3 x 64x128", 1, "SDE adjoint off"),
    ),
    (
        "stdiff:kitti_range,adjoint",
        Case("stdiff_kitti_range", "train", "3->3 x 64x512", 1, "SDE adjoint on"),
    ),
    (
        "wfvae:flagship,train",
        Case(
            "wfvae_flagship",
            "train",
            "9x64x192",
            2,
            "experiment=wfvae_kitti network (latent 16, base 16, efs 16); LPIPS off",
        ),
    ),
    (
        "wfvae:wfvae_l_16ch,train",
        Case(
            "wfvae_l_16ch",
            "train",
            "25x256x256",
            8,
            "published recipe clips (total batch 8); no LPIPS / GAN",
        ),
    ),
    ("wfvae:wfvae_l_16ch,encode", Case("wfvae_l_16ch", "encode", "17x256x256", None, "")),
    ("wfvae:wfvae_l_16ch,decode", Case("wfvae_l_16ch", "decode", "17x256x256", None, "")),
]


def _summarize(sim: StepSimulator) -> dict:
    """What the GPU estimates need from one simulation, as plain data (crosses processes): the
    scaled ops (forward, backward) in order, syncs included, and the peak memory."""
    ops = [
        (o.kind, o.flops, o.nbytes, o.detail)
        for name, st in sim.phases.items()
        if name != "optimizer"
        for o in st.ops
    ]
    return {
        "ops": ops,
        "syncs": sum(st.syncs for st in sim.phases.values()),
        "peak_bytes": sim.external_bytes + sim.peak,
    }


def simulate_case(target: str, threads: int = 1) -> dict:
    """Batch-1 and batch-2 simulations of a target in fp32 and bf16 (run it in a fresh
    process): the batch-1 ops, fixed and per-sample memory, per precision."""
    set_threads(threads)
    out = {}
    for dtype_name in ("fp32", "bf16"):
        t0 = time.perf_counter()
        sim1, params, tensors = simulate(target, 1, dtype_name)
        one = _summarize(sim1)
        del sim1
        sim2, _, _ = simulate(target, 2, dtype_name)
        two = _summarize(sim2)
        del sim2
        per_sample = two["peak_bytes"] - one["peak_bytes"]
        out[dtype_name] = {
            "params": params,
            "param_tensors": tensors,
            "ops": one["ops"],
            "syncs": one["syncs"],
            "peak_bytes_batch1": one["peak_bytes"],
            "peak_bytes_batch2": two["peak_bytes"],
            "per_sample_bytes": per_sample,
            "fixed_bytes_sim": one["peak_bytes"] - per_sample,
            "sim_seconds": time.perf_counter() - t0,
        }
    return out


# ------------------------------------------------------------------------------ estimates
def optimizer_cost(
    params: int, tensors: int, precision: str, spec: dict
) -> tuple[float, float, float]:
    """(bytes, GPU s, host s) of gradient clipping + fused AdamW, once per step: per parameter
    ``optimizer_bytes_per_param`` (fp32 master weights; + the bf16 weight casts under
    autocast), ``10 + 3 x ceil(tensors / 100)`` launches (multi-tensor kernels)."""
    a = ASSUMPTIONS
    nbytes = params * a["optimizer_bytes_per_param"][precision]
    gpu = bandwidth_time_s(nbytes, spec["bandwidth_tbs"], a["bandwidth_fraction"])
    host = (10 + 3 * math.ceil(tensors / 100)) * a["launch_us"] * 1e-6
    return nbytes, gpu, host


def estimate(sim: dict, case: Case, variant: str, gpu: str, spec: dict, precision: str) -> dict:
    """One row: a simulated target (one precision's simulation) on one GPU."""
    a = ASSUMPTIONS
    peak = spec[PRECISIONS[precision][1]]
    bw = spec["bandwidth_tbs"]
    fc, fb = a["compute_fraction"][precision], a["bandwidth_fraction"]
    ops = sim["ops"]
    flops = sum(o[1] for o in ops)
    nbytes = sum(o[2] for o in ops)
    kernels = sum(1 for o in ops if o[0] != "sync")
    segments = segment_times([o[:3] for o in ops], peak, bw, fc, fb, a["launch_us"])
    train = case.op == "train"
    opt_bytes, opt_gpu, opt_host = (
        optimizer_cost(sim["params"], sim["param_tensors"], precision, spec)
        if train
        else (0.0, 0.0, 0.0)
    )
    sync_s = a["sync_us"] * 1e-6

    # Memory: fixed = fp32 weights, grads and AdamW moments (+ bf16 copies) or, if larger, the
    # simulated part that does not grow with the batch; per sample from batches 1 and 2.
    per_sample_mem = sim["per_sample_bytes"]
    fixed_mem = sim["fixed_bytes_sim"]
    if train:
        fixed_mem = max(fixed_mem, sim["params"] * a["fixed_bytes_per_param"][precision])
    mb = max_batch(spec["memory_gb"], fixed_mem, per_sample_mem, a["headroom"], a["reserved_gb"])

    def at(batch: int) -> dict:
        b = step_breakdown(segments, opt_gpu, opt_host, batch, sync_s)
        parts = {k: b[k] for k in ("compute", "bandwidth", "host", "sync")}
        return {
            "batch": batch,
            "step_s": b["step_s"],
            "samples_per_s": batch / b["step_s"],
            "bound": max(parts, key=parts.get),
            "shares": {k: v / b["step_s"] for k, v in parts.items()},
            "memory_gb": (fixed_mem + batch * per_sample_mem) / 1e9,
            "fits": batch <= mb,
        }

    # The small-channel check: conv layers (fwd + bwd, by shape) below the ridge point.
    ridge = ridge_flop_per_byte(peak, bw, fc, fb)
    convs: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for kind, f, nb, detail in ops:
        if kind.startswith("conv") and detail:
            convs[detail][0] += f
            convs[detail][1] += nb
    conv_flops = sum(v[0] for v in convs.values()) or 1.0
    below = [v for v in convs.values() if v[0] / max(v[1], 1.0) < ridge]
    # Convs with <= 64 channels in and out: compute against memory time, summed over them.
    narrow = [
        v
        for d, v in convs.items()
        if max(int(c) for c in d.split(" ")[0].split(">")) <= SMALL_CHANNELS
    ]
    narrow_c = compute_time_s(sum(v[0] for v in narrow), peak, fc)
    narrow_m = bandwidth_time_s(sum(v[1] for v in narrow), bw, fb)
    lowest = sorted(convs.items(), key=lambda kv: kv[1][0] / max(kv[1][1], 1.0))[:3]
    row = {
        "config": case.name,
        "variant": variant,
        "op": case.op,
        "shape": case.shape,
        "note": case.note,
        "gpu": gpu,
        "precision": precision,
        "params_m": sim["params"] / 1e6,
        "gflop_per_sample": flops / 1e9,
        "gb_moved_per_sample": nbytes / 1e9,
        "optimizer_gb_moved": opt_bytes / 1e9,
        "kernels_per_step": kernels,
        "host_syncs_per_step": sim["syncs"],
        "fixed_gb": fixed_mem / 1e9,
        "per_sample_gb": per_sample_mem / 1e9,
        "compute_only_s_per_sample": compute_time_s(flops, peak, fc),
        "bandwidth_only_s_per_sample": bandwidth_time_s(nbytes, bw, fb),
        "ridge_flop_per_byte": ridge,
        "conv_flop_share_below_ridge": sum(v[0] for v in below) / conv_flops,
        "small_channel_convs": {
            "max_channels": SMALL_CHANNELS,
            "flop_share_of_convs": sum(v[0] for v in narrow) / conv_flops,
            "compute_s_per_sample": narrow_c,
            "bandwidth_s_per_sample": narrow_m,
            "bound": "bandwidth" if narrow_m > narrow_c else "compute",
        },
        "lowest_intensity_convs": [
            {"conv": d, "flop_per_byte": v[0] / max(v[1], 1.0), "flop_share": v[0] / conv_flops}
            for d, v in lowest
        ],
        "batch_1": at(1),
        "max_batch": mb,
        "at_max_batch": at(mb) if mb > 0 else None,
    }
    if case.config_batch and case.config_batch != 1:
        row["at_config_batch"] = at(case.config_batch)
    return row


def run(ctx: Context) -> dict:
    specs = gpu_specs()
    rows, sims = [], []
    for target, case in TARGETS:
        by_dtype = in_process(simulate_case, target, 1)
        for dtype_name, s in by_dtype.items():
            sims.append(
                emit(
                    {
                        "target": target,
                        "dtype": dtype_name,
                        "gflop_batch1": sum(o[1] for o in s["ops"]) / 1e9,
                        "peak_gb_batch1": s["peak_bytes_batch1"] / 1e9,
                        "per_sample_gb": s["per_sample_bytes"] / 1e9,
                        "sim_seconds": s["sim_seconds"],
                    }
                )
            )
        for gpu, spec in specs.items():
            for precision, (dtype_name, _) in PRECISIONS.items():
                row = estimate(by_dtype[dtype_name], case, target, gpu, spec, precision)
                rows.append(row)
                if precision == "bf16":
                    emit({k: row[k] for k in ("config", "variant", "gpu", "batch_1", "max_batch")})
    return {
        "gpu_paper": rows,
        "gpu_paper_simulations": sims,
        "gpu_paper_assumptions": ASSUMPTIONS,
        "gpu_paper_loadavg": os.getloadavg(),
    }
