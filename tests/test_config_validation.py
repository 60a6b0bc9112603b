"""Start-up validation of configs against the signatures of their `_target_`s."""

import pytest
from omegaconf import OmegaConf

from wavecast.config import ConfigError, validate_run_keys, validate_targets


def _cfg(**groups):
    return OmegaConf.create(groups)


def test_unknown_key_named_with_suggestion():
    cfg = _cfg(
        model={
            "optimizer": {
                "_target_": "torch.optim.AdamW",
                "_partial_": True,
                "lr": 1e-3,
                "weight_decy": 0.1,
            }
        }
    )
    with pytest.raises(
        ConfigError, match=r"model\.optimizer\.weight_decy.*did you mean 'weight_decay'"
    ):
        validate_targets(cfg)


def test_wrong_type_named():
    cfg = _cfg(trainer={"_target_": "lightning.pytorch.Trainer", "max_epochs": "ten"})
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs: expected"):
        validate_targets(cfg)


def test_missing_required_value_named():
    cfg = _cfg(callbacks={"media": {"_target_": "torch.nn.Linear", "in_features": 3}})
    with pytest.raises(
        ConfigError, match=r"callbacks\.media: missing required value.*out_features"
    ):
        validate_targets(cfg)


def test_missing_mandatory_marker_named():
    cfg = OmegaConf.create(
        {"data": {"_target_": "torch.nn.Linear", "in_features": 3, "out_features": "???"}}
    )
    with pytest.raises(ConfigError, match=r"data\.out_features"):
        validate_targets(cfg)


def test_unimportable_target_named():
    cfg = _cfg(model={"net": {"_target_": "wfvae.model.NoSuchNet"}})
    with pytest.raises(ConfigError, match=r"model\.net\._target_: cannot import"):
        validate_targets(cfg)


def test_valid_config_passes_and_partial_skips_required():
    cfg = _cfg(
        model={
            "optimizer": {
                "_target_": "torch.optim.AdamW",
                "_partial_": True,
                "lr": 1e-3,
                "betas": [0.9, 0.99],
            }
        },
        trainer={
            "_target_": "lightning.pytorch.Trainer",
            "max_epochs": 3,
            "precision": "bf16-mixed",
            "devices": 1,
        },
    )
    validate_targets(cfg)


def test_top_level_key_types():
    with pytest.raises(ConfigError, match="seed"):
        validate_run_keys(OmegaConf.create({"seed": "abc", "task_name": "train"}))
    with pytest.raises(ConfigError, match="unknown top-level"):
        validate_run_keys(OmegaConf.create({"sed": 1}))
    validate_run_keys(OmegaConf.create({"seed": 3, "ckpt_path": None, "tags": ["a"]}))
