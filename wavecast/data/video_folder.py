"""A user's own videos: every video file under a folder, split into train / val / test by whole
video, for the WF-VAE (`VideoFolderDataModule`, clips) and the TemporalModule
(`VideoFlowPairDataModule`, consecutive frame pairs with OpenCV DIS flow).

Splits (by relative path, never by position in a folder listing):

* `val_videos` / `test_videos` name files or sub-folders of `root`; left null, they are drawn by
  a stable hash: the videos sorted by the SHA-1 of their relative path, the first
  ``max(1, round(test_fraction * n))`` are test, the next ``max(1, round(val_fraction * n))`` val
  (a fraction of 0 leaves that split out). The same folder always gives the same split.
* `train_videos` null = every video in neither held-out split.

Every split is resolved when the module is built (before any training): a named video that does
not exist, or a split left empty, is a `DataError` naming the key and the root. Frames are scaled
with their aspect ratio kept (`short_side`, `max_size`) and centre-cropped to multiples of 8
(`wavecast.data.datasets.frame_geometry`), or scaled and cropped to a fixed `image_size`.
Videos of different sizes are batched by size (`SizeBatches`). Nothing is written into `root`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from wavecast.data.datamodules import SPLITS, HorizontalFlip, _KittiDataModule, _plain
from wavecast.data.datasets import (
    CROPS,
    ON_ERROR,
    VideoFolderClips,
    _check_choice,
    _ClipDataset,
    index_videos,
    resize_crop,
)
from wavecast.data.errors import DataError
from wavecast.data.video import VIDEO_EXTENSIONS, VideoReader, list_videos

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Splits


def stable_order(names: Sequence[str]) -> list[str]:
    """`names` sorted by the SHA-1 of each name (then the name): independent of the file system."""
    return sorted(names, key=lambda n: (hashlib.sha1(n.encode("utf-8")).hexdigest(), n))


def _expand(root: Path, names: Sequence[str] | str, key: str, available: list[str]) -> list[str]:
    """Names of files or sub-folders of `root` -> relative paths of the videos they mean."""
    if isinstance(names, str):
        raise DataError(f"data.{key} must be a list of names, got the string {names!r}", root)
    out: list[str] = []
    for name in names:
        name = str(name).strip("/")
        inside = [a for a in available if a == name or a.startswith(name + "/")]
        if not inside:
            shown = ", ".join(available[:20]) + (" ..." if len(available) > 20 else "")
            raise DataError(
                f"data.{key}: no video {name!r} under data.root (a file or sub-folder relative "
                f"to it); available: {shown or '(none)'}",
                root,
            )
        out += [a for a in inside if a not in out]
    return out


def split_videos(
    root: str | Path,
    train_videos: Sequence[str] | None = None,
    val_videos: Sequence[str] | None = None,
    test_videos: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
) -> dict[str, list[str]]:
    """{"train" | "val" | "test": relative paths of the videos of each split} (see module doc).

    DataError naming the key and the root when the root has no videos, a named video does not
    exist, a video is in two splits, or a split ends up empty.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            "data.root: folder does not exist; pass data.root=/path/to/your/videos", root
        )
    exts = tuple(e.lower() for e in extensions)
    available = [str(p.relative_to(root).as_posix()) for p in list_videos(root, exts)]
    if not available:
        raise DataError(
            f"data.root holds no video files ({', '.join(exts)}), sub-folders included", root
        )
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(f) < 1.0:
            raise ValueError(f"data.{name}={f} must be in [0, 1)")
    given = {"train": train_videos, "val": val_videos, "test": test_videos}
    splits = {
        s: _expand(root, v, f"{s}_videos", available) for s, v in given.items() if v is not None
    }
    taken = {v for s in ("val", "test") for v in splits.get(s, [])}
    pool = [v for v in stable_order(available) if v not in taken]
    for split, fraction in (("test", test_fraction), ("val", val_fraction)):
        if split in splits:
            continue
        n = 0 if float(fraction) == 0 else max(1, round(float(fraction) * len(available)))
        splits[split], pool = pool[:n], pool[n:]
    if "train" not in splits:
        splits["train"] = sorted(pool)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sorted(set(splits[a]) & set(splits[b]))
        if both:
            raise DataError(
                f"data.{a}_videos and data.{b}_videos share {both[:5]}: a held-out video must "
                "not be trained on",
                root,
            )
    wanted = {"train": True, "val": float(val_fraction) > 0 or val_videos is not None,
              "test": float(test_fraction) > 0 or test_videos is not None}  # fmt: skip
    for split in SPLITS:
        if wanted[split] and not splits[split]:
            raise DataError(
                f"data.{split}_videos: the {split} split is empty ({len(available)} videos under "
                f"data.root, val {len(splits['val'])}, test {len(splits['test'])}); name videos "
                f"with data.{split}_videos=[...]"
                + ("" if split == "train" else f" or set data.{split}_fraction=0 to leave it out"),
                root,
            )
    return {s: sorted(splits[s]) for s in SPLITS}


# ----------------------------------------------------------------------------------------------
# Batching videos of different sizes


def item_sizes(ds: Dataset) -> list[tuple[int, int]]:
    """(H, W) of every item of a video dataset (through `Subset` / `HorizontalFlip`)."""
    if isinstance(ds, Subset):
        inner = item_sizes(ds.dataset)
        return [inner[i] for i in ds.indices]
    if isinstance(ds, HorizontalFlip | SizeBatches):
        return item_sizes(ds.dataset)
    return [ds.clip_size(i) for i in range(len(ds))]


class SizeBatches(Dataset):
    """Item i = batch i, `batch_size` items of `dataset` that share one frame size, collated.

    For folders whose videos differ in size (4:3, 16:9, portrait): a batch cannot mix sizes.
    The composition is drawn once (seeded, shuffled within each size when `shuffle`); a
    DataLoader with ``batch_size=None`` shuffles the order of the batches per epoch, and under DDP
    Lightning's distributed sampler gives every rank the same number of batches.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        self.dataset = dataset
        gen = torch.Generator().manual_seed(seed)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(item_sizes(dataset)):
            groups.setdefault(size, []).append(i)
        self.batches: list[list[int]] = []
        for size in sorted(groups):
            idx = groups[size]
            if shuffle:
                idx = [idx[j] for j in torch.randperm(len(idx), generator=gen).tolist()]
            self.batches += [idx[k : k + batch_size] for k in range(0, len(idx), batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return default_collate([self.dataset[j] for j in self.batches[i]])


# ----------------------------------------------------------------------------------------------
# Data modules


class _VideoFolderBase(_KittiDataModule):
    """Split resolution, geometry keys and size-aware loaders shared by both data modules."""

    def __init__(
        self,
        root: str | Path,
        batch_size: int,
        train_videos: Sequence[str] | None,
        val_videos: Sequence[str] | None,
        test_videos: Sequence[str] | None,
        val_fraction: float,
        test_fraction: float,
        short_side: int | None,
        max_size: int | None,
        image_size: Sequence[int] | None,
        extensions: Sequence[str],
        num_workers: int,
        on_error: str,
        synthetic: Mapping[str, Any] | None,
        pin_memory: bool,
        persistent_workers: bool,
        max_items_per_split: Mapping[str, int | None] | None,
    ) -> None:
        if synthetic:
            raise ValueError(
                "data.synthetic must be null for a video folder (nothing is generated into "
                "data.root)"
            )
        if str(root) in ("", "None", "???"):
            raise DataError("data.root is required: pass data.root=/path/to/your/videos")
        self.extensions = tuple(str(e).lower() for e in _plain(extensions))
        splits = split_videos(
            root,
            _plain(train_videos),
            _plain(val_videos),
            _plain(test_videos),
            val_fraction,
            test_fraction,
            self.extensions,
        )
        super().__init__(
            root, splits["train"], splits["val"], splits["test"], batch_size, num_workers,
            on_error, None, pin_memory, persistent_workers, max_items_per_split,
        )  # fmt: skip
        if image_size is not None:
            image_size = [int(s) for s in _plain(image_size)]
            if len(image_size) != 2 or min(image_size) < 1:
                raise ValueError(f"data.image_size must be [H, W] or null, got {image_size}")
        if image_size is None and short_side is None and max_size is None:
            log.info("video folder: frames at their own size, centre-cropped to multiples of 8")
        self.short_side = None if short_side is None else int(short_side)
        self.max_size = None if max_size is None else int(max_size)
        # A fixed size is checked by the model at start-up; per-video sizes are multiples of 8.
        self.frame_size = None if image_size is None else (image_size[0], image_size[1])
        self.image_size = self.frame_size
        self.channels = 3
        for split in SPLITS:
            log.info("%s split: %d videos under %s", split, len(self.drives[split]), self.root)

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise DataError("data.root: folder does not exist", self.root)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and not self.drives["train"]:
            raise DataError("data.train_videos: no video to train on", self.root)
        super().setup(stage)

    def _loader(self, split: str) -> DataLoader | list:
        ds = self.datasets[split]
        if ds is None or len(set(item_sizes(ds))) <= 1:
            return super()._loader(split)
        log.info(
            "%s split: videos of %d frame sizes, batched by size", split, len(set(item_sizes(ds)))
        )
        return DataLoader(
            SizeBatches(ds, self.batch_size, shuffle=split == "train"),
            batch_size=None,
            shuffle=split == "train",
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )


class VideoFolderDataModule(_VideoFolderBase):
    """Clips {"video": [B, 3, T, H, W] in [-1, 1], "drive": relative path, "start"} from the
    videos under `root` (mp4 / mkv / avi / webm / mov / m4v, sub-folders included).

    Args (beyond the splits of the module docstring):
        clip_length, stride, frame_step: frames per clip, between clip starts, between frames.
        short_side: scale each video so its short side is this (aspect ratio kept); null = as is.
        max_size: and its long side at most this; null = no limit.
        image_size: [H, W] to scale-and-crop every video to instead (null = per-video sizes).
        train_crop: "center" | "random" (train split only); train_flip: random mirroring.
        max_clips_per_split: {val: 32, ...} evenly spaced clips per split (null = all).
    """

    def __init__(
        self,
        root: str | Path,
        clip_length: int,
        batch_size: int,
        train_videos: Sequence[str] | None = None,
        val_videos: Sequence[str] | None = None,
        test_videos: Sequence[str] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        short_side: int | None = 128,
        max_size: int | None = None,
        image_size: Sequence[int] | None = None,
        stride: int = 1,
        frame_step: int = 1,
        train_crop: str = "center",
        train_flip: bool = False,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        num_workers: int = 0,
        on_error: str = "raise",
        synthetic: Mapping[str, Any] | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        max_clips_per_split: Mapping[str, int | None] | None = None,
    ) -> None:
        super().__init__(
            root, batch_size, train_videos, val_videos, test_videos, val_fraction, test_fraction,
            short_side, max_size, image_size, extensions, num_workers, on_error, synthetic,
            pin_memory, persistent_workers, max_clips_per_split,
        )  # fmt: skip
        _check_choice("data.train_crop", train_crop, CROPS)
        if int(clip_length) < 1 or int(stride) < 1 or int(frame_step) < 1:
            raise ValueError(
                f"data.clip_length, data.stride and data.frame_step must be >= 1, got "
                f"{clip_length}, {stride}, {frame_step}"
            )
        self.clip_length, self.stride = int(clip_length), int(stride)
        self.frame_step = int(frame_step)
        self.train_crop, self.train_flip = train_crop, bool(train_flip)

    def _build(self, split: str) -> Dataset:
        ds = VideoFolderClips(
            self.root,
            clip_length=self.clip_length,
            stride=self.stride,
            frame_step=self.frame_step,
            image_size=self.frame_size,
            files=self.drives[split],
            crop=self.train_crop if split == "train" else "center",
            on_error=self.on_error,
            extensions=self.extensions,
            short_side=self.short_side,
            max_size=self.max_size,
        )
        return HorizontalFlip(ds) if split == "train" and self.train_flip else ds


# ----------------------------------------------------------------------------------------------
# Frame pairs with OpenCV flow, for the TemporalModule

PAIR_FLOW_SOURCES = ("dis", "farneback", "raft")


def estimate_pair_flow(
    frames: torch.Tensor,
    method: str = "dis",
    consistency_check: bool = True,
    raft_weights: str | None = None,
    raft_model: str = "large",
) -> tuple[torch.Tensor, torch.Tensor]:
    """frames [2, 3, H, W] in [-1, 1] -> flow [2, H, W] (frame 0 -> 1, pixels), valid [1, H, W]:
    the forward-backward consistency mask (one more estimate) or all True."""
    from wavecast.flow import estimate_flow, forward_backward_consistency

    kwargs = dict(
        method=method, raft_weights=raft_weights, value_range=(-1.0, 1.0), raft_model=raft_model
    )
    a, b = frames[:1], frames[1:]
    fw = estimate_flow(a, b, **kwargs)
    if consistency_check:
        valid = forward_backward_consistency(fw, estimate_flow(b, a, **kwargs)) > 0.5
    else:
        valid = torch.ones_like(fw[:, :1], dtype=torch.bool)
    return fw[0], valid[0]


class VideoFlowPairs(_ClipDataset):
    """Consecutive frame pairs (t-1, t) of the videos `files` (relative to `root`) with the flow
    t-1 -> t estimated on the resized frames: the items of `wavecast.data.flow_pairs`,
    {"frames": [2, 3, H, W] in [-1, 1], "flow": [2, H, W], "flow_valid": [1, H, W] bool,
    "drive": relative path, "start": index of frame t-1}.

    Geometry as `VideoFolderClips` (image_size, or per video from short_side / max_size).
    """

    def __init__(
        self,
        root: str | Path,
        files: Sequence[str],
        image_size: Sequence[int] | None = None,
        short_side: int | None = 128,
        max_size: int | None = None,
        flow_source: str = "dis",
        stride: int = 1,
        crop: str = "center",
        on_error: str = "raise",
        consistency_check: bool = True,
        raft_weights: str | None = None,
        raft_model: str = "large",
    ) -> None:
        _check_choice("data.flow_source", flow_source, PAIR_FLOW_SOURCES)
        _check_choice("crop", crop, CROPS)
        _check_choice("on_error", on_error, ON_ERROR)
        if stride < 1:
            raise ValueError(f"data.stride must be >= 1, got {stride}")
        self._init_skips()
        self.root = Path(root)
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.flow_source, self.stride, self.crop, self.on_error = (
            flow_source,
            stride,
            crop,
            on_error,
        )
        self.consistency_check = bool(consistency_check)
        self.raft_weights, self.raft_model = raft_weights, raft_model
        self.videos, self.sizes, self.clips = index_videos(
            self,
            [self.root / rel for rel in files],
            self.image_size,
            short_side,
            max_size,
            on_error,
            too_short=lambda n: None if n >= 2 else f"video has {n} frame(s): no pair",
            starts=lambda n: range(0, n - 1, self.stride),
        )
        if not self.clips:
            raise DataError(
                f"no usable frame pairs in {list(files)} (skipped: {self.skipped})", self.root
            )

    def clip_size(self, i: int) -> tuple[int, int]:
        return self.sizes[self.clips[i][0]]

    def _read(self, i: int) -> dict:
        k, start = self.clips[i]
        path, pts = self.videos[k]
        with VideoReader(path, frame_pts=pts) as reader:
            frames = resize_crop(reader.read_clip(start, 2), self.sizes[k], self.crop)
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        x = (x / 127.5 - 1.0).contiguous()
        flow, valid = estimate_pair_flow(
            x, self.flow_source, self.consistency_check, self.raft_weights, self.raft_model
        )
        return {
            "frames": x,
            "flow": flow.contiguous(),
            "flow_valid": valid.contiguous(),
            "drive": str(path.relative_to(self.root).as_posix()),
            "start": start,
        }


class VideoFlowPairDataModule(_VideoFolderBase):
    """Frame pairs with OpenCV flow {"frames": [B, 2, 3, H, W], "flow": [B, 2, H, W],
    "flow_valid": [B, 1, H, W], "drive", "start"} from the videos under `root`, for the
    TemporalModule (`experiment=temporal_video`). Splits and geometry as `VideoFolderDataModule`;
    flow_source "dis" | "farneback" (OpenCV) | "raft" (local weights); `max_pairs_per_split`
    caps each split with evenly spaced pairs.
    """

    def __init__(
        self,
        root: str | Path,
        batch_size: int,
        train_videos: Sequence[str] | None = None,
        val_videos: Sequence[str] | None = None,
        test_videos: Sequence[str] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        short_side: int | None = 128,
        max_size: int | None = None,
        image_size: Sequence[int] | None = None,
        flow_source: str = "dis",
        stride: int = 1,
        train_crop: str = "center",
        consistency_check: bool = True,
        raft_weights: str | None = None,
        raft_model: str = "large",
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        num_workers: int = 0,
        on_error: str = "raise",
        synthetic: Mapping[str, Any] | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        max_pairs_per_split: Mapping[str, int | None] | None = None,
    ) -> None:
        _check_choice("data.flow_source", flow_source, PAIR_FLOW_SOURCES)
        _check_choice("data.train_crop", train_crop, CROPS)
        if flow_source == "raft":
            from wavecast.data.flow_pairs import _check_raft

            _check_raft(raft_weights)
        super().__init__(
            root, batch_size, train_videos, val_videos, test_videos, val_fraction, test_fraction,
            short_side, max_size, image_size, extensions, num_workers, on_error, synthetic,
            pin_memory, persistent_workers, max_pairs_per_split,
        )  # fmt: skip
        if int(stride) < 1:
            raise ValueError(f"data.stride must be >= 1, got {stride}")
        self.clip_length = 2
        self.flow_source, self.stride, self.train_crop = flow_source, int(stride), train_crop
        self.consistency_check = bool(consistency_check)
        self.raft_weights, self.raft_model = raft_weights, raft_model

    def _build(self, split: str) -> Dataset:
        return VideoFlowPairs(
            self.root,
            self.drives[split],
            image_size=self.frame_size,
            short_side=self.short_side,
            max_size=self.max_size,
            flow_source=self.flow_source,
            stride=self.stride,
            crop=self.train_crop if split == "train" else "center",
            on_error=self.on_error,
            consistency_check=self.consistency_check,
            raft_weights=self.raft_weights,
            raft_model=self.raft_model,
        )
