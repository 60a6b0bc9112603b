"""The ``wfvae_train`` benchmark's bookkeeping: which published step each of our rows is
compared with. (The timings themselves are minutes: README, Benchmarks.)"""

from __future__ import annotations

from types import SimpleNamespace

from scripts.bench import wfvae_train
from scripts.benchmark import parse_args


def test_each_row_has_its_precision_ratio_and_both_cross_precision_ratios(monkeypatch):
    # The published step: 4.0 s in fp32, 2.0 s under bf16 autocast; ours 2.0 s (fp32 rows) and
    # 0.5 s (bf16 rows). The bf16 goal is ours in bf16 against the published fp32 step.
    calls = []

    def fake(fn, *args):
        mode = args[-3] if fn.__name__ == "reference_train_case" else args[3]
        calls.append((fn.__name__, mode))
        if fn.__name__ == "reference_train_case":
            return {"mode": mode, "time_s": 4.0 if mode == "fp32" else 2.0, "gflop": 1.0}
        return {"mode": mode, "time_s": 0.5 if mode == "bf16_cl" else 2.0}

    monkeypatch.setattr(wfvae_train, "in_process", fake)
    monkeypatch.setattr(wfvae_train, "add_peak_fractions", lambda row, peak: row)
    args = parse_args(["--only", "wfvae_train", "--models", "bc64", "--reference-wfvae", "/x"])
    out = wfvae_train.run(SimpleNamespace(args=args, conv_peak=None))

    ref, full, matched = "reference_train_case", "ours_train_case", "ours_matched_case"
    assert calls == [
        (ref, "fp32"), (full, "fp32"), (matched, "fp32"),
        (full, "fp32_direct"), (matched, "fp32_direct"),
        (ref, "bf16_cl"), (full, "bf16_cl"), (matched, "bf16_cl"),
    ]  # fmt: skip
    ours = [r for r in out["wfvae_train"] if "precision" in r]
    assert [(r["mode"], r["speedup_vs_reference"]) for r in ours] == [
        ("fp32", 2.0), ("fp32", 2.0), ("fp32_direct", 2.0), ("fp32_direct", 2.0),
        ("bf16_cl", 4.0), ("bf16_cl", 4.0),
    ]  # fmt: skip
    bf16 = ours[-1]
    assert (bf16["speedup_vs_reference_fp32"], bf16["speedup_vs_reference_bf16"]) == (8.0, 4.0)
    assert (ours[0]["speedup_vs_reference_fp32"], ours[0]["speedup_vs_reference_bf16"]) == (
        2.0,
        1.0,
    )


def test_without_the_published_code_rows_carry_no_ratio(monkeypatch):
    monkeypatch.setattr(wfvae_train, "in_process", lambda fn, *a: {"mode": a[3], "time_s": 1.0})
    monkeypatch.setattr(wfvae_train, "add_peak_fractions", lambda row, peak: row)
    args = parse_args(["--only", "wfvae_train", "--models", "bc64"])
    rows = wfvae_train.run(SimpleNamespace(args=args, conv_peak=None))["wfvae_train"]
    assert len(rows) == 6
    assert not any(k.startswith("speedup") for r in rows for k in r)
