"""The GPU benchmark section (scripts/bench/gpu.py) on the CPU: its arithmetic against closed
forms, the batch reaching the steps, and a failing or late case recorded without stopping the
run. (The figures themselves need a GPU: docs/benchmarks/.)"""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from scripts.bench import gpu
from scripts.bench.harness import Context


def test_measure_counts_a_matmul_in_closed_form():
    n = 96
    a, b = torch.randn(n, n), torch.randn(n, n)
    ceil = {"matmul_fp32_tflops": 2.0, "conv_fp32_tflops": 4.0}
    row = gpu.measure(lambda: a @ b, "cpu", 3, ceil, "fp32")
    assert row["gflop"] == pytest.approx(2 * n**3 / 1e9)  # 2 n^3 FLOPs
    assert row["time_s"] == pytest.approx(sorted(row["times_s"])[1])  # median of 3
    assert row["tflops"] == pytest.approx(row["gflop"] / row["time_s"] / 1e3)
    assert row["fraction_of_matmul_peak"] == pytest.approx(row["tflops"] / 2.0)
    assert row["fraction_of_conv_peak"] == pytest.approx(row["tflops"] / 4.0)
    # bf16 rows are held against the bf16 ceilings.
    ceil16 = {"matmul_bf16_tflops": 8.0}
    row16 = gpu.measure(lambda: a @ b, "cpu", 1, ceil16, "bf16_cl", flops=10**9)
    assert row16["gflop"] == 1.0 and row16["peak_key"] == "bf16"
    assert row16["fraction_of_matmul_peak"] == pytest.approx(row16["tflops"] / 8.0)


def test_rel_err():
    x = torch.randn(1000, dtype=torch.float64)
    assert gpu.rel_err(x * (1 + 1e-3), x) == pytest.approx(1e-3, rel=1e-6)
    assert gpu.rel_err(x, x) == 0.0


def test_stdiff_case_runs_the_batch_it_names():
    one = gpu.stdiff_case("cpu", {}, 1, "tiny", "fp32", 1, False)
    three = gpu.stdiff_case("cpu", {}, 1, "tiny", "fp32", 3, False)
    # Every conv / matmul of the step runs per sample (the optimizer counts no FLOPs).
    assert three["gflop"] == pytest.approx(3 * one["gflop"], rel=1e-6)
    assert three["samples_per_s"] == pytest.approx(3 / three["time_s"])
    assert (three["batch"], three["adjoint"], three["compiled_unet"]) == (3, False, False)


def test_wfvae_train_case_batch_and_gan():
    g1 = gpu.wfvae_train_case("cpu", {}, 1, "tiny", 5, 32, "fp32", 1, False)
    g2 = gpu.wfvae_train_case("cpu", {}, 1, "tiny", 5, (32, 48), "fp32", 2, False)
    assert g2["gflop"] == pytest.approx(2 * 1.5 * g1["gflop"], rel=1e-6)  # 2 x the pixels
    assert g2["shape"] == "5x32x48"
    gan = gpu.wfvae_train_case("cpu", {}, 1, "tiny", 5, 32, "fp32", 1, True)
    assert gan["gflop"] > g1["gflop"]  # + the discriminator's forward / backward


def test_run_records_failures_and_budget_skips(tmp_path, monkeypatch):
    calls = []

    def ok(device, ceil, repeats, tag):
        calls.append(tag)
        return {"mode": "fp32", "tag": tag}

    def broken(device, ceil, repeats):
        raise RuntimeError("out of memory (planted)")

    monkeypatch.setattr(gpu, "ceilings", lambda device, sizes, repeats: {"matmul_n": 1})
    monkeypatch.setattr(gpu, "check_wfvae", lambda device, sizes: {"what": "w"})
    monkeypatch.setattr(gpu, "check_stdiff", lambda device: {"what": "s"})
    monkeypatch.setattr(
        gpu,
        "plan",
        lambda a, sizes: [
            ("stdiff_train", ok, ("first",), {}),
            ("stdiff_train", broken, (), {}),
            ("wfvae_infer", ok, ("other group",), {}),
            ("stdiff_train", ok, ("last",), {}),
        ],
    )
    args = argparse.Namespace(
        gpu_device="cpu",
        gpu_quick=True,
        gpu_budget_s=1e9,
        gpu_groups=["check", "stdiff_train"],
        out=str(tmp_path),
        repeats=1,
        reference_wfvae=None,
    )
    out = gpu.run(Context(args))
    assert calls == ["first", "last"]  # the failure did not stop the run; the group filter held
    assert [r["tag"] for r in out["gpu_rows"]] == ["first", "last"]
    (err,) = out["gpu_errors"]
    assert "out of memory (planted)" in err["error"] and err["group"] == "stdiff_train"
    assert err["case"] == "broken('cpu', 1)"
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert len(saved["gpu_rows"]) == 2 and saved["gpu_checks"] == out["gpu_checks"]

    # Past the budget every case is skipped, and says so.
    calls.clear()
    args.gpu_budget_s, args.gpu_groups = -1.0, None
    out = gpu.run(Context(args))
    assert calls == [] and out["gpu_rows"] == []
    assert {e["error"] for e in out["gpu_errors"]} == {"skipped: budget"}
