"""Every experiment composes, passes the start-up checks and instantiates (nothing is fitted)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
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
    if "video_folder" in cfg.data._target_:  # a folder of the user's videos: made here
        from tests.videos import video_folder

        video_folder(tmp_path / "videos", n=4)
        cfg = compose("train.yaml", [*overrides, f"data.root={tmp_path / 'videos'}"], tmp_path)
    validate_config(cfg)
    objs = build(cfg)
    assert objs["trainer"].max_epochs == cfg.trainer.max_epochs
    assert sum(p.numel() for p in objs["model"].parameters()) > 0
    if cfg.data.get("synthetic"):  # real-data experiments (odometry, target runs) need real folders
        dm = objs["datamodule"]
        dm.prepare_data()
        dm.setup("fit")
        assert len(dm.train_dataloader()) > 0 and len(dm.val_dataloader()) > 0
        item = dm.train_dataloader().dataset[0]
        assert all(v.isfinite().all() for v in item.values() if isinstance(v, torch.Tensor))
        if "video" in item:  # the clip the config asks for
            h, w = cfg.data.image_size
            assert tuple(item["video"].shape) == (3, cfg.data.clip_length, h, w)


# What each trainer config must give, written out by hand.
TRAINERS = {
    "default": dict(accelerator="cpu", devices=1, precision="32-true", strategy=None),
    "cpu": dict(accelerator="cpu", devices=1, precision="32-true", strategy=None),
    "gpu": dict(accelerator="gpu", devices=1, precision="bf16-mixed", strategy=None),
    "ddp": dict(accelerator="gpu", devices=4, precision="bf16-mixed", strategy=("nccl", "popen")),
    "ddp_sim": dict(accelerator="cpu", devices=2, precision="32-true", strategy=("gloo", "popen")),
    "ddp_spawn_sim": dict(
        accelerator="cpu", devices=2, precision="32-true", strategy=("gloo", "spawn")
    ),
    "fsdp": dict(accelerator="gpu", devices=4, precision="bf16-mixed", strategy="fsdp"),
}


@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_trainer_configs_compose(trainer, tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy

    from wavecast.checkpoints import AtomicCheckpointIO

    want = TRAINERS[trainer]
    cfg = compose("train.yaml", [f"trainer={trainer}"], tmp_path)
    validate_config(cfg)
    t = cfg.trainer
    assert (t.accelerator, t.devices, t.precision) == (
        want["accelerator"], want["devices"], want["precision"],
    )  # fmt: skip
    strategy = instantiate(t.strategy) if "strategy" in t else None
    if want["strategy"] is None:
        assert strategy is None
    elif want["strategy"] == "fsdp":
        assert isinstance(strategy, FSDPStrategy)
        assert strategy.sharding_strategy.name == "FULL_SHARD"
    else:
        assert isinstance(strategy, DDPStrategy)
        assert (strategy._process_group_backend, strategy._start_method) == want["strategy"]
    if t.accelerator == "cpu":  # a GPU trainer cannot be built here
        built = instantiate(t, logger=False)
        assert isinstance(built, pl.Trainer) and built.num_devices == want["devices"]
        assert isinstance(built.strategy, DDPStrategy if strategy else SingleDeviceStrategy)
        assert isinstance(built.strategy.checkpoint_io, AtomicCheckpointIO)
        assert built.default_root_dir == str(tmp_path)


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "wandb", "many", "none"])
def test_logger_configs_instantiate(logger, tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    cfg = compose(
        "train.yaml",
        [f"logger={logger}", "logger.wandb.offline=true"]
        if logger in ("wandb", "many")
        else [f"logger={logger}"],
        tmp_path,
    )
    validate_config(cfg)
    built = {name: instantiate(node) for name, node in (cfg.logger or {}).items()}
    kinds = {"csv": CSVLogger, "tensorboard": TensorBoardLogger, "wandb": WandbLogger}
    want = {"many": ["csv", "tensorboard", "wandb"], "none": []}.get(logger, [logger])
    assert sorted(built) == want
    for name, obj in built.items():
        assert isinstance(obj, kinds[name])
        assert Path(obj.save_dir) == tmp_path  # under the run directory
    if "wandb" in built:
        assert built["wandb"]._offline and built["wandb"]._wandb_init["project"] == "wavecast"


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
    objs = build(cfg)
    net = objs["model"].net
    assert net.frames_policy == "pad"
    # An 8-frame clip is padded to 9 inside and comes back with its own 8 frames.
    h, w = cfg.data.image_size
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 8, h, w), sample_posterior=False)
    assert out.recon.shape == (1, 3, 8, h, w)
