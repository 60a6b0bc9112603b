"""Hydra callback for sweeps: a start-up check, a summary table of every trial, a failing exit.

A trial that raises is recorded by train.py (FAILED.txt in its run directory) and the sweep goes
on; at the end `SweepSummary` reads every job directory of the sweep (`.hydra/overrides.yaml`,
`metrics_final.json`, `FAILED.txt`: this works with any launcher, in-process or SLURM), prints
one table, writes it as `summary.csv` in the sweep directory, and exits with status 1 when any
trial failed (`fail_on_trial_failure`). Hydra turns exceptions raised in callbacks into warnings,
so both refusals here end the process with `SystemExit` after logging the reason.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


# Exit statuses: a sweep refused at start-up (a config error), a sweep with failed trials.
EXIT_REFUSED, EXIT_TRIALS_FAILED = 2, 1


def trial_rows(sweep_dir: Path, metric: str | None) -> list[dict[str, Any]]:
    """One row per job directory (numbered subfolders) of a sweep."""
    rows = []
    jobs = sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    for job in jobs:
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        metrics_file = job / "metrics_final.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        if (job / "FAILED.txt").is_file():
            status = "failed"
        elif metrics.get("status") == "preempted":
            status = "preempted"
        elif not metrics_file.is_file():
            status = "incomplete"
        else:
            status = "ok"
        value = metrics.get(metric) if metric else None
        rows.append(
            {
                "job": int(job.name),
                "status": status,
                "objective": value if isinstance(value, int | float) else None,
                "overrides": " ".join(overrides),
                "dir": str(job),
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]], metric: str | None) -> str:
    head = f"{'job':>4}  {'status':<10}  {metric or 'objective':>14}  overrides"
    lines = [head, "-" * len(head)]
    for r in rows:
        obj = r["objective"]
        text = "-" if obj is None else (f"{obj:.6g}" if math.isfinite(obj) else str(obj))
        lines.append(f"{r['job']:>4}  {r['status']:<10}  {text:>14}  {r['overrides']}")
    return "\n".join(lines)


class SweepSummary(Callback):
    """See the module docstring. `fail_on_trial_failure=false` keeps exit status 0."""

    def __init__(self, fail_on_trial_failure: bool = True) -> None:
        self.fail_on_trial_failure = bool(fail_on_trial_failure)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # The per-trial check in wavecast.run.check_launch still applies to swept trainers.
        from wavecast.config import ConfigError
        from wavecast.run import check_launch

        try:
            check_launch(config, multirun=True)
        except ConfigError as err:
            log.error("sweep refused before any trial: %s", err)
            print(f"Sweep refused before any trial: {err}", file=sys.stderr)
            raise SystemExit(EXIT_REFUSED) from None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        metric = config.get("optimized_metric")
        rows = trial_rows(sweep_dir, metric)
        if not rows:
            return
        with open(sweep_dir / "summary.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        table = format_table(rows, metric)
        bad = [r for r in rows if r["status"] != "ok"]
        log.info("sweep summary (%s):\n%s", sweep_dir / "summary.csv", table)
        print(f"\nSweep {sweep_dir}: {len(rows) - len(bad)} of {len(rows)} trials ok\n{table}")
        if bad and self.fail_on_trial_failure:
            message = (
                f"{len(bad)} of {len(rows)} trials did not finish ok (jobs "
                f"{', '.join(str(r['job']) for r in bad)}; see FAILED.txt in their directories "
                f"and {sweep_dir / 'summary.csv'}). hydra.callbacks.sweep_summary."
                "fail_on_trial_failure=false keeps the exit status 0."
            )
            log.error(message)
            print(message, file=sys.stderr)
            raise SystemExit(EXIT_TRIALS_FAILED)
