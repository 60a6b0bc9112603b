"""Section ``wfvae_chunked``: full against chunked decode of longer clips (bc64, 128^2, fp32),
time and the process's peak RSS growth during the call (output video included); with
``--reference-wfvae`` also the published code's own tiled decode."""

from __future__ import annotations

from scripts.bench.harness import Context, emit, in_process
from scripts.bench.wfvae import time_reference, wfvae_case

FRAMES = (33, 65, 129)
CHUNK = 2  # latent frames per chunk: what the reference picks for these lengths


def run(ctx: Context) -> dict:
    a = ctx.args
    rows = []
    for frames in FRAMES:
        case = (wfvae_case, "bc64", frames, 128, "decode", "fp32", a.threads, a.repeats)
        full = in_process(*case)
        chunk = in_process(*case, CHUNK)
        row = {
            "frames": frames,
            "full_s": full["time_s"],
            "chunked_s": chunk["time_s"],
            "chunked_over_full": chunk["time_s"] / full["time_s"],
            "full_op_rss_mb": full["op_rss_mb"],
            "chunked_op_rss_mb": chunk["op_rss_mb"],
            "output_mb": 3 * frames * 128 * 128 * 4 / 2**20,
        }
        if a.reference_wfvae and frames <= 65:
            ref_full = time_reference(ctx, "bc64", frames, 128, "decode", "fp32")
            ref_tiled = time_reference(ctx, "bc64", frames, 128, "decode", "fp32", tiled=True)
            row["reference_full_s"] = ref_full["time_s"]
            row["reference_chunked_s"] = ref_tiled["time_s"]
            row["reference_chunked_over_full"] = ref_tiled["time_s"] / ref_full["time_s"]
            row["reference_chunked_op_rss_mb"] = ref_tiled["op_rss_mb"]
        rows.append(emit(row))
    return {"wfvae_chunked_decode": rows}
