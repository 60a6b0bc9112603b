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


def test_kwargs_forwarded_to_wandb_init_are_checked(tmp_path, caplog):
    """WandbLogger takes **kwargs (for wandb.init) and its annotations do not resolve ('Run'):
    a misspelt key must still fail at start-up, naming it, and wrong types of both layers too."""
    import logging

    from tests.conftest import compose
    from wavecast.config import validate_config

    base = ["experiment=wfvae_kitti_tiny", "logger=wandb"]
    with pytest.raises(
        ConfigError,
        match=r"logger\.wandb\.projcet: unknown key for lightning\.pytorch\.loggers\.WandbLogger"
        r", nor accepted by wandb\.init.*did you mean 'project'",
    ):
        validate_config(compose("train.yaml", [*base, "+logger.wandb.projcet=x"], tmp_path))
    # a type error in a parameter of WandbLogger itself (its other hints do not resolve)
    with pytest.raises(ConfigError, match=r"logger\.wandb\.offline: expected"):
        validate_config(compose("train.yaml", [*base, "logger.wandb.offline=[1]"], tmp_path))
    # and in a key that wandb.init receives
    with pytest.raises(ConfigError, match=r"logger\.wandb\.group: expected .*wandb\.init"):
        validate_config(compose("train.yaml", [*base, "logger.wandb.group=[1]"], tmp_path))
    with caplog.at_level(logging.WARNING, logger="wavecast.config"):
        validate_config(compose("train.yaml", [*base, "+logger.wandb.notes=n"], tmp_path))
    assert not caplog.records  # every key of the shipped wandb config is checkable


def test_forwarded_kwargs_of_other_targets():
    ddp = _cfg(trainer={"strategy": {"_target_": "lightning.pytorch.strategies.DDPStrategy"}})
    ddp.trainer.strategy.find_unused_parameters = True
    validate_targets(ddp)  # a DistributedDataParallel argument
    ddp.trainer.strategy.find_unused_paramters = True
    with pytest.raises(ConfigError, match=r"find_unused_paramters.*DistributedDataParallel"):
        validate_targets(ddp)
    tb = _cfg(logger={"tb": {"_target_": "lightning.pytorch.loggers.TensorBoardLogger"}})
    tb.logger.tb.save_dir = "x"
    tb.logger.tb.flush_secs = 5
    validate_targets(tb)
    tb.logger.tb.flush_sec = 5
    with pytest.raises(ConfigError, match=r"logger\.tb\.flush_sec.*did you mean 'flush_secs'"):
        validate_targets(tb)


def test_unchecked_nodes_are_reported(caplog):
    """Where keys cannot be checked, the check says so, naming the key, instead of passing
    silently: **kwargs going nowhere known, a callable without a readable signature."""
    import logging

    summary = _cfg(
        callbacks={
            "s": {"_target_": "lightning.pytorch.callbacks.RichModelSummary", "header_styl": 1}
        }
    )
    no_sig = _cfg(model={"f": {"_target_": "builtins.dict", "a": 1}})
    with caplog.at_level(logging.WARNING, logger="wavecast.config"):
        validate_targets(summary)
        validate_targets(no_sig)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("callbacks.s" in m and "header_styl" in m and "not checked" in m for m in msgs)
    assert any("model.f" in m and "not checked" in m for m in msgs), msgs
