"""What the STDiff sections share: the named configurations, their frame sizes, the autocast
of a mode, the conv peak per thread count and the ratios to the published code's figures.

Modes: fp32 | fp32_cl | bf16 | bf16_cl | bf16sde_cl (_cl: channels-last model and input;
bf16sde: the SDE's drift / diffusion nets in bf16 too, TDE ``sde_compute_dtype``), each
optionally with ``@N``: the SDE solve on N intra-op threads (TDE ``sde_threads``), and with
``+compile``: the UNet under ``torch.compile`` (what ``compile=true`` does in training,
STDiffModule.compile_networks; timed after the compile, only in ``stdiff_train``). Sizes (H, W):
reduced 64 x 128, kitti_range 64 x 512, tiny 16 x 32.
"""

from __future__ import annotations

from scripts.bench.harness import Context, add_peak_fractions, conv_peak, in_process, references

STDIFF_SIZES = {"reduced": (64, 128), "kitti_range": (64, 512), "tiny": (16, 32)}


def stdiff_threads(ctx: Context) -> list[int]:
    """Thread counts of the STDiff sections (``--stdiff-threads``, default ``--threads``)."""
    return ctx.args.stdiff_threads or [ctx.args.threads]


def conv_peaks(ctx: Context) -> dict:
    """The conv peak at every STDiff thread count (kept in ``ctx.stdiff_peaks``)."""
    ctx.stdiff_peaks = {n: in_process(conv_peak, n)["gflops"] for n in stdiff_threads(ctx)}
    return {"stdiff_conv_peak_gflops": {str(n): p for n, p in ctx.stdiff_peaks.items()}}


COMPILE_SUFFIX = "+compile"


def split_compile(mode: str) -> tuple[str, bool]:
    """``"bf16sde_cl@1+compile"`` -> ``("bf16sde_cl@1", True)``; a mode without the suffix ->
    ``(mode, False)``."""
    if mode.endswith(COMPILE_SUFFIX):
        return mode[: -len(COMPILE_SUFFIX)], True
    return mode, False


def eager_modes(ctx: Context) -> list[str]:
    """``--stdiff-modes`` without the ``+compile`` ones (the sections other than stdiff_train)."""
    return [m for m in ctx.args.stdiff_modes if not split_compile(m)[1]]


def stdiff_model(config: str, mode: str, adjoint: bool = True, checkpointing: bool = False):
    """The named STDiff configuration (seed 0) in a mode of the module docstring."""
    import torch

    from stdiff import STDiff, stdiff_config

    if split_compile(mode)[1]:
        raise ValueError(
            f"STDiff benchmark mode {mode!r}: {COMPILE_SUFFIX} is taken by stdiff_train only "
            f"(it compiles after counting the eager step's FLOPs)"
        )
    torch.manual_seed(0)
    mode, _, sde_threads = mode.partition("@")
    # bf16sde_cl: bf16_cl with the SDE's nets under bf16 autocast too (TDE sde_compute_dtype).
    tde = {
        "adjoint": adjoint,
        "sde_compute_dtype": "bfloat16" if mode.startswith("bf16sde") else "float32",
        "sde_threads": int(sde_threads) if sde_threads else None,
    }
    model = STDiff(**stdiff_config(config, tde=tde))
    model.unet.set_gradient_checkpointing(checkpointing)
    if mode.endswith("_cl"):
        model = model.to_channels_last()
    return model


def benchmark_clip(h: int, w: int, batch: int = 1, device: str = "cpu") -> tuple:
    """The benchmarks' fixed sequence batch: ``(vo, vp, idx_o, idx_p)``, observed and predicted
    frames ``[batch, 3, 1, h, w]`` in [-1, 1) (seeded, vo drawn first) at times 0..2 and 3..5."""
    import torch

    g = torch.Generator().manual_seed(0)
    vo = (torch.rand(batch, 3, 1, h, w, generator=g) * 2 - 1).to(device)
    vp = (torch.rand(batch, 3, 1, h, w, generator=g) * 2 - 1).to(device)
    return vo, vp, torch.tensor([0.0, 1.0, 2.0]), torch.tensor([3.0, 4.0, 5.0])


def training_step_parts(
    config: str,
    mode: str,
    adjoint: bool = True,
    checkpointing: bool = False,
    device: str = "cpu",
    batch: int = 1,
) -> tuple:
    """The benchmarked STDiff training step's pieces: ``(model, opt, loss_fn)``.

    ``loss_fn()``: the diffusion loss of one fixed batch (``batch`` sequences of 3 -> 3 frames
    at the configuration's size, seeded; idx_o 0..2, idx_p 3..5) under the mode's autocast, on
    ``device``; ``opt``: AdamW with the reference's betas and weight decay (fused kernel, as
    configs/model/stdiff.yaml). The caller does zero_grad, backward, clipping at 1.0 and the step
    (the profiler marks them).
    """
    import torch

    model = stdiff_model(config, mode, adjoint, checkpointing).to(device)
    sched = model.make_scheduler()
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, fused=True
    )
    vo, vp, idx_o, idx_p = benchmark_clip(*STDIFF_SIZES[config], batch=batch, device=device)
    device_type = torch.device(device).type

    def loss_fn():
        with autocast(mode, device_type):
            loss, _ = model.training_loss(
                vo, vp, idx_o, idx_p, sched, generator=torch.Generator().manual_seed(1)
            )
        return loss

    return model, opt, loss_fn


def train_step(model, opt, loss_fn):
    """The benchmarked step from :func:`training_step_parts`' pieces: loss, zero_grad,
    backward, gradient clipping at 1.0, AdamW."""
    import torch

    def step() -> None:
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def autocast(mode: str, device_type: str = "cpu"):
    """bf16 autocast for the bf16 modes (weight-cast cache on, as measured so far)."""
    import torch

    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=mode.startswith("bf16"))


def add_reference_ratios(row: dict, peak: dict | None) -> dict:
    """Reference ratios and fractions of the conv peak for a training / UNet row."""
    ref = references()["stdiff"]
    add_peak_fractions(row, peak)
    if "adjoint" in row and row["config"] == "reduced":
        row["speedup_vs_reference_3.3s"] = ref["reduced_train_step_s"] / row["time_s"]
        row["speedup_vs_reference_4s"] = ref["reduced_train_step_s_rough"] / row["time_s"]
        # The reference's FLOP count of the same step, per our second.
        row["reference_gflop_per_s"] = ref["reduced_train_gflop"] / row["time_s"]
        # The machine-independent form of the speed-up (2x = 40 %, 3x = 60 %): the
        # reference's 3.3 s was timed on another day, at 20 % of the fp32 peak.
        if peak:
            row["reference_gflop_fraction_of_fp32_peak"] = (
                row["reference_gflop_per_s"] / peak["fp32"]
            )
    elif "adjoint" in row and row["config"] == "kitti_range":
        row["speedup_vs_reference_98s"] = ref["kitti_range_train_step_s"] / row["time_s"]
        gb = row["peak_minus_baseline_mb"] / 1024
        row["peak_minus_baseline_over_reference_22.3gb"] = gb / ref["kitti_range_train_peak_gb"]
    elif "cached_motion_time_s" in row and row["config"] == "kitti_range":
        row["speedup_vs_reference_6.4s"] = ref["kitti_range_unet_eval_s"] / row["time_s"]
        row["cached_speedup_vs_reference_6.4s"] = (
            ref["kitti_range_unet_eval_s"] / row["cached_motion_time_s"]
        )
    return row
