"""The offline wandb reader returns exactly what a real offline run logged."""

import numpy as np
import pytest

from wavecast.wandb_reader import find_run_file, histogram_keys, read_history, series


def test_reads_back_offline_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="reader-test", dir=str(tmp_path))
    values = [0.1 * i for i in range(40)]
    for i, v in enumerate(values):
        wandb.log({"alpha/value": v, "loss": 1.0 / (i + 1)}, step=i)
    wandb.log({"grad/w": wandb.Histogram(np.arange(10.0))}, step=40)
    run.finish()
    rows = read_history(find_run_file(tmp_path))
    assert series(rows, "alpha/value") == pytest.approx(values)
    assert series(rows, "loss")[-1] == pytest.approx(1.0 / 40)
    assert histogram_keys(rows) == {"grad/w"}
    assert sum(series(rows, "grad/w/values")[0]) == 10


def test_unfinished_run_file_times_out_with_its_name(tmp_path):
    pytest.importorskip("wandb")
    from wavecast.wandb_reader import wait_for_exit

    path = tmp_path / "run-x.wandb"
    path.write_bytes(b":W&B\x00\x00\x00")  # header only: wandb has not written the exit yet
    with pytest.raises(TimeoutError, match="run-x.wandb"):
        wait_for_exit(path, timeout_s=0.3)
    assert read_history(path, wait_s=None) == []
