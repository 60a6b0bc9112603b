"""Benchmark harness and sections of scripts/benchmark.py (one file per section)."""
