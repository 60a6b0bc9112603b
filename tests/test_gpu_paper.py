"""The GPU-on-paper estimates (scripts/bench/gpu_paper.py): the arithmetic against hand
computations, and the meta-device step simulation against a real CPU step (tiny WF-VAE)."""

from __future__ import annotations

import math

import pytest
import torch

from scripts.bench import gpu_paper as gp


def test_compute_bandwidth_and_ridge():
    # 1 TFLOP at 40 % of 1000 TFLOP/s: 1e12 / 4e14 = 2.5 ms.
    assert gp.compute_time_s(1e12, 1000.0, 0.4) == pytest.approx(2.5e-3)
    # 3 GB at 75 % of 4 TB/s: 3e9 / 3e12 = 1 ms.
    assert gp.bandwidth_time_s(3e9, 4.0, 0.75) == pytest.approx(1e-3)
    # Ridge: 400 TFLOP/s achievable over 3 TB/s achievable = 133.3 FLOP / byte.
    assert gp.ridge_flop_per_byte(1000.0, 4.0, 0.4, 0.75) == pytest.approx(400 / 3)


def test_segments_split_at_syncs_and_take_the_slower_bound():
    # Peak 1000 TFLOP/s x 0.5, 1 TB/s x 1.0, 10 us per kernel.
    ops = [
        ("conv", 1e12, 1e9),  # compute 2 ms > memory 1 ms
        ("other", 0.0, 4e9),  # memory 4 ms
        ("sync", 0.0, 0.0),
        ("conv", 5e9, 1e9),  # compute 0.01 ms < memory 1 ms
    ]
    segs = gp.segment_times(ops, 1000.0, 1.0, 0.5, 1.0, 10.0)
    assert segs == [
        pytest.approx((2e-3, 4e-3, 20e-6)),
        pytest.approx((0.0, 1e-3, 10e-6)),
    ]


def test_step_breakdown_by_hand():
    segs = [(2e-3, 4e-3, 20e-6), (0.0, 1e-6, 50e-6)]
    # Batch 1: segment 1 GPU-bound (6 ms), segment 2 host-bound (50 us), one sync of 15 us,
    # optimizer 1 ms of GPU against 0.2 ms of host.
    b = gp.step_breakdown(segs, 1e-3, 2e-4, batch=1, sync_s=15e-6)
    assert b["compute"] == pytest.approx(2e-3)
    assert b["bandwidth"] == pytest.approx(4e-3 + 1e-3)
    assert b["host"] == pytest.approx(50e-6)
    assert b["sync"] == pytest.approx(15e-6)
    assert b["step_s"] == pytest.approx(2e-3 + 5e-3 + 50e-6 + 15e-6)
    # Batch 100: segment 2's GPU time (0.1 ms) overtakes its host time.
    b = gp.step_breakdown(segs, 1e-3, 2e-4, batch=100, sync_s=15e-6)
    assert b["host"] == 0.0
    assert b["step_s"] == pytest.approx(100 * 6e-3 + 100 * 1e-6 + 15e-6 + 1e-3)


def test_max_batch_by_hand():
    # 80 GB x 0.9 - 1.5 GB = 70.5 GB usable; 10.5 GB fixed leaves 60 GB: 60 / 7 -> 8.
    assert gp.usable_bytes(80, 0.10, 1.5) == pytest.approx(70.5e9)
    assert gp.max_batch(80, 10.5e9, 7e9, 0.10, 1.5) == 8
    assert gp.max_batch(80, 10.5e9, 6e9, 0.10, 1.5) == 10  # exactly full fits
    assert gp.max_batch(80, 70e9, 1e9, 0.10, 1.5) == 0  # not even one sample


def test_estimate_row_by_hand():
    spec = {
        "memory_gb": 80,
        "bandwidth_tbs": 2.0,
        "bf16_dense_tflops": 1000.0,
        "tf32_dense_tflops": 500.0,
        "fp32_tflops": 50.0,
    }
    sim = {
        "params": 1_000_000,
        "param_tensors": 100,
        "ops": [("conv", 4e12, 1e9, "64>64 k3x3"), ("other", 0.0, 3e9, None)],
        "syncs": 0,
        "per_sample_bytes": 2e9,
        "fixed_bytes_sim": 1e9,
    }
    case = gp.Case("toy", "train", "x", 4, "")
    row = gp.estimate(sim, case, "toy", "GPU", spec, "bf16")
    a = gp.ASSUMPTIONS
    compute = 4e12 / (1000e12 * a["compute_fraction"]["bf16"])  # 10 ms
    memory = 3e9 / (2e12 * a["bandwidth_fraction"])  # 2 ms
    opt_gpu = 1e6 * a["optimizer_bytes_per_param"]["bf16"] / (2e12 * a["bandwidth_fraction"])
    opt_host = (10 + 3 * 1) * a["launch_us"] * 1e-6  # 100 tensors: one chunk
    opt = max(opt_gpu, opt_host)
    assert row["batch_1"]["step_s"] == pytest.approx(compute + memory + opt)
    assert row["at_config_batch"]["step_s"] == pytest.approx(4 * (compute + memory) + opt)
    # Fixed memory: max(simulated 1 GB, 1e6 x 18 B) = 1 GB; (70.5 - 1) / 2 -> 34.
    assert row["fixed_gb"] == pytest.approx(1.0)
    assert row["max_batch"] == math.floor(69.5 / 2)
    assert row["batch_1"]["bound"] == "compute"


def _tiny_wfvae_step(device: str):
    from wfvae.losses import WFVAELoss
    from wfvae.model import WFVAE, wfvae_config

    torch.manual_seed(0)
    with torch.device(device):
        model = WFVAE(**wfvae_config("tiny"))
    loss_fn = WFVAELoss(perceptual_weight=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)

    def step():
        x = torch.rand(1, 3, 9, 32, 32, device=device)
        out = model(x)
        loss, _ = loss_fn.generator_loss(x, out, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        del loss, out, x
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return model, step


def _simulated(device: str) -> gp.StepSimulator:
    model, step = _tiny_wfvae_step(device)
    sim = gp.StepSimulator(track_devices=(device,))
    sim.external(list(model.parameters()))
    sim.external(list(model.buffers()))
    with sim.active():
        step()  # AdamW's state
        sim.recording = True
        sim.reset_peak()
        step()
    return sim


def test_meta_simulation_matches_a_real_cpu_step():
    """Conv and matmul FLOPs as FlopCounterMode counts them on the real step (on the CPU, SDPA
    runs a kernel FlopCounterMode does not count; the simulation counts the GPU's flash
    kernels); the peak of live storage the same on meta as on real CPU tensors."""
    from scripts.bench.harness import count_flops

    meta, cpu = _simulated("meta"), _simulated("cpu")
    _, step = _tiny_wfvae_step("cpu")
    step()
    real_flops = count_flops(step)

    def flops(sim: gp.StepSimulator) -> float:
        ops = [o for st in sim.phases.values() for o in st.ops if o.kind != "attention"]
        return sum(o.flops for o in ops)

    assert flops(meta) == pytest.approx(real_flops, rel=1e-6)
    assert meta.external_bytes == cpu.external_bytes
    assert meta.peak == pytest.approx(cpu.peak, rel=0.02)
    assert meta.peak > 2 * meta.external_bytes  # activations, gradients and AdamW's state
