"""Section ``winograd`` (only when named): Winograd F(4x4, 3x3) (wfvae/winograd.py) against
oneDNN's direct convolution, float32, one conv at a time, forward (no grad) and forward +
backward (input, weight and bias gradients), at the conv shapes of WF-VAE-L's 17 x 128^2 decode
and of the bc64 9 x 128^2 training step, and at the narrow shapes where it does not pay (below
``wfvae.winograd.INFERENCE_MIN`` / ``TRAINING_MIN_BATCH1``, kept on the direct conv; the section
times batch 1).

Rows: shape, ``applies_inference`` / ``applies_training`` (what ``winograd_applies`` decides
without and with a gradient), both times, the direct conv's
FLOPs, effective GFLOP/s (direct FLOPs over time) and their fraction of the fp32 conv peak, and
``speedup`` (direct time over Winograd time).
"""

from __future__ import annotations

from scripts.bench.harness import Context, emit, in_process, set_threads, timeit

# (Cin, Cout, time-padded input frames, H, W, time taps, where)
SHAPES = (
    (896, 896, 11, 32, 32, 3, "WF-VAE-L decoder, 32^2"),
    (768, 768, 11, 32, 32, 3, "WF-VAE-L decoder, 32^2"),
    (384, 384, 11, 64, 64, 3, "WF-VAE-L decoder, 64^2"),
    (384, 384, 9, 64, 64, 1, "WF-VAE-L decoder, per-frame 2D, 64^2"),
    (768, 768, 7, 16, 16, 3, "WF-VAE-L decoder mid, 16^2"),
    (192, 192, 11, 64, 64, 3, "WF-VAE-L, 64^2"),
    (320, 320, 7, 32, 32, 3, "bc64 decoder, 32^2"),
    (256, 256, 7, 32, 32, 3, "bc64, 32^2"),
    (256, 256, 5, 16, 16, 3, "bc64 mid, 16^2 (inference: too few positions)"),
    (128, 128, 7, 64, 64, 3, "bc64, 64^2"),
    (64, 64, 7, 64, 64, 3, "bc64 encoder, 64^2"),
    (64, 64, 5, 32, 96, 3, "flagship (wfvae_kitti), 32 x 96"),
    (128, 128, 5, 16, 48, 3, "flagship mid, 16 x 48"),
)


def conv_case(
    cin: int, cout: int, t: int, h: int, w: int, kt: int, threads: int, repeats: int
) -> dict:
    """Time one conv both ways, in a fresh process."""
    import torch

    from wfvae.causal_conv import conv3d
    from wfvae.winograd import winograd_applies, winograd_conv3d

    set_threads(threads)
    torch.manual_seed(0)
    cl = torch.channels_last_3d
    x = torch.randn(1, cin, t, h, w).contiguous(memory_format=cl)
    wt = (torch.randn(cout, cin, kt, 3, 3) / (cin * 9 * kt) ** 0.5).contiguous(memory_format=cl)
    b = torch.zeros(cout)
    args = ((1, 1, 1), (0, 1, 1), (1, 1, 1), 1)

    def direct():
        return conv3d(x, wt, b, *args)

    def winograd():
        return winograd_conv3d(x, wt, b)

    with torch.no_grad():
        ref = direct()
        err = ((winograd() - ref).abs().max() / ref.abs().max()).item()
        fwd = {"direct": timeit(direct, repeats), "winograd": timeit(winograd, repeats)}
    flop = 2 * ref.numel() * cin * kt * 9
    applies_inference = winograd_applies(x, wt, *args)
    params = [p.requires_grad_() for p in (x, wt, b)]
    grad = torch.randn_like(ref)
    train = {
        name: timeit(lambda f=f: torch.autograd.grad(f(), params, grad), repeats)
        for name, f in (("direct", direct), ("winograd", winograd))
    }
    return {
        "cin": cin,
        "cout": cout,
        "input": [1, cin, t, h, w],
        "kernel": [kt, 3, 3],
        "applies_inference": applies_inference,
        "applies_training": winograd_applies(x, wt, *args),
        "max_rel_diff": err,
        "forward_gflop": flop / 1e9,
        "forward_direct_s": fwd["direct"],
        "forward_winograd_s": fwd["winograd"],
        "forward_speedup": fwd["direct"] / fwd["winograd"],
        "train_gflop": 3 * flop / 1e9,
        "train_direct_s": train["direct"],
        "train_winograd_s": train["winograd"],
        "train_speedup": train["direct"] / train["winograd"],
    }


def run(ctx: Context) -> dict:
    a = ctx.args
    peak = (ctx.conv_peak or {}).get("fp32")
    rows = []
    for *shape, where in SHAPES:
        row = {"where": where, **in_process(conv_case, *shape, a.threads, a.repeats)}
        for part in ("forward", "train"):
            for algo in ("direct", "winograd"):
                gflops = row[f"{part}_gflop"] / row[f"{part}_{algo}_s"]
                row[f"{part}_{algo}_effective_gflops"] = gflops
                if peak:
                    row[f"{part}_{algo}_fraction_of_fp32_peak"] = gflops / peak
        rows.append(emit(row))
    return {"winograd": rows}
