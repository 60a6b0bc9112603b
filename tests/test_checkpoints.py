"""A checkpoint write that fails half-way (disk full, crash) leaves the previous one valid; a
checkpoint that does not fit is refused with a ConfigError naming the key to change."""

import errno
import os

import pytest
import torch

from wavecast import checkpoints
from wavecast.checkpoints import (
    AtomicCheckpointIO,
    atomic_torch_save,
    check_config,
    check_model_kind,
    check_state_dict,
    config_differences,
    load_checkpoint,
    state_dict_mismatch,
)
from wavecast.config import ConfigError


def test_atomic_save_roundtrip(tmp_path):
    path = tmp_path / "ckpts" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.arange(5.0)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(5.0))
    assert os.listdir(path.parent) == ["last.ckpt"]


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": torch.tensor(1)}, path)
    before = path.read_bytes()

    def full_disk_save(obj, f):
        f.write(b"partial bytes of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", full_disk_save)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["step"].item() == 1
    # No temp file left behind.
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]


def test_truncated_checkpoint_is_named(tmp_path):
    from wavecast.checkpoints import CheckpointFileError, check_checkpoint_file

    path = tmp_path / "last.ckpt"
    atomic_torch_save({"w": torch.randn(1000)}, path)
    check_checkpoint_file(path)  # complete: passes
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFileError, match=r"last\.ckpt: not a readable checkpoint"):
        check_checkpoint_file(path)


def test_leftover_temp_file_of_a_killed_write_is_removed(tmp_path):
    path = tmp_path / "last.ckpt"
    stale = tmp_path / ".last.ckpt.abc123.tmp"
    stale.write_bytes(b"")  # what kill -9 during a write leaves
    other = tmp_path / ".best.ckpt.abc123.tmp"  # another file's write: not ours to remove
    other.write_bytes(b"")
    atomic_torch_save({"x": 1}, path)
    assert not stale.exists() and other.exists()
    assert torch.load(path, weights_only=False) == {"x": 1}


def test_load_checkpoint_names_the_key_and_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.x_ckpt: file '.*missing\.ckpt' does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt", "model.x_ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(
        ConfigError, match=r"model\.x_ckpt: '.*junk\.ckpt' is not a torch checkpoint"
    ):
        load_checkpoint(junk, "model.x_ckpt")
    listed = tmp_path / "list.ckpt"
    torch.save([1, 2], listed)
    with pytest.raises(ConfigError, match="holds a list, not a dict"):
        load_checkpoint(listed, "model.x_ckpt")
    # A pickled non-tensor object needs the full loader: taken when weights_only is not forced.
    odd = tmp_path / "odd.ckpt"
    torch.save({"w": torch.ones(2), "cfg": complex(1, 2)}, odd)
    assert load_checkpoint(odd, "k")["cfg"] == complex(1, 2)


def test_fit_checks_name_what_differs():
    ours = {"a": torch.zeros(2, 3), "b": torch.zeros(1), "c": torch.zeros(4)}
    theirs = {"a": torch.zeros(3, 2), "b": torch.zeros(1), "d": torch.zeros(1)}
    mismatch = state_dict_mismatch(ours, theirs, prefix="net.")
    assert mismatch.missing == ["net.c"] and mismatch.unexpected == ["net.d"]
    assert mismatch.shape == ["net.a: checkpoint (3, 2) vs model (2, 3)"]
    assert not state_dict_mismatch(ours, dict(ours))
    with pytest.raises(
        ConfigError,
        match=r"ck does not fit the network of model\.net: missing: net\.c; unexpected: net\.d; "
        r"shape mismatch: net\.a",
    ):
        check_state_dict(ours, theirs, "ck", "model.net", prefix="net.")
    many = state_dict_mismatch({f"k{i}": torch.zeros(1) for i in range(9)}, {})
    assert many.summary() == "missing: k0, k1, k2, k3, k4, k5 (+3 more)"

    diff = config_differences({"x": 1, "y": 2, "z": 3}, {"x": 1, "y": 5, "z": 4}, ignore={"z"})
    assert diff == {"y": (5, 2)}
    with pytest.raises(ConfigError, match=r"^ck differs: model\.net\.y: checkpoint 5 vs config 2$"):
        check_config(diff, "ck differs", "model.net")
    check_config({}, "never raised", "model.net")

    check_model_kind({}, "wfvae", "a WF-VAE", "ck")  # untagged: left to the state-dict check
    check_model_kind({"model": "wfvae"}, "wfvae", "a WF-VAE", "ck")
    with pytest.raises(ConfigError, match="ck holds a 'stdiff' model, not a WF-VAE"):
        check_model_kind({"model": "stdiff"}, "wfvae", "a WF-VAE", "ck")
