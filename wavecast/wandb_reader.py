"""Read back what an offline wandb run logged (used by tests and for quick inspection).

wandb >= 0.30 writes an offline run only as `run-<id>.wandb`: LevelDB-log framed records
(32 KiB blocks; each record a 7-byte header: CRC32, little-endian length, type FULL / FIRST /
MIDDLE / LAST) holding `wandb_internal_pb2.Record` protobufs. wandb ships no reader for it any
more (its writer is in the Go core), so this small one is hand-written.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_HEADER = b":W&B"
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def iter_records(path: str | Path) -> Iterator[Any]:
    """Yield every `wandb_internal_pb2.Record` of a `.wandb` file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if not data.startswith(_HEADER):
        raise ValueError(f"{path}: not a wandb run file (header {data[:7]!r})")
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < 7:  # block trailer padding
            pos += left_in_block
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
            continue
        if kind in (_FULL, _FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def wait_for_exit(path: str | Path, timeout_s: float = 60.0) -> list[Any]:
    """Wait until the run file holds its `exit` record and return all its records: wandb's core
    process may still be writing the file after `run.finish()` returns (seen on a loaded
    machine, half the rows missing). TimeoutError names the file otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = list(iter_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: no exit record after {timeout_s:.0f} s (run unfinished?)")
        time.sleep(0.2)


def read_history(path: str | Path, wait_s: float | None = 60.0) -> list[dict[str, Any]]:
    """History rows (one dict per `wandb.log` call), values decoded from JSON.

    By default waits (up to ``wait_s``) for the run to be completely written
    (:func:`wait_for_exit`); ``wait_s=None`` reads what is there now (a live run)."""
    records = iter_records(path) if wait_s is None else wait_for_exit(path, wait_s)
    rows = []
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        rows.append(row)
    return rows


def find_run_file(root: str | Path) -> Path:
    """The newest `run-*.wandb` under `root` (e.g. a run directory)."""
    files = sorted(Path(root).rglob("run-*.wandb"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no run-*.wandb under {root}")
    return files[-1]


def series(rows: list[dict[str, Any]], key: str) -> list[Any]:
    """The values logged under `key`, in logging order."""
    return [row[key] for row in rows if key in row]


def histogram_keys(rows: list[dict[str, Any]]) -> set[str]:
    """Keys logged as `wandb.Histogram` (stored flattened as `<key>/_type == "histogram"`)."""
    return {
        k[: -len("/_type")]
        for row in rows
        for k, v in row.items()
        if k.endswith("/_type") and v == "histogram"
    }
