"""What train.py and eval.py do, as two functions of a composed config.

Everything is built with `hydra.utils.instantiate` from the config; this file only orders the
steps: check, seed, build, fit / test, report.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from wavecast.checkpoints import check_checkpoint_file
from wavecast.config import ConfigError, print_config_tree, validate_config, validate_run_keys
from wavecast.data.errors import DataError
from wavecast.hooks import ChecksData, CompilesNetworks, ReportsEval, RunsAnalyses
from wavecast.metrics.weights import WeightsError

log = logging.getLogger(__name__)

# With manual optimisation a step-based checkpoint holds the weights after the step together
# with the incremented step counter: a consistent resume point, whatever this warning says.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def world_size(trainer_cfg: DictConfig) -> int:
    """Number of processes the trainer config asks for (devices x nodes)."""
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, str):
        if devices == "auto":
            # Lightning's "auto" on CPU is one process; on GPUs it is every visible one.
            accel = trainer_cfg.get("accelerator", "cpu")
            devices = torch.cuda.device_count() if accel in ("gpu", "cuda", "auto") else 1
            devices = max(devices, 1)
        elif devices.lstrip("-").isdigit():
            devices = int(devices)
        else:
            devices = len([d for d in devices.split(",") if d.strip()])
    elif isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        devices = len(devices)
    if devices == -1:
        devices = max(torch.cuda.device_count(), 1)
    return int(devices) * int(trainer_cfg.get("num_nodes", 1))


def per_rank_batch_size(cfg: DictConfig) -> int | None:
    """data.batch_size is the global batch; each rank gets batch / world (must divide)."""
    if "batch_size" not in cfg.data:
        return None
    world = world_size(cfg.trainer)
    batch = int(cfg.data.batch_size)
    if batch < 1 or batch % world:
        raise ConfigError(
            f"data.batch_size={batch} (the global batch) must be a positive multiple of the "
            f"number of processes trainer.devices x trainer.num_nodes = {world}"
        )
    return batch // world


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """`ckpt_path`: null, a file, or `last` = the newest last.ckpt of an earlier run of run_name."""
    ckpt = cfg.get("ckpt_path")
    if ckpt is None:
        return None
    if ckpt == "last":
        pattern = os.path.join(
            cfg.paths.log_dir, "train", "runs", cfg.run_name, "*", "checkpoints", "last.ckpt"
        )
        found = sorted(glob.glob(pattern), key=os.path.getmtime)
        if not found:
            log.warning("ckpt_path=last: no %s yet; starting from scratch", pattern)
            return None
        log.info("ckpt_path=last -> %s", found[-1])
        check_checkpoint_file(found[-1])
        return found[-1]
    if not Path(ckpt).is_file():
        raise ConfigError(f"ckpt_path: checkpoint file '{ckpt}' does not exist")
    check_checkpoint_file(ckpt)
    return str(ckpt)


def _instantiate_dict(cfg: DictConfig | None, kind: str) -> list[Any]:
    objs: list[Any] = []
    if not cfg:
        return objs
    for name, node in cfg.items():
        if isinstance(node, DictConfig) and "_target_" in node:
            log.info("Instantiating %s <%s> (%s)", kind, node._target_, name)
            objs.append(instantiate(node))
    return objs


def build(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate data module, model, callbacks, loggers and trainer from a checked config."""
    batch = per_rank_batch_size(cfg)
    kwargs = {"batch_size": batch} if batch is not None else {}
    datamodule: pl.LightningDataModule = instantiate(cfg.data, **kwargs)
    model: pl.LightningModule = instantiate(cfg.model, _recursive_=True)
    if isinstance(model, ChecksData):
        model.check_data(datamodule)
    if cfg.get("compile") and isinstance(model, CompilesNetworks):
        model.compile_networks()
    callbacks = _instantiate_dict(cfg.get("callbacks"), "callback")
    loggers = _instantiate_dict(cfg.get("logger"), "logger")
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if loggers:
        _log_hyperparameters(cfg, model, trainer)
    return {
        "datamodule": datamodule,
        "model": model,
        "callbacks": callbacks,
        "loggers": loggers,
        "trainer": trainer,
    }


@rank_zero_only
def _log_hyperparameters(cfg: DictConfig, model: pl.LightningModule, trainer: pl.Trainer) -> None:
    hparams = OmegaConf.to_container(cfg, resolve=True)
    hparams.pop("hydra", None)
    hparams["model/params/total"] = sum(p.numel() for p in model.parameters())
    hparams["model/params/trainable"] = sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)


def process_rank() -> int:
    """Global rank of this process (Lightning / torchrun / SLURM set one of these)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def setup_logging() -> None:
    """One line per message: Lightning's own console handlers go, its records propagate to the
    root (Hydra's) handlers; ranks > 0 only print warnings (their log file keeps everything)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True
    if process_rank() != 0:
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.setLevel(logging.WARNING)


def check_launch(cfg: DictConfig, multirun: bool | None = None) -> None:
    """Re-executing DDP (start_method popen) inside a Hydra multirun would re-run the whole sweep
    in every child process: sweeps must use a spawning strategy. `multirun`: None = ask Hydra
    (per trial); True = the sweep's start (`wavecast.sweeps.SweepSummary`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    strategy = cfg.trainer.get("strategy")
    if multirun is None:
        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if not multirun:
        return
    popen_ddp = (
        isinstance(strategy, DictConfig)
        and "DDP" in strategy.get("_target_", "")
        and strategy.get("start_method", "popen") == "popen"
    )
    if popen_ddp and world_size(cfg.trainer) > 1:
        raise ConfigError(
            "trainer.strategy.start_method=popen re-executes the script per rank, which "
            "re-runs the whole sweep in a multirun: use trainer=ddp_spawn_sim (or "
            "trainer.strategy.start_method=spawn) for sweeps, or one SLURM job per trial "
            "(hydra/launcher=slurm)"
        )


def check_optimizers(cfg: DictConfig) -> None:
    """Optimizer hyper-parameters that torch would refuse only at fit time, named at start-up."""

    def walk(node: Any, key: str) -> None:
        if not isinstance(node, DictConfig):
            return
        if str(node.get("_target_", "")).startswith("torch.optim."):
            for name, low, strict in (("lr", 0.0, True), ("weight_decay", 0.0, False)):
                value = node.get(name)
                if isinstance(value, int | float) and (value <= low if strict else value < low):
                    need = "> 0" if strict else ">= 0"
                    raise ConfigError(f"{key}.{name}={value}: must be {need}")
        for k in node:
            walk(node._get_node(k), f"{key}.{k}")

    if cfg.get("model") is not None:
        walk(cfg.model, "model")


def _start(cfg: DictConfig) -> None:
    setup_logging()
    validate_config(cfg)
    check_launch(cfg)
    check_optimizers(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    if cfg.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)


def _announce(cfg: DictConfig) -> None:
    """Print the config tree once, when everything is built (an error is not buried under
    it), and save it beside the run."""
    if rank_zero_only.rank == 0:
        print_config_tree(cfg, save_to=Path(cfg.paths.output_dir) / "config_tree.yaml")


#: Errors of the start-up checks (config, data, weights files), also when raised inside fit
#: (data set-up, optimizer checks) before the first step.
START_UP_ERRORS = (ConfigError, DataError, WeightsError)
#: What a start writes into its run folder before training, relative to it.
_START_FILES = ("config_tree.yaml", "csv/hparams.yaml")


def _remove_failed_start(cfg: DictConfig) -> None:
    """Remove the run folder of a start that failed before training, so that it neither piles up
    in runs/ nor becomes the newest `ckpt_path=last`. Only a folder Hydra made for this run
    (.hydra/ inside) holding nothing but what a start writes (the log, config_tree.yaml,
    .hydra/) is removed; sweeps keep their trials' folders (FAILED.txt)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if rank_zero_only.rank != 0 or not HydraConfig.initialized():
        return
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return
    out = Path(cfg.paths.output_dir).resolve()
    if not (out / ".hydra").is_dir():
        return
    for path in out.rglob("*"):
        rel = path.relative_to(out)
        expected = (
            rel.parts[0] == ".hydra"
            or (len(rel.parts) == 1 and rel.suffix == ".log")
            or rel.as_posix() in _START_FILES
        )
        if path.is_file() and not expected:
            return  # something else was written: keep the folder
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(
            handler.baseFilename
        ).resolve().is_relative_to(out):
            root.removeHandler(handler)
            handler.close()
    shutil.rmtree(out, ignore_errors=True)
    with contextlib.suppress(OSError):
        out.parent.rmdir()  # runs/<run_name>/ when this was its only run
    log.error("start-up failed before training: removed the run folder %s", out)


def checkpoint_step(path: str) -> int:
    """The global step a Lightning checkpoint was saved at (-1 when it does not say)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # an old, non-zip file: no mmap
        obj = torch.load(path, map_location="cpu", weights_only=False)
    return int(obj.get("global_step", -1)) if isinstance(obj, dict) else -1


def check_not_finished(cfg: DictConfig, ckpt: str | None) -> None:
    """Resuming a run that already reached trainer.max_steps would do nothing but copy its
    checkpoint into a new run folder (the newest `last` from then on): say so instead."""
    max_steps = cfg.trainer.get("max_steps", -1)
    if ckpt is None or max_steps is None or int(max_steps) < 0:
        return
    step = checkpoint_step(ckpt)
    if step >= int(max_steps):
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path}: {ckpt} is at step {step} and trainer.max_steps="
            f"{max_steps}: that run has finished, there is nothing to resume. To train it "
            f"further, raise trainer.max_steps (e.g. ckpt_path={cfg.ckpt_path} "
            f"trainer.max_steps={2 * int(max_steps)}); to evaluate it: eval.py "
            f"ckpt_path={ckpt}"
        )


def _finish_loggers(loggers: list[Any]) -> None:
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            # Each multirun job must get its own wandb run.
            if wandb.run is not None:
                wandb.finish()


def _metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {
        k: float(v.item() if isinstance(v, torch.Tensor) else v)
        for k, v in trainer.callback_metrics.items()
    }


WANDB_ID_FILE = "wandb_id.txt"


def _resume_wandb_run(cfg: DictConfig, ckpt: str | None) -> None:
    """Point the wandb logger at the run of the checkpoint being resumed (id kept in its run dir)."""
    if ckpt is None or not cfg.get("logger") or "wandb" not in cfg.logger:
        return
    id_file = Path(ckpt).resolve().parent.parent / WANDB_ID_FILE
    if not id_file.is_file() or cfg.logger.wandb.get("id"):
        return
    with open_dict(cfg):
        cfg.logger.wandb.id = id_file.read_text().strip()
        cfg.logger.wandb.resume = "allow"
    log.info("resuming wandb run %s", cfg.logger.wandb.id)


@rank_zero_only
def _record_wandb_id(loggers: list[Any], output_dir: Path) -> None:
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            (output_dir / WANDB_ID_FILE).write_text(str(logger.experiment.id))


# 128 + SIGTERM, what a shell reports for a process ended by the signal.
PREEMPTED_EXIT_CODE = 143


def _write_final(trainer: pl.Trainer, cfg: DictConfig, metrics: dict[str, Any]) -> None:
    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir) / "metrics_final.json"
        out.write_text(json.dumps(metrics, indent=2, sort_keys=True))


def train(cfg: DictConfig) -> float | None:
    """Fit (and optionally test) as the config says; returns cfg.optimized_metric (NaN -> inf)."""
    try:
        _start(cfg)
        ckpt = resolve_ckpt_path(cfg) if cfg.get("train", True) else None
        check_not_finished(cfg, ckpt)
        _resume_wandb_run(cfg, ckpt)
        objs = build(cfg)
    except Exception:
        _remove_failed_start(cfg)
        raise
    _announce(cfg)
    trainer: pl.Trainer = objs["trainer"]
    _record_wandb_id(objs["loggers"], Path(cfg.paths.output_dir))
    metrics: dict[str, float] = {}
    try:
        if cfg.get("train", True):
            try:
                trainer.fit(objs["model"], datamodule=objs["datamodule"], ckpt_path=ckpt)
            except START_UP_ERRORS:
                if trainer.global_step == 0:  # data set-up / optimizer checks inside fit
                    _remove_failed_start(cfg)
                raise
            metrics.update(_metrics(trainer))
        if cfg.get("test"):
            best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None
            trainer.test(objs["model"], datamodule=objs["datamodule"], ckpt_path=best)
            metrics.update(_metrics(trainer))
    except SIGTERMException:
        # Lightning ends fit with SystemExit(None), i.e. exit status 0, on SIGTERM: a scheduler
        # would take a preempted job for a finished one. LastCheckpoint saved last.ckpt.
        _write_final(trainer, cfg, {**_metrics(trainer), "status": "preempted"})
        log.error("SIGTERM: stopped at step %d; resume with ckpt_path=last", trainer.global_step)
        raise SystemExit(PREEMPTED_EXIT_CODE) from None
    finally:
        _finish_loggers(objs["loggers"])
    _write_final(trainer, cfg, metrics)
    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir)
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or "-"
        log.info(
            "done: outputs in %s (checkpoints/last.ckpt; best %s; metrics_final.json; media/; "
            "config_tree.yaml)",
            out,
            Path(best).name if best != "-" else best,
        )
    return objective_value(metrics, cfg.get("optimized_metric"), cfg.get("optimized_mode", "min"))


def objective_value(metrics: dict[str, float], name: str | None, mode: str = "min") -> float | None:
    """The sweep objective: the named metric, with NaN / missing turned into the worst value
    (Optuna's sweeper crashes on NaN; a missing metric must not look like a good trial)."""
    if not name:
        return None
    worst = math.inf if mode == "min" else -math.inf
    value = metrics.get(name)
    if value is None:
        log.warning("optimized_metric '%s' was not logged; returning %s", name, worst)
        return worst
    return value if math.isfinite(value) else worst


def _task_overrides() -> list[str]:
    """The command line's overrides (``key=value``, ``+key=...``, ``~key``), [] outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


RUN_CONFIG_GROUPS = ("model", "data")


def _use_run_config(cfg: DictConfig, ckpt: str) -> dict[str, str]:
    """Evaluate with the model and data config of the checkpoint's run (its config_tree.yaml).

    Per group: the command line's own `model.*` / `data.*` keys are applied on top of the run's
    config; a group chosen on the command line (`data=video_folder`) replaces it. Returns
    {group: where it came from}, which is logged and written to the metrics JSON.
    """
    tree = Path(ckpt).resolve().parent.parent / "config_tree.yaml"
    sources: dict[str, str] = {}
    if not tree.is_file():
        for group in RUN_CONFIG_GROUPS:
            sources[group] = "this command's config (no config_tree.yaml beside the checkpoint)"
            log.info("eval %s: %s", group, sources[group])
        return sources
    run_cfg = OmegaConf.load(tree)
    overrides = _task_overrides()
    for group in RUN_CONFIG_GROUPS:
        run_node = run_cfg.get(group)
        keys = [_override_key(o) for o in overrides]
        if run_node is None or group in keys:
            sources[group] = (
                f"this command's config ({group}=...)"
                if group in keys
                else (f"this command's config (the run has no {group})")
            )
        else:
            merged = OmegaConf.create(OmegaConf.to_container(run_node))
            mine = [o for o in overrides if _override_key(o).startswith(group + ".")]
            for o in mine:
                sub = _override_key(o)[len(group) + 1 :]
                if o.startswith("~"):
                    parent, _, leaf = sub.rpartition(".")
                    node = OmegaConf.select(merged, parent) if parent else merged
                    if isinstance(node, DictConfig) and leaf in node:
                        with open_dict(node):
                            del node[leaf]
                else:
                    value = OmegaConf.select(cfg, _override_key(o))
                    OmegaConf.update(merged, sub, value, force_add=True)
            with open_dict(cfg):
                cfg[group] = merged
            extra = f", with {', '.join(_override_key(o) for o in mine)} from this command's config"
            sources[group] = f"the checkpoint's run ({tree}){extra if mine else ''}"
        node = cfg.get(group)
        what = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
        root = (
            f", root {node.get('root')}" if group == "data" and isinstance(node, DictConfig) else ""
        )
        log.info("eval %s: %s%s from %s", group, what, root, sources[group])
    return sources


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test (or validate) a checkpoint with the model and data config of its run (unless the
    command line overrides them); writes the metrics to JSON in the run directory."""
    try:
        setup_logging()
        validate_run_keys(cfg)  # a missing ckpt_path is named before anything else
        ckpt = resolve_ckpt_path(cfg)
        if ckpt is None:
            raise ConfigError("ckpt_path: nothing to evaluate (no checkpoint found)")
        with open_dict(cfg):
            cfg.train = False
        sources = _use_run_config(cfg, ckpt)
        _start(cfg)  # checks the config actually used
        from wavecast.metrics.weights import evaluation_only

        with evaluation_only():
            objs = build(cfg)
    except Exception:
        _remove_failed_start(cfg)
        raise
    _announce(cfg)
    trainer: pl.Trainer = objs["trainer"]
    model = objs["model"]
    if isinstance(model, RunsAnalyses):
        model.analyses = list(cfg.get("analyses", []))
    try:
        run = trainer.test if cfg.get("split", "test") == "test" else trainer.validate
        run(model, datamodule=objs["datamodule"], ckpt_path=ckpt)
        metrics = _metrics(trainer)
        if isinstance(model, ReportsEval):
            metrics.update(model.eval_report())
    finally:
        _finish_loggers(objs["loggers"])
    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir) / cfg.get("metrics_file", "metrics.json")
        record = {"checkpoint": ckpt, "config_from": sources, "metrics": metrics}
        out.write_text(json.dumps(record, indent=2))
        log.info("metrics written to %s", out)
    return metrics
