"""Section ``wfvae``: encode / decode time, FLOPs and peak RSS of batch-1 clips, ours in every
mode and, with ``--reference-wfvae DIR``, the published code in the same run.

Rows (``wfvae``): one per model x shape x op x mode, with the spec's reference time and the
same-run reference ratios where known; ``wfvae_summary``: encode + decode per model x shape x
mode; ``wfvae_reference``: the published code's own rows.
"""

from __future__ import annotations

import sys

from scripts.bench.harness import (
    Context,
    add_peak_fractions,
    bf16_autocast,
    count_flops,
    emit,
    in_process,
    references,
    set_mode_convs,
    set_threads,
    start_peak_window,
    timeit,
    window_peak_mb,
)

OPS = ("encode", "decode")


def build_wfvae(name: str):
    """The named WF-VAE configuration (seed 0), in eval mode."""
    import torch

    from wfvae.model import WFVAE, wfvae_config

    torch.manual_seed(0)
    return WFVAE(**wfvae_config(name)).eval()


def inference_call(model, x, op: str, mode: str, chunk: int | None = None):
    """``run()`` that encodes ``x`` ``[B, 3, T, H, W]`` or decodes its latent (made here, in
    fp32, before the layout / dtype change) with ``model`` in ``mode``: fp32 (the model's
    default conv algorithm: Winograd where it pays) | fp32_direct (direct convs only) | bf16_cl
    (bf16 autocast, channels-last) | bf16w_cl (bf16 weights and input, channels-last)."""
    import torch

    set_mode_convs(model, mode)
    with torch.no_grad():
        z = model.encode(x).posterior.mode()
    if mode.endswith("_cl"):
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        z = z.contiguous(memory_format=torch.channels_last_3d)
    if mode == "bf16w_cl":
        model, x, z = model.to(torch.bfloat16), x.to(torch.bfloat16), z.to(torch.bfloat16)

    def run():
        with torch.no_grad(), bf16_autocast(mode == "bf16_cl", x.device.type):
            if op == "encode":
                return model.encode(x, chunk_size=chunk).posterior.mode()
            return model.decode(z, chunk_size=chunk).video

    return run


def build_reference_wfvae(repo: str, net_kwargs: dict):
    """The published ``WFVAEModel`` (from the local checkout ``repo``, never part of this
    project) with the architecture of our ``net_kwargs``; the caller seeds and sets the mode."""
    sys.path.insert(0, repo)
    from causalvideovae.model.vae.modeling_wfvae import WFVAEModel

    from wfvae.reference import reference_config

    return WFVAEModel(**reference_config(net_kwargs))


def reference_inference_call(model, x, op: str, mode: str):
    """As :func:`inference_call` for the published model (fp32 | bf16 autocast, its own memory
    layout). The reference prints shapes on every call: callers keep stdout clean."""
    import torch

    with torch.no_grad():
        z = model.encode(x).latent_dist.mode()

    def run():
        model.temporal_size = None  # the reference locks the first length it sees
        with torch.no_grad(), bf16_autocast(mode != "fp32", x.device.type):
            if op == "encode":
                return model.encode(x).latent_dist.mode()
            return model.decode(z).sample

    return run


def wfvae_case(
    name: str,
    frames: int,
    size: int,
    op: str,
    mode: str,
    threads: int,
    repeats: int,
    chunk: int | None = None,
) -> dict:
    """Time one encode / decode of a batch-1 clip ``[1, 3, frames, size, size]`` (run it in a
    fresh process).

    mode: fp32 | fp32_direct | bf16_cl (bf16 autocast, channels-last) | bf16w_cl (bf16 weights
    and input, channels-last: half the weight memory, for inference); see
    :func:`inference_call`. Autocast runs with its weight-cast cache off: the cache keeps a
    bf16 copy of every weight for the whole call (+0.4 GB for WF-VAE-L) and was also slower here
    (4.1 vs 3.3 s, L decode 17 x 128^2).
    """
    import torch

    set_threads(threads)
    model = build_wfvae(name)
    x = torch.rand(1, 3, frames, size, size) * 2 - 1
    run = inference_call(model, x, op, mode, chunk)

    base = start_peak_window()
    seconds = timeit(run, repeats)
    peak = window_peak_mb()
    flops = count_flops(run, model)
    return {
        "model": name,
        "shape": f"{frames}x{size}",
        "op": op,
        "mode": mode,
        "chunk": chunk,
        "time_s": seconds,
        "gflop": flops / 1e9,
        "gflops": flops / seconds / 1e9,
        "peak_rss_mb": peak,
        "op_rss_mb": peak - base,
    }


def reference_wfvae_case(
    repo: str,
    name: str,
    frames: int,
    size: int,
    op: str,
    mode: str,
    threads: int,
    repeats: int,
    tiled: bool = False,
) -> dict:
    """The published WF-VAE code (a local checkout given by ``--reference-wfvae``, never part
    of this project), same architecture, input and process setup as :func:`wfvae_case`.

    mode fp32 | bf16 (autocast, as the spec's "reference under bf16 autocast" column, with the
    same cache setting as ours);
    ``tiled``: its own chunked decode (``enable_tiling``, chunk size chosen by the reference).
    """
    import contextlib
    import io

    import torch

    from wfvae.model import wfvae_config

    set_threads(threads)
    torch.manual_seed(0)
    model = build_reference_wfvae(repo, wfvae_config(name)).eval()
    x = torch.rand(1, 3, frames, size, size) * 2 - 1

    # The reference prints shapes and chunk choices on every call: keep stdout JSON only.
    with contextlib.redirect_stdout(io.StringIO()):
        run = reference_inference_call(model, x, op, mode)
        if tiled:
            model.enable_tiling()
        base = start_peak_window()
        seconds = timeit(run, repeats)
        peak = window_peak_mb()
    return {
        "model": name,
        "shape": f"{frames}x{size}",
        "op": op,
        "mode": mode,
        "implementation": "reference",
        "tiled": tiled,
        "time_s": seconds,
        "peak_rss_mb": peak,
        "op_rss_mb": peak - base,
    }


def time_reference(
    ctx: Context, name: str, frames: int, size: int, op: str, mode: str, tiled: bool = False
) -> dict:
    """`reference_wfvae_case` in a fresh process with the run's threads and repeats."""
    a = ctx.args
    case = (name, frames, size, op, mode, a.threads, a.repeats, tiled)
    return emit(in_process(reference_wfvae_case, a.reference_wfvae, *case))


def shapes(ctx: Context) -> list[tuple[int, int]]:
    """(frames, size) of the timed clips: 17 x 128^2, and 33 x 256^2 with ``--large``."""
    return [(17, 128)] + ([(33, 256)] if ctx.args.large else [])


def run(ctx: Context) -> dict:
    rows, ref_rows, summary = [], [], []
    for name in ctx.args.models:
        for frames, size in shapes(ctx):
            ours, refs = _time_model(ctx, name, frames, size)
            rows += ours.values()
            ref_rows += refs.values()
            for mode in ctx.args.modes:
                summary.append(_summary_row(name, f"{frames}x{size}", mode, ours, refs))
    out = {"wfvae": rows, "wfvae_summary": summary}
    if ref_rows:
        out["wfvae_reference"] = ref_rows
    return out


def _time_model(
    ctx: Context, name: str, frames: int, size: int
) -> tuple[dict[tuple[str, str], dict], dict[tuple[str, str], dict]]:
    """Rows of ours and of the published code, keyed by (op, mode), in the order timed."""
    a = ctx.args
    spec = references()["wfvae_time_s"]
    ours: dict[tuple[str, str], dict] = {}
    refs: dict[tuple[str, str], dict] = {}
    for op in OPS:
        if a.reference_wfvae:
            for mode in ["fp32"] + (["bf16"] if any(m.startswith("bf16") for m in a.modes) else []):
                refs[op, mode] = time_reference(ctx, name, frames, size, op, mode)
        for mode in a.modes:
            r = in_process(wfvae_case, name, frames, size, op, mode, a.threads, a.repeats)
            ref = spec.get((name, r["shape"], op))
            if ref:
                r["spec_reference_time_s"] = ref
                r["speedup_vs_spec_reference"] = ref / r["time_s"]
            for ref_mode in ("fp32", "bf16"):
                if (op, ref_mode) in refs:
                    r[f"speedup_vs_reference_{ref_mode}"] = (
                        refs[op, ref_mode]["time_s"] / r["time_s"]
                    )
            ours[op, mode] = emit(add_peak_fractions(r, ctx.conv_peak))
    return ours, refs


def _summary_row(name: str, shape: str, mode: str, ours: dict, refs: dict) -> dict:
    """Encode + decode of one model x shape x mode, against the spec and the same-run code."""
    row = {
        "model": name,
        "shape": shape,
        "mode": mode,
        "encode_plus_decode_s": ours["encode", mode]["time_s"] + ours["decode", mode]["time_s"],
        "peak_rss_mb": max(ours[op, mode]["peak_rss_mb"] for op in OPS),
    }
    spec = [references()["wfvae_time_s"].get((name, shape, op)) for op in OPS]
    if all(spec):
        row["speedup_vs_spec_reference"] = sum(spec) / row["encode_plus_decode_s"]
    peak_gb = references()["wfvae_peak_gb"]
    if (name, shape) in peak_gb:
        row["spec_reference_peak_gb"] = peak_gb[name, shape]
    for ref_mode in ("fp32", "bf16"):
        if ("encode", ref_mode) in refs:
            ref_s = sum(refs[op, ref_mode]["time_s"] for op in OPS)
            row[f"reference_{ref_mode}_encode_plus_decode_s"] = ref_s
            row[f"speedup_vs_reference_{ref_mode}"] = ref_s / row["encode_plus_decode_s"]
            row[f"reference_{ref_mode}_peak_rss_mb"] = max(
                refs[op, ref_mode]["peak_rss_mb"] for op in OPS
            )
    return row
