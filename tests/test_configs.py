"""Every experiment composes, passes the start-up checks and instantiates (nothing is fitted)."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from tests.conftest import CONFIG_DIR, compose
from wavecast.config import ConfigError, validate_config
from wavecast.data.synthetic import SYNTHETIC_DRIVES
from wavecast.run import build, per_rank_batch_size

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, tmp_path, synthetic_kitti):
    overrides = [f"experiment={experiment}", f"data.root={synthetic_kitti}", "logger=csv"]
    cfg = compose("train.yaml", overrides, tmp_path)
    size = (cfg.data.get("synthetic") or {}).get("size", "small")
    if size != "small":
        # Larger synthetic sizes keep the small size's val / test drives; the session's small
        # dataset stands in (generating the larger one takes ~35 s).
        train = ",".join(SYNTHETIC_DRIVES["train"])
        overrides += ["data.synthetic.size=small", f"data.train_drives=[{train}]"]
        cfg = compose("train.yaml", overrides, tmp_path)
    validate_config(cfg)
    objs = build(cfg)
    assert objs["trainer"].max_epochs == cfg.trainer.max_epochs
    assert sum(p.numel() for p in objs["model"].parameters()) > 0
    if cfg.data.get("synthetic"):  # real-data experiments (odometry, target runs) need real folders
        objs["datamodule"].prepare_data()
        objs["datamodule"].setup("fit")


@pytest.mark.parametrize(
    "trainer", ["default", "cpu", "gpu", "ddp", "ddp_sim", "ddp_spawn_sim", "fsdp"]
)
def test_trainer_configs_compose(trainer, tmp_path):
    cfg = compose("train.yaml", [f"trainer={trainer}"], tmp_path)
    validate_config(cfg)


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "wandb", "many", "none"])
def test_logger_configs_instantiate(logger, tmp_path):
    cfg = compose(
        "train.yaml",
        [f"logger={logger}", "logger.wandb.offline=true"]
        if logger in ("wandb", "many")
        else [f"logger={logger}"],
        tmp_path,
    )
    validate_config(cfg)
    for node in (cfg.logger or {}).values():
        instantiate(node)


def test_eval_config_requires_checkpoint(tmp_path):
    cfg = compose("eval.yaml", [], tmp_path)
    with pytest.raises(ConfigError, match="ckpt_path"):
        validate_config(cfg)


def test_unknown_key_in_group_fails_with_full_name(tmp_path):
    cfg = compose("train.yaml", ["+data.batch_szie=3"], tmp_path)
    with pytest.raises(ConfigError, match=r"data\.batch_szie.*did you mean 'batch_size'"):
        validate_config(cfg)


def test_wrong_type_fails_with_full_name(tmp_path):
    cfg = compose("train.yaml", ["data.clip_length=nine"], tmp_path)
    with pytest.raises(ConfigError, match=r"data\.clip_length"):
        validate_config(cfg)


def test_missing_required_value_fails(tmp_path):
    cfg = compose("train.yaml", ["data=kitti_video_real"], tmp_path)
    with pytest.raises(ConfigError, match=r"data\.train_drives"):
        validate_config(cfg)


def test_batch_size_must_divide_world_size(tmp_path):
    cfg = compose("train.yaml", ["trainer=ddp_sim", "data.batch_size=3"], tmp_path)
    with pytest.raises(ConfigError, match=r"data\.batch_size=3.*2"):
        per_rank_batch_size(cfg)
    cfg = compose("train.yaml", ["trainer=ddp_sim", "data.batch_size=4"], tmp_path)
    assert per_rank_batch_size(cfg) == 2


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("data.clip_length=8", r"clip_length=8 is not 4n\+1"),
        ("data.image_size=[60,64]", r"divisible by 8 .*use \[56, 64\] or \[64, 64\]"),
    ],
)
def test_semantic_checks_at_start_up(override, match, tmp_path, synthetic_kitti):
    cfg = compose(
        "train.yaml",
        ["experiment=wfvae_kitti_tiny", f"data.root={synthetic_kitti}", override],
        tmp_path,
    )
    with pytest.raises(ConfigError, match=match):
        build(cfg)


def test_pad_policy_accepts_any_clip_length(tmp_path, synthetic_kitti):
    cfg = compose(
        "train.yaml",
        [
            "experiment=wfvae_kitti_tiny",
            f"data.root={synthetic_kitti}",
            "data.clip_length=8",
            "model.net.frames_policy=pad",
        ],
        tmp_path,
    )
    build(cfg)
