"""LightningDataModules: camera / video clips (WF-VAE, TemporalModule) and LiDAR range sequences
(STDiff).

Splits are lists of drive (or sequence, or video) names in the config. `synthetic` =
``{generate_if_missing: true, size: small, seed: 0}`` makes `prepare_data` write the synthetic
KITTI into `root` (once: an existing dataset of the same size and seed is reused). Without it a
missing root is an error that says how to point the run at real data.

Attributes for start-up checks: `frame_size` (H, W), `channels`, `clip_length`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from wavecast.data.datasets import (
    RANGE_CHANNELS,
    KittiCameraClips,
    KittiRangeSequences,
    VideoFolderClips,
)
from wavecast.data.errors import DataError
from wavecast.data.range_projection import RangeProjection, check_normalization

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_STAGE_SPLITS = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
}


def _plain(value: Any) -> Any:
    """OmegaConf containers (from Hydra) -> plain lists / dicts."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        return value
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def evenly_spaced(n: int, k: int | None) -> list[int]:
    """At most `k` indices spread evenly over range(n), first and last included."""
    if k is None or k >= n:
        return list(range(n))
    if k < 1:
        raise ValueError(f"max_clips_per_split values must be >= 1 or null, got {k}")
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


class _KittiDataModule(pl.LightningDataModule):
    """Root / synthetic handling, split bookkeeping and loaders shared by both modules."""

    def __init__(
        self,
        root: str | Path,
        train_drives: Sequence[str] | None,
        val_drives: Sequence[str] | None,
        test_drives: Sequence[str] | None,
        batch_size: int,
        num_workers: int,
        on_error: str,
        synthetic: Mapping[str, Any] | None,
        pin_memory: bool,
        persistent_workers: bool,
        max_clips_per_split: Mapping[str, int | None] | None,
    ) -> None:
        super().__init__()
        self.root = Path(str(root))
        self.drives = {
            "train": list(_plain(train_drives) or []),
            "val": list(_plain(val_drives) or []),
            "test": list(_plain(test_drives) or []),
        }
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.on_error = on_error
        self.synthetic = dict(_plain(synthetic)) if synthetic else None
        if self.synthetic is not None:
            unknown = set(self.synthetic) - {"generate_if_missing", "size", "seed"}
            if unknown:
                raise ValueError(
                    f"data.synthetic: unknown keys {sorted(unknown)} (known: generate_if_missing, size, seed)"
                )
        self.pin_memory, self.persistent_workers = bool(pin_memory), bool(persistent_workers)
        caps = dict(_plain(max_clips_per_split) or {})
        unknown = set(caps) - set(SPLITS)
        if unknown:
            raise ValueError(
                f"data.max_clips_per_split: unknown splits {sorted(unknown)} (known: {SPLITS})"
            )
        self.max_clips_per_split = caps
        self.datasets: dict[str, Dataset | None] = dict.fromkeys(SPLITS)

    # -- data preparation -------------------------------------------------------------------

    @property
    def generates_synthetic(self) -> bool:
        return bool(self.synthetic and self.synthetic.get("generate_if_missing", False))

    def prepare_data(self) -> None:
        """Write the synthetic KITTI into `root` when requested (no-op when already there)."""
        if self.generates_synthetic:
            from wavecast.data.synthetic import generate_synthetic_kitti
            from wavecast.data.synthetic.writer import INCOMPLETE_MARKER, MANIFEST

            ours = (self.root / MANIFEST).exists() or (self.root / INCOMPLETE_MARKER).exists()
            if self.root.exists() and not ours and any(self.root.iterdir()):
                # Never write into somebody's data: only a new / empty folder or our own.
                raise DataError(
                    f"data.root={self.root} holds data that is not the synthetic KITTI, and "
                    "data.synthetic asks to generate the synthetic KITTI into it: set "
                    "data.synthetic=null to train on this folder (with data.source and the "
                    "split keys that fit it), or point data.root at a new folder",
                    self.root,
                )
            if not ours:
                log.info("Generating the synthetic KITTI (%s) into %s", self.synthetic, self.root)
            generate_synthetic_kitti(
                self.root,
                size=str(self.synthetic.get("size", "small")),
                seed=int(self.synthetic.get("seed", 0)),
            )
        else:
            self._check_root()

    def _check_root(self) -> None:
        if not self.root.exists():
            raise DataError(
                f"data root {self.root} does not exist; pass data.root=/path/to/kitti_raw (the folder "
                "holding the <date>/ folders), or set data.synthetic.generate_if_missing=true to "
                "generate the synthetic KITTI there",
                self.root,
            )

    # -- datasets ---------------------------------------------------------------------------

    def _build(self, split: str) -> Dataset:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        self._check_root()
        if stage in (None, "fit") and not self.drives["train"]:
            raise DataError(
                "data.train_drives is empty or null: nothing to train on; list the drives (or "
                "videos) by name, or for a folder of your own videos use data=video_folder "
                "(every video that is not held out)",
                self.root,
            )
        splits = SPLITS if stage is None else _STAGE_SPLITS.get(stage, SPLITS)
        for split in splits:
            if self.datasets[split] is not None or not self.drives[split]:
                continue
            ds = self._build(split)
            keep = evenly_spaced(len(ds), self.max_clips_per_split.get(split))
            self.datasets[split] = ds if len(keep) == len(ds) else Subset(ds, keep)
            log.info(
                "%s split: %d items from %s", split, len(self.datasets[split]), self.drives[split]
            )

    def _loader(self, split: str) -> DataLoader | list:
        ds = self.datasets[split]
        if ds is None:
            if self.drives[split]:
                raise RuntimeError(
                    f"{type(self).__name__}.setup() must run before the {split} loader"
                )
            return []  # no drives configured for this split: Lightning skips it
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=split == "train",
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader | list:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader | list:
        return self._loader("test")


class HorizontalFlip(Dataset):
    """Mirrors each item's "video" [3, T, H, W] left-right with probability 1/2 (torch's RNG, so
    Lightning's seeding and worker seeds apply). Street scenes are plausible mirrored."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        if item is not None and bool(torch.rand(()) < 0.5):
            item = {**item, "video": item["video"].flip(-1)}
        return item


class VideoClipDataModule(_KittiDataModule):
    """Video clips {"video": [B, 3, T, H, W] in [-1, 1], "drive", "start"} for the video models.

    source "kitti_raw": `*_drives` name KITTI raw drives under `root`; "video_folder": they name
    video files or sub-folders of `root`. `train_crop` ("center" / "random") and `train_flip`
    (random left-right mirroring) apply to the train split only; val / test crop the centre.
    """

    def __init__(
        self,
        root: str | Path,
        train_drives: Sequence[str] | None,
        val_drives: Sequence[str] | None,
        test_drives: Sequence[str] | None,
        clip_length: int,
        image_size: Sequence[int],
        batch_size: int,
        num_workers: int = 0,
        stride: int = 1,
        source: str = "kitti_raw",
        on_error: str = "raise",
        synthetic: Mapping[str, Any] | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        max_clips_per_split: Mapping[str, int | None] | None = None,
        frame_step: int = 1,
        camera: str = "image_02",
        train_crop: str = "center",
        train_flip: bool = False,
    ) -> None:
        super().__init__(
            root, train_drives, val_drives, test_drives, batch_size, num_workers, on_error,
            synthetic, pin_memory, persistent_workers, max_clips_per_split,
        )  # fmt: skip
        self.train_flip = bool(train_flip)
        if source not in ("kitti_raw", "video_folder"):
            raise ValueError(f"data.source must be 'kitti_raw' or 'video_folder', got {source!r}")
        if source == "video_folder" and self.generates_synthetic:
            raise ValueError(
                "data.synthetic generates KITTI raw drives: use it with source=kitti_raw"
            )
        image_size = list(_plain(image_size))
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"data.image_size must be [H, W], got {image_size}")
        self.source = source
        self.clip_length, self.stride, self.frame_step = (
            int(clip_length),
            int(stride),
            int(frame_step),
        )
        self.frame_size = (int(image_size[0]), int(image_size[1]))
        self.channels = 3
        self.camera, self.train_crop = camera, train_crop

    def _build(self, split: str) -> Dataset:
        crop = self.train_crop if split == "train" else "center"
        common = dict(
            clip_length=self.clip_length,
            stride=self.stride,
            frame_step=self.frame_step,
            image_size=self.frame_size,
            crop=crop,
            on_error=self.on_error,
        )
        if self.source == "kitti_raw":
            ds = KittiCameraClips(self.root, self.drives[split], camera=self.camera, **common)
        else:
            ds = VideoFolderClips(self.root, files=self.drives[split], **common)
        return HorizontalFlip(ds) if split == "train" and self.train_flip else ds


class RangeSequenceDataModule(_KittiDataModule):
    """LiDAR range-image sequences {"frames": [B, T, C, H, W], "mask", "range_m", "drive", "start"}.

    `projection` = keyword arguments of `RangeProjection`; `layout` "raw" (drive names) or
    "odometry" (sequence names, e.g. the protocol split train 00-05, val 06-07, test 08-10).
    """

    def __init__(
        self,
        root: str | Path,
        train_drives: Sequence[str] | None,
        val_drives: Sequence[str] | None,
        test_drives: Sequence[str] | None,
        n_obs: int,
        n_pred: int,
        batch_size: int,
        projection: Mapping[str, Any] | None = None,
        normalization: str = "log2_81",
        layout: str = "raw",
        channels: Sequence[str] = ("range",),
        stride: int = 1,
        frame_step: int = 1,
        num_workers: int = 0,
        on_error: str = "raise",
        synthetic: Mapping[str, Any] | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        max_clips_per_split: Mapping[str, int | None] | None = None,
    ) -> None:
        super().__init__(
            root, train_drives, val_drives, test_drives, batch_size, num_workers, on_error,
            synthetic, pin_memory, persistent_workers, max_clips_per_split,
        )  # fmt: skip
        if layout not in ("raw", "odometry"):
            raise ValueError(f"data.layout must be 'raw' or 'odometry', got {layout!r}")
        if layout == "odometry" and self.generates_synthetic:
            raise ValueError(
                "data.synthetic generates the KITTI raw layout: use it with layout=raw"
            )
        self.projection = dict(_plain(projection) or {})
        proj = RangeProjection(**self.projection)  # fails here, at start-up, on a bad key
        check_normalization(normalization)  # ditto for the normalisation name
        self.normalization, self.layout = normalization, layout
        self.channels_names = tuple(_plain(channels))
        if not self.channels_names or any(c not in RANGE_CHANNELS for c in self.channels_names):
            raise ValueError(
                f"data.channels must name some of {RANGE_CHANNELS}, got {self.channels_names}"
            )
        self.n_obs, self.n_pred = int(n_obs), int(n_pred)
        self.clip_length = self.n_obs + self.n_pred
        self.stride, self.frame_step = int(stride), int(frame_step)
        self.frame_size = (proj.height, proj.width)
        self.channels = len(self.channels_names)

    def _build(self, split: str) -> Dataset:
        return KittiRangeSequences(
            self.root,
            self.drives[split],
            n_obs=self.n_obs,
            n_pred=self.n_pred,
            stride=self.stride,
            layout=self.layout,
            projection=self.projection,
            normalization=self.normalization,
            channels=self.channels_names,
            frame_step=self.frame_step,
            on_error=self.on_error,
        )
