"""What every benchmark section shares: a fresh process per case, peak RSS, best-of-N timing,
FLOPs, the machine's conv peak, the published references (references.json) and the run's
settings (`Context`).

Each case runs in its own spawned process (`in_process`) so that its peak RSS is its own and
no earlier case warmed its caches; functions given to it must be importable module-level
functions. Rows are dicts; `emit` echoes one to stderr as it is measured (stdout carries only
the final JSON document).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

REFERENCES = Path(__file__).with_name("references.json")


@dataclass
class Context:
    """One benchmark run: the parsed arguments and what earlier sections measured."""

    args: argparse.Namespace
    conv_peak: dict[str, float] | None = None  # GFLOP/s by mode, when conv_peak ran
    stdiff_peaks: dict[int, dict[str, float]] = field(default_factory=dict)  # by thread count


# --------------------------------------------------------------------------------- processes
def in_process(fn: Callable[..., dict], *args: Any, **kwargs: Any) -> dict:
    """``fn(*args, **kwargs)`` in a fresh spawned process; its return value."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args, kwargs)


def _send_result(conn: Any, fn: Callable[..., dict], args: tuple, kwargs: dict) -> None:
    import traceback

    try:
        conn.send(("ok", fn(*args, **kwargs)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def in_process_with_children(fn: Callable[..., dict], *args: Any, **kwargs: Any) -> dict:
    """As `in_process`, in a fresh spawned process that may start processes of its own (e.g.
    DataLoader workers; a Pool's processes are daemonic and may not). Raises RuntimeError with
    the child's traceback when ``fn`` fails or the process dies."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_send_result, args=(send, fn, args, kwargs))
    proc.start()
    send.close()
    try:
        status, value = recv.recv()  # before join: a large result would block the child's send
    except EOFError:
        proc.join()
        raise RuntimeError(f"{fn.__name__}: its process died (exit code {proc.exitcode})") from None
    finally:
        recv.close()
    proc.join()
    if status == "error":
        raise RuntimeError(f"{fn.__name__} failed in its process:\n{value}")
    return value


def emit(row: dict) -> dict:
    """Echo a measured row to stderr (progress while the run goes on)."""
    print(json.dumps(row), file=sys.stderr)
    return row


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------ memory
def rss_mb() -> float:
    """This process's lifetime peak RSS (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _proc_status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def start_peak_window() -> float:
    """Reset this process's peak-RSS mark (Linux ``clear_refs`` 5) and return the RSS now, so
    that :func:`window_peak_mb` gives the peak of what runs in between (not, e.g., of the
    encode that made a decode's input). Falls back to the lifetime peak elsewhere."""
    import gc

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return rss_mb()
    return _proc_status_mb("VmRSS") or rss_mb()


def window_peak_mb() -> float:
    return _proc_status_mb("VmHWM") or rss_mb()


# ------------------------------------------------------------------------------ time and work
def timeit(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Best of ``repeats`` wall times (s) after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def set_mode_convs(model: Any, mode: str) -> None:
    """Mode ``fp32_direct``: the WF-VAE ``model`` without Winograd; other modes keep its
    default conv algorithm."""
    if mode == "fp32_direct":
        model.set_conv_algorithm("direct")


@contextmanager
def direct_convs(model: Any = None) -> Iterator[None]:
    """Run a WF-VAE ``model`` (None: nothing) with direct convolutions inside the block: FLOPs
    are counted so, a conv computed by Winograd counting as the direct conv it equals (the usual
    "effective FLOPs", not its 4x smaller GEMMs)."""
    algorithm = getattr(model, "config", {}).get("conv_algorithm")
    if algorithm is not None:
        model.set_conv_algorithm("direct")
    try:
        yield
    finally:
        if algorithm is not None:
            model.set_conv_algorithm(algorithm)


def count_flops(fn: Callable[[], Any], model: Any = None) -> int:
    """FLOPs of one call (FlopCounterMode: convolutions and matmuls), with ``model``'s direct
    convolutions (:func:`direct_convs`)."""
    from torch.utils.flop_counter import FlopCounterMode

    with direct_convs(model), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def bf16_autocast(enabled: bool, device_type: str = "cpu"):
    """bf16 autocast; on the CPU without the weight-cast cache (it keeps a bf16 copy of every
    weight, and was slower there), on a GPU with it (PyTorch's default)."""
    import torch

    return torch.autocast(
        device_type, dtype=torch.bfloat16, enabled=enabled, cache_enabled=device_type != "cpu"
    )


def conv_peak(threads: int) -> dict:
    """GFLOP/s of one large Conv3d (384 -> 384, 3^3, 9 x 64^2): the machine's conv ceiling."""
    import torch

    set_threads(threads)
    conv = torch.nn.Conv3d(384, 384, 3, padding=1).eval()
    x = torch.randn(1, 384, 9, 64, 64)
    out = {}
    with torch.no_grad():
        flops = count_flops(lambda: conv(x))
        out["fp32"] = flops / timeit(lambda: conv(x), 3) / 1e9
        conv_cl = conv.to(memory_format=torch.channels_last_3d)
        x_cl = x.to(memory_format=torch.channels_last_3d)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out["bf16_channels_last"] = flops / timeit(lambda: conv_cl(x_cl), 3) / 1e9
    return {"gflop": flops / 1e9, "gflops": out}


def add_peak_fractions(row: dict, peak: dict[str, float] | None) -> dict:
    """The row's GFLOP/s as fractions of the conv peak of its precision and of the fp32 one."""
    if peak:
        key = "fp32" if row["mode"].startswith("fp32") else "bf16_channels_last"
        row["fraction_of_conv_peak"] = row["gflops"] / peak[key]
        row["fraction_of_fp32_conv_peak"] = row["gflops"] / peak["fp32"]
    return row


# -------------------------------------------------------------------------------- references
@cache
def references() -> dict:
    """The published figures of references.json, keyed for look-up:
    ``wfvae_time_s[(model, shape, op)]``, ``wfvae_peak_gb[(model, shape)]``, ``stdiff[name]``."""
    data = json.loads(REFERENCES.read_text())
    wfvae = data["wfvae"]
    return {
        "wfvae_time_s": {(r["model"], r["shape"], r["op"]): r["value"] for r in wfvae["time_s"]},
        "wfvae_peak_gb": {(r["model"], r["shape"]): tuple(r["value"]) for r in wfvae["peak_gb"]},
        "stdiff": dict(data["stdiff"]["values"]),
    }
