"""The STDiff benchmark's mode grammar: ``+compile`` (the UNet under torch.compile, stdiff_train
only) and ``--stdiff-adjoint`` reaching the reduced rows. (The compiled figures themselves are
minutes of compiling: README, Benchmarks.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from scripts.bench import stdiff_train
from scripts.bench.stdiff import eager_modes, split_compile, stdiff_model
from scripts.benchmark import parse_args


def test_compile_suffix_is_split_off():
    assert split_compile("bf16sde_cl@1+compile") == ("bf16sde_cl@1", True)
    assert split_compile("fp32_cl+compile") == ("fp32_cl", True)
    assert split_compile("bf16sde_cl@1") == ("bf16sde_cl@1", False)


def test_compile_modes_are_refused_outside_stdiff_train():
    # Left to stdiff_model, "@1+compile" would reach int() and fail without naming the mode.
    with pytest.raises(ValueError, match=r"'bf16sde_cl@1\+compile'.*stdiff_train only"):
        stdiff_model("tiny", "bf16sde_cl@1+compile")
    ctx = SimpleNamespace(args=SimpleNamespace(stdiff_modes=["fp32", "bf16_cl+compile", "fp32@1"]))
    assert eager_modes(ctx) == ["fp32", "fp32@1"]


@pytest.mark.parametrize(("flag", "expected"), [("off", [False]), ("both", [True, False])])
def test_stdiff_adjoint_picks_the_reduced_rows(monkeypatch, flag, expected):
    calls = []

    def record(fn, config, mode, threads, repeats, adjoint=True, checkpointing=False):
        calls.append((fn.__name__, config, mode, adjoint))
        return {"mode": mode}

    monkeypatch.setattr(stdiff_train, "in_process", record)
    monkeypatch.setattr(stdiff_train, "add_reference_ratios", lambda row, peak: row)
    args = parse_args(
        ["--only", "stdiff_train", "--stdiff-modes", "fp32", "bf16_cl+compile"]
        + ["--stdiff-adjoint", flag]
    )
    ctx = SimpleNamespace(args=args, stdiff_peaks={args.threads: 1.0})
    out = stdiff_train.run_reduced(ctx)
    assert calls == [
        ("stdiff_train_case", "reduced", mode, adjoint)
        for mode in ("fp32", "bf16_cl+compile")
        for adjoint in expected
    ]
    assert [r["mode"] for r in out["stdiff_train_reduced"]] == [c[2] for c in calls]


def test_published_step_brackets_our_rows_and_ratios_take_the_faster(monkeypatch):
    # The machine's speed drifts within a run: the published step is timed before and after
    # ours, and every ratio is against the faster of the two (the conservative one).
    published_times = iter([3.0, 2.0])
    calls = []

    def fake(fn, *args, **kwargs):
        calls.append(fn.__name__)
        if fn.__name__ == "reference_step_case":
            return {"time_s": next(published_times)}
        return {"mode": args[1], "time_s": 0.5}

    monkeypatch.setattr(stdiff_train, "in_process", fake)
    monkeypatch.setattr(stdiff_train, "add_reference_ratios", lambda row, peak: row)
    args = parse_args(
        ["--only", "stdiff_train", "--stdiff-modes", "fp32", "bf16_cl", "--stdiff-adjoint", "on"]
        + ["--reference-stdiff", "/nonexistent"]
    )
    ctx = SimpleNamespace(args=args, stdiff_peaks={args.threads: 1.0})
    out = stdiff_train.run_reduced(ctx)
    assert calls == ["reference_step_case", "stdiff_train_case", "stdiff_train_case"] + [
        "reference_step_case"
    ]
    assert [r["when"] for r in out["stdiff_train_reduced_published"]] == ["before", "after"]
    assert [r["speedup_vs_published_same_run"] for r in out["stdiff_train_reduced"]] == [4.0, 4.0]


def test_rounds_interleave_the_published_step_and_each_round_takes_its_own_brackets(monkeypatch):
    # Rounds P r1 P r2 P: a row of round k is against the faster published timing around it,
    # not against the run's fastest (which may come from another hour).
    published_times = iter([3.0, 4.0, 2.0])
    ours_times = iter([1.0, 0.5, 2.0, 1.0])
    calls = []

    def fake(fn, *args, **kwargs):
        calls.append(fn.__name__)
        if fn.__name__ == "reference_step_case":
            return {"time_s": next(published_times)}
        return {
            "mode": args[1],
            "threads": args[2],
            "adjoint": kwargs["adjoint"],
            "time_s": next(ours_times),
        }

    monkeypatch.setattr(stdiff_train, "in_process", fake)
    monkeypatch.setattr(stdiff_train, "add_reference_ratios", lambda row, peak: row)
    args = parse_args(
        ["--only", "stdiff_train", "--stdiff-modes", "fp32", "bf16_cl", "--stdiff-adjoint", "off"]
        + ["--reference-stdiff", "/nonexistent", "--stdiff-rounds", "2"]
    )
    ctx = SimpleNamespace(args=args, stdiff_peaks={args.threads: 1.0})
    out = stdiff_train.run_reduced(ctx)
    ref, case = "reference_step_case", "stdiff_train_case"
    assert calls == [ref, case, case, ref, case, case, ref]
    assert [r["when"] for r in out["stdiff_train_reduced_published"]] == [
        "before",
        "after round 1",
        "after",
    ]
    rows = out["stdiff_train_reduced"]
    assert [(r["mode"], r["round"]) for r in rows] == [
        ("fp32", 1),
        ("bf16_cl", 1),
        ("fp32", 2),
        ("bf16_cl", 2),
    ]
    # Round 1 between 3.0 and 4.0 s (against 3.0), round 2 between 4.0 and 2.0 s (against 2.0).
    assert [r["speedup_vs_published_same_run"] for r in rows] == [3.0, 6.0, 1.0, 2.0]
    summary = {s["mode"]: s for s in out["stdiff_train_reduced_rounds"]}
    assert summary["fp32"]["speedup_vs_published_same_run_by_round"] == [3.0, 1.0]
    assert summary["fp32"]["speedup_vs_published_same_run_median"] == 2.0
    assert summary["bf16_cl"]["speedup_vs_published_same_run_min"] == 2.0


def test_rounds_must_be_positive():
    args = parse_args(["--only", "stdiff_train", "--stdiff-rounds", "0"])
    ctx = SimpleNamespace(args=args, stdiff_peaks={args.threads: 1.0})
    with pytest.raises(ValueError, match="--stdiff-rounds must be >= 1, got 0"):
        stdiff_train.run_reduced(ctx)
