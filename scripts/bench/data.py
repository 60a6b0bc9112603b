"""Section ``data`` (only when named): clips per second of each training loader against what the
training step of its recipe consumes, both measured in the same run.

Loaders, each built exactly as ``train.py`` builds it (the experiment config composed with Hydra,
the data module instantiated from it, its ``train_dataloader()``):

* ``kitti_camera``: synthetic KITTI camera PNGs, ``experiment=wfvae_kitti`` (data
  kitti_video_medium: 9 frames at 64 x 192, batch 2, random crop);
* ``video_folder``: the same recipe on ``data=video_folder``, with one H.264 mp4 per drive written
  from the same synthetic KITTI camera frames (312 x 96, as the PNGs) into a temporary folder, the
  same train / val / test drives, and the KITTI case's ``image_size`` so the clips match;
* ``kitti_range``: range sequences projected from the velodyne .bin scans,
  ``experiment=stdiff_kitti_range_forecast`` (3 + 3 scans at 32 x 128, batch 4).

Loader rate: clips per second of ``train_dataloader()`` at ``num_workers`` 0, 1, 2 and the
config's default, each in a fresh process; the first batch (worker start-up) is left out, then
batches are read for ``--data-seconds`` or to the end of the epoch, whichever comes first.
Nothing else runs meanwhile.

Consumption: ``batch_size / step time`` of the recipe's LightningModule (built from the experiment
config: the recipe's sizes, precision, clipping and per-step callbacks) trained by the recipe's
Trainer on real batches read beforehand from the same loader, so the step never waits for data:
``--data-warmup`` untimed steps, then ``--data-steps`` timed ones (forward, backward, clipping,
optimizer and scheduler step, Lightning's loop). The video-folder loader feeds the WF-VAE recipe
at the same clip shape, so it is compared with the kitti_camera consumption. Callbacks that write
files or draw (checkpoints, media, progress bar, summary, LR monitor) are left out: they do not
run on every step.

The goal (issue #16): a loader at >= 3x the consumption at the default ``num_workers``.
``ratio_at_default`` and ``ratio_at_0`` are both reported: the loader was timed alone, while in
training its workers share the cores with the step's threads (on a 2-core machine a worker takes
a core the step would use), so the 0-worker ratio is the one that holds however the cores are
shared. ``load_share_at_0`` is the part of a step's wall time that loading in the training
process (0 workers) adds: what workers could at most win back, and only where a core is free.
Whether they do is measured with ``--data-fed-steps N`` (off by default): N steps fed by the
recipe's own train loader at each ``--data-workers`` value, loading and step sharing the cores as
in training (``fed_step_time_s`` of the kitti_camera and kitti_range rows; take N >= 10, the
first batches come from the workers' prefetch).

Rows (``data_throughput``, one per loader): loader, experiment, data_config, overrides,
clip_shape, batch_size, default_num_workers, clips_per_s {num_workers: clips/s},
consumption_clips_per_s, step_time_s, ratio_at_default, ratio_at_0, ratio_by_workers,
load_share_at_0, meets_3x, loadavg (and fed_step_time_s {num_workers: s}); the step
measurements themselves in ``data_step_times``.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from scripts.bench.harness import (
    Context,
    emit,
    in_process,
    in_process_with_children,
    set_threads,
)

ROOT = Path(__file__).resolve().parents[2]

#: The issue's bar: the loader at >= this many times the training step's consumption.
REQUIRED_RATIO = 3.0

#: Per loader: the experiment that builds it and whose training step consumes its clips, and the
#: loader whose batches that step is timed on (the video folder feeds the same WF-VAE recipe at
#: the same clip shape as the KITTI camera clips).
LOADERS: dict[str, dict[str, str]] = {
    "kitti_camera": {"experiment": "wfvae_kitti", "consumer": "kitti_camera"},
    "video_folder": {"experiment": "wfvae_kitti", "consumer": "kitti_camera"},
    "kitti_range": {"experiment": "stdiff_kitti_range_forecast", "consumer": "kitti_range"},
}

#: Callbacks of the recipes that write files or draw; the rest (divergence guard, EMA, epoch
#: seed) run with the timed steps.
SKIPPED_CALLBACKS = (
    "model_checkpoint",
    "last_checkpoint",
    "media",
    "rich_progress_bar",
    "model_summary",
    "lr_monitor",
)


# ------------------------------------------------------------------------------------- configs
def compose_recipe(
    experiment: str, overrides: list[str], output_dir: str | Path
) -> tuple[Any, dict[str, str]]:
    """``train.yaml`` with ``experiment=<experiment>`` and ``overrides``, composed as train.py
    does (``paths.output_dir`` pointed at ``output_dir`` instead of Hydra's run directory).

    Returns (the config without its ``hydra`` node, the chosen config of each group, e.g.
    ``{"data": "kitti_video_medium", ...}``).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from wavecast.resolvers import register_resolvers

    os.environ.setdefault("WAVECAST_ROOT", str(ROOT))
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            "train.yaml",
            overrides=[f"experiment={experiment}", f"paths.output_dir={output_dir}", *overrides],
            return_hydra_config=True,
        )
    choices = {str(k): str(v) for k, v in cfg.hydra.runtime.choices.items()}
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def build_datamodule(cfg: Any, stage: str = "fit") -> Any:
    """The data module of ``cfg`` as ``wavecast.run.build`` instantiates it, prepared and set up."""
    from hydra.utils import instantiate

    from wavecast.run import per_rank_batch_size

    batch = per_rank_batch_size(cfg)
    dm = instantiate(cfg.data, **({"batch_size": batch} if batch is not None else {}))
    dm.prepare_data()
    dm.setup(stage)
    return dm


def batch_clips(batch: dict) -> int:
    """Clips in a collated batch: the first dim of "video" [B, 3, T, H, W] or "frames"
    [B, T, C, H, W]."""
    key = "video" if "video" in batch else "frames"
    return int(batch[key].shape[0])


def clip_shape(batch: dict) -> list[int]:
    """Shape of one clip of a batch: [3, T, H, W] (video) or [T, C, H, W] (range frames)."""
    key = "video" if "video" in batch else "frames"
    return list(batch[key].shape[1:])


# ------------------------------------------------------------------------------ video fixture
def write_video_folder(
    kitti_root: str | Path, drives: list[str], out_dir: str | Path, camera: str = "image_02"
) -> dict[str, dict]:
    """One H.264 mp4 per KITTI raw drive of ``drives``: every frame of ``camera`` at its own size
    (``wavecast.media.write_mp4``, 10 fps) as ``out_dir/<drive>.mp4``.

    Returns {file name: {"frames": n, "size": [H, W]}}.
    """
    import numpy as np

    from wavecast.data.kitti_raw import KittiRawDrive
    from wavecast.media import write_mp4

    out: dict[str, dict] = {}
    for name in drives:
        drive = KittiRawDrive(kitti_root, name, streams=(camera,))
        frames = np.stack([drive.read_image(camera, i) for i in range(drive.n_frames)])
        if frames.shape[-1] == 1:
            frames = np.repeat(frames, 3, axis=-1)
        path = write_mp4(frames, Path(out_dir) / f"{name}.mp4", fps=10)
        out[path.name] = {"frames": int(frames.shape[0]), "size": list(frames.shape[1:3])}
    return out


def video_folder_overrides(video_dir: str | Path) -> list[str]:
    """Overrides that put ``wfvae_kitti`` on ``data=video_folder`` with the videos of
    `write_video_folder` (same drives in each split) at the KITTI case's frame size; writes the
    videos into ``video_dir``."""
    with tempfile.TemporaryDirectory() as tmp:
        kitti = compose_recipe(LOADERS["video_folder"]["experiment"], [], tmp)[0].data
        splits = {s: list(kitti[f"{s}_drives"] or []) for s in ("train", "val", "test")}
        write_video_folder(kitti.root, [d for s in splits.values() for d in s], video_dir)
        h, w = (int(s) for s in kitti.image_size)

    def names(split: str) -> str:
        return "[" + ",".join(f"{d}.mp4" for d in splits[split]) + "]"

    return [
        "data=video_folder",
        f"data.root={video_dir}",
        f"data.image_size=[{h},{w}]",
        f"data.train_videos={names('train')}",
        f"data.val_videos={names('val')}",
        f"data.test_videos={names('test')}",
    ]


# ------------------------------------------------------------------------------------- cases
class Repeated(Dataset):
    """``length`` items cycling through ``items`` (batches read beforehand)."""

    def __init__(self, items: list, length: int) -> None:
        self.items, self.length = items, int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Any:
        return self.items[i % len(self.items)]


def loader_rate(
    experiment: str,
    overrides: list[str],
    num_workers: int | None,
    threads: int,
    min_seconds: float,
) -> dict:
    """Clips per second of the recipe's train loader at ``num_workers`` (None: the config's).

    The first batch (workers starting, first prefetch) is timed apart; then batches are read
    for ``min_seconds`` or to the end of the epoch, whichever comes first.
    """
    set_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        ovr = list(overrides) + ([] if num_workers is None else [f"data.num_workers={num_workers}"])
        cfg, choices = compose_recipe(experiment, ovr, tmp)
        dm = build_datamodule(cfg)
        loader = dm.train_dataloader()
        t0 = time.perf_counter()
        it = iter(loader)
        first = next(it)
        first_s = time.perf_counter() - t0
        clips = batches = 0
        t0 = time.perf_counter()
        for batch in it:
            clips += batch_clips(batch)
            batches += 1
            if time.perf_counter() - t0 >= min_seconds:
                break
        seconds = time.perf_counter() - t0
        del it
        return {
            "data_config": choices["data"],
            "num_workers": loader.num_workers,
            "default_num_workers": int(cfg.data.num_workers),
            "batch_size": loader.batch_size or batch_clips(first),
            "clip_shape": clip_shape(first),
            "clips_per_epoch": len(loader.dataset),
            "first_batch_s": first_s,
            "batches": batches,
            "clips": clips,
            "seconds": seconds,
            "clips_per_s": clips / seconds if seconds > 0 else float("nan"),
            "loadavg": os.getloadavg(),
        }


def step_time(
    experiment: str, threads: int, steps: int, warmup: int, num_workers: int | None = None
) -> dict:
    """Training-step time of the recipe's LightningModule and Trainer: ``warmup`` untimed steps,
    then ``steps`` timed ones.

    ``num_workers`` None: on real batches of the recipe's train loader read beforehand (the step
    never waits for data); returns the step time and the clips per second it consumes. An int:
    fed by the train loader itself with that many workers (loading and the step share the
    cores, as in training); returns that step time.
    """
    import lightning.pytorch as pl
    from hydra.utils import instantiate
    from omegaconf import DictConfig
    from torch.utils.data import DataLoader

    from wavecast.hooks import ChecksData

    set_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        workers = 0 if num_workers is None else int(num_workers)
        cfg, _ = compose_recipe(experiment, [f"data.num_workers={workers}"], tmp)
        pl.seed_everything(cfg.seed, verbose=False)
        dm = build_datamodule(cfg)
        epoch = len(dm.train_dataloader())
        if warmup + steps > epoch:
            raise ValueError(f"{experiment}: {warmup} + {steps} steps exceed one epoch ({epoch})")
        if num_workers is None:
            batches = list(itertools.islice(dm.train_dataloader(), warmup + steps))
            batch_size, shape = batch_clips(batches[0]), clip_shape(batches[0])
            loader = DataLoader(Repeated(batches, epoch), batch_size=None)
        else:
            loader = dm.train_dataloader()
            item = loader.dataset[0]
            batch_size = int(loader.batch_size)
            shape = list(item["video" if "video" in item else "frames"].shape)
        model = instantiate(cfg.model, _recursive_=True)
        if isinstance(model, ChecksData):
            model.check_data(dm)
        callbacks = [
            instantiate(node)
            for name, node in (cfg.get("callbacks") or {}).items()
            if name not in SKIPPED_CALLBACKS and isinstance(node, DictConfig) and "_target_" in node
        ]
        marks: dict[str, float] = {}

        class StepTimer(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if batch_idx == warmup:
                    marks["start"] = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if batch_idx == warmup + steps - 1:
                    marks["end"] = time.perf_counter()
                    trainer.should_stop = True

        # The recipe's trainer (max_steps, precision, clipping) on a loader as long as the real
        # epoch, so that the LR schedule sees the recipe's run length; stopped after the timed
        # steps. No validation, logger, checkpoints.
        trainer = instantiate(
            cfg.trainer,
            callbacks=[*callbacks, StepTimer()],
            logger=False,
            min_epochs=None,
            limit_val_batches=0,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp,
        )
        trainer.fit(model, train_dataloaders=loader)
        step_s = (marks["end"] - marks["start"]) / steps
        return {
            "experiment": experiment,
            "fed_num_workers": num_workers,
            "step_time_s": step_s,
            "consumption_clips_per_s": batch_size / step_s,
            "batch_size": batch_size,
            "clip_shape": shape,
            "precision": str(cfg.trainer.precision),
            "callbacks": [type(c).__name__ for c in callbacks],
            # WF-VAE: LPIPS needs local weights; without them the term is off (a faster step).
            "perceptual_loss": getattr(getattr(model, "loss", None), "perceptual", None)
            is not None,
            "steps": steps,
            "warmup_steps": warmup,
            "threads": threads,
            "loadavg": os.getloadavg(),
        }


# ------------------------------------------------------------------------------------- rows
def loader_row(
    loader: str, experiment: str, overrides: list[str], rates: list[dict], consumption: dict
) -> dict:
    """One result row from the loader measurements (`loader_rate`, one per ``num_workers``, the
    config's default among them) and the step measurement (`step_time`) of the consuming recipe.

    ``ratio_at_<n>`` = loader clips/s at n workers / consumed clips/s; ``meets_3x``: the ratio at
    the default ``num_workers`` >= 3. ``load_share_at_0``: the fraction of a training step's wall
    time spent loading its batch when the loader runs in the training process (0 workers):
    (B / loader rate) / (B / loader rate + step time).
    """
    default = rates[0]["default_num_workers"]
    by_workers = {str(r["num_workers"]): r["clips_per_s"] for r in rates}
    if str(default) not in by_workers:
        raise ValueError(f"{loader}: no measurement at the default num_workers={default}")
    consumed = consumption["consumption_clips_per_s"]
    at_default = by_workers[str(default)]
    load_s = rates[0]["batch_size"] / by_workers["0"] if "0" in by_workers else None
    return {
        "loader": loader,
        "experiment": experiment,
        "data_config": rates[0]["data_config"],
        "overrides": list(overrides),
        "clip_shape": rates[0]["clip_shape"],
        "batch_size": rates[0]["batch_size"],
        "clips_per_epoch": rates[0]["clips_per_epoch"],
        "default_num_workers": default,
        "clips_per_s": by_workers,
        "first_batch_s": {str(r["num_workers"]): r["first_batch_s"] for r in rates},
        "consumer": consumption["experiment"],
        "consumer_clip_shape": consumption["clip_shape"],
        "consumption_clips_per_s": consumed,
        "step_time_s": consumption["step_time_s"],
        "ratio_at_default": at_default / consumed,
        "ratio_at_0": by_workers["0"] / consumed if "0" in by_workers else None,
        "ratio_by_workers": {k: v / consumed for k, v in by_workers.items()},
        "load_share_at_0": None
        if load_s is None
        else load_s / (load_s + consumption["step_time_s"]),
        "meets_3x": bool(at_default / consumed >= REQUIRED_RATIO),
        "loadavg": os.getloadavg(),
        "loadavg_per_case": [r["loadavg"] for r in rates],
    }


def run(ctx: Context) -> dict:
    args = ctx.args
    threads = args.threads
    workers = sorted(set(args.data_workers))
    wanted = args.data_loaders or list(LOADERS)
    consumption: dict[str, dict] = {}
    fed: dict[str, list[dict]] = {}
    for loader in dict.fromkeys(LOADERS[name]["consumer"] for name in wanted):
        experiment = LOADERS[loader]["experiment"]
        consumption[loader] = emit(
            in_process(step_time, experiment, threads, args.data_steps, args.data_warmup)
        )
        if args.data_fed_steps > 0:
            fed[loader] = [
                emit(
                    in_process_with_children(
                        step_time, experiment, threads, args.data_fed_steps, args.data_warmup, n
                    )
                )
                for n in workers
            ]
    rows = []
    with tempfile.TemporaryDirectory() as video_dir:
        for name in wanted:
            experiment = LOADERS[name]["experiment"]
            overrides = video_folder_overrides(video_dir) if name == "video_folder" else []
            # The config's own num_workers first (it says which value is the default), then the
            # others not yet measured.
            rates = [
                in_process_with_children(
                    loader_rate, experiment, overrides, None, threads, args.data_seconds
                )
            ]
            for n in workers:
                if n != rates[0]["num_workers"]:
                    rates.append(
                        in_process_with_children(
                            loader_rate, experiment, overrides, n, threads, args.data_seconds
                        )
                    )
            consumer = LOADERS[name]["consumer"]
            if consumption[consumer]["clip_shape"] != rates[0]["clip_shape"]:
                raise RuntimeError(
                    f"{name}: clips {rates[0]['clip_shape']} differ from those of the step it is "
                    f"compared with ({consumption[consumer]['clip_shape']})"
                )
            row = loader_row(name, experiment, overrides, rates, consumption[consumer])
            if consumer in fed and name == consumer:  # the fed steps ran on this loader
                row["fed_step_time_s"] = {
                    str(f["fed_num_workers"]): f["step_time_s"] for f in fed[consumer]
                }
            rows.append(emit(row))
    steps = list(consumption.values()) + [f for runs in fed.values() for f in runs]
    return {"data_throughput": rows, "data_step_times": steps}
