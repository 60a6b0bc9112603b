"""torch Datasets: camera clips from KITTI raw, clips from video files, LiDAR range sequences.

Items are dicts:

* `KittiCameraClips`, `VideoFolderClips`: ``{"video": float32 [3, T, H, W] in [-1, 1],
  "drive": str, "start": int}``.
* `KittiRangeSequences`: ``{"frames": float32 [T, C, H, W] in [-1, 1], "mask": bool
  [T, 1, H, W], "range_m": float32 [T, 1, H, W] (metres, -1 empty), "poses": float64
  [T, 4, 4] (world_T_velodyne relative to the sequence's first scan; NaN where the source has
  no poses), "drive": str, "start": int}`` with T = n_obs + n_pred.

Drives, sequences and video files are chosen by name, never by position in a folder listing.
With ``on_error="skip"`` a drive or file that cannot be used (missing stream, too short,
corrupt) is left out and recorded in ``.skipped`` (one `logging.warning` per dataset) instead of
raising; a clip whose file turns out corrupt when read is recorded once and the next clip is
served in its place. (With DataLoader workers, read-time skips are recorded in the workers'
copies of the dataset.) An unknown name in the configuration always raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from wavecast.data.errors import DataError
from wavecast.data.kitti_odometry import KittiOdometrySequence, list_sequences, sequence_name
from wavecast.data.kitti_raw import KittiRawDrive, find_drive
from wavecast.data.range_projection import RangeProjection, normalize_range
from wavecast.data.video import VIDEO_EXTENSIONS, VideoReader, list_videos

log = logging.getLogger(__name__)

CROPS = ("center", "random")
ON_ERROR = ("raise", "skip")
RANGE_CHANNELS = ("range", "reflectance")


# ----------------------------------------------------------------------------------------------
# Shared pieces


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_names(kind: str, names: Sequence[str] | str) -> list[str]:
    if isinstance(names, str):
        raise ValueError(f"{kind} must be a list of names, got the string {names!r}")
    names = [str(n) for n in names]
    if not names:
        raise ValueError(f"{kind}: the list of names is empty")
    return names


def clip_starts(n_frames: int, clip_length: int, stride: int, frame_step: int) -> list[int]:
    """Start frames of every clip of `clip_length` frames `frame_step` apart, `stride` apart."""
    span = (clip_length - 1) * frame_step + 1
    return list(range(0, n_frames - span + 1, stride))


def resize_crop(
    frames: np.ndarray,
    size: tuple[int, int],
    crop: str = "center",
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """[T, H, W, C] uint8 -> [T, h, w, C]: scale (aspect kept) so (h, w) fits inside, then crop.

    The scale is the smallest that covers the target; one crop offset for all frames of a clip
    ("random" draws it from torch's RNG, so Lightning's seeding and worker seeds apply).
    """
    t, h_in, w_in, c = frames.shape
    h, w = size
    scale = max(h / h_in, w / w_in)
    h_new, w_new = max(h, round(h_in * scale)), max(w, round(w_in * scale))
    if (h_new, w_new) != (h_in, w_in):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        frames = np.stack([cv2.resize(f, (w_new, h_new), interpolation=interp) for f in frames])
        frames = frames.reshape(t, h_new, w_new, c)
    if crop == "random":
        top = int(torch.randint(0, h_new - h + 1, (1,), generator=generator))
        left = int(torch.randint(0, w_new - w + 1, (1,), generator=generator))
    else:
        top, left = (h_new - h) // 2, (w_new - w) // 2
    return frames[:, top : top + h, left : left + w]


def frame_geometry(
    size: tuple[int, int],
    short_side: int | None = None,
    max_size: int | None = None,
    path: str | Path | None = None,
    multiple: int = 8,
) -> tuple[int, int]:
    """Output (H, W) of a video of `size` (H, W): scaled with its aspect ratio kept so the short
    side is `short_side` (None: unscaled), shrunk further so the long side is at most `max_size`,
    then cut down to multiples of `multiple` (what `resize_crop` then centre-crops to).

    E.g. 720 x 1280 with short_side=128 -> 128 x 224 (227.6 cut to 224); 1280 x 720 -> 224 x 128.
    """
    h, w = int(size[0]), int(size[1])
    for name, v in (("short_side", short_side), ("max_size", max_size)):
        if v is not None and int(v) < multiple:
            raise ValueError(f"data.{name}={v} must be >= {multiple} or null")
    scale = 1.0 if short_side is None else int(short_side) / min(h, w)
    if max_size is not None:
        scale = min(scale, int(max_size) / (max(h, w) * 1.0))
    out = (round(h * scale) // multiple * multiple, round(w * scale) // multiple * multiple)
    if min(out) < multiple:
        raise DataError(
            f"a {h}x{w} video scaled by {scale:.3g} (short_side={short_side}, "
            f"max_size={max_size}) is smaller than {multiple} pixels on one side",
            path,
        )
    return out


def to_video_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, C] (C = 1 or 3) -> float32 [3, T, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float()
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1, -1)
    return (x / 127.5 - 1.0).contiguous()


class _SkipLog:
    """`.skipped` list plus one warning per dataset."""

    def _init_skips(self) -> None:
        self.skipped: list[str] = []
        self._warned = False
        self._bad_clips: set[int] = set()

    def _skip(self, reason: str) -> None:
        self.skipped.append(reason)
        if not self._warned:
            self._warned = True
            log.warning(
                "%s: skipping unusable input (on_error='skip'): %s. Further skips are not logged; "
                "see the dataset's .skipped list.",
                type(self).__name__,
                reason,
            )


class _ClipDataset(Dataset, _SkipLog):
    """Index of (source, start) clips with read-time error handling."""

    clips: list[tuple[int, int]]
    on_error: str

    def __len__(self) -> int:
        return len(self.clips)

    def _read(self, i: int) -> dict:
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{type(self).__name__}: index {i} out of range [0, {len(self)})")
        i %= len(self)
        for attempt in range(len(self)):
            j = (i + attempt) % len(self)
            if j in self._bad_clips:
                continue
            try:
                return self._read(j)
            except DataError as err:
                if self.on_error == "raise":
                    raise
                self._bad_clips.add(j)  # recorded once; the next clip is served instead
                self._skip(str(err))
        raise DataError(
            f"{type(self).__name__}: every clip failed to load; last: {self.skipped[-1]}"
        )


# ----------------------------------------------------------------------------------------------
# Camera clips


class KittiCameraClips(_ClipDataset):
    """Clips of `clip_length` frames of one KITTI raw camera, from the drives named in `drives`.

    Args:
        root: KITTI raw root. drives: drive names (``2011_09_26_drive_0001_sync``).
        clip_length: frames per clip (T). stride: frames between clip starts.
        frame_step: frames between the frames of one clip (temporal subsampling).
        image_size: (H, W) of the output; frames are scaled (aspect kept) to cover it and cropped.
        camera: ``image_02`` (left colour) by default; grey cameras are repeated to 3 channels.
        crop: "center" or "random" (one offset per clip). on_error: "raise" or "skip".
    """

    def __init__(
        self,
        root: str | Path,
        drives: Sequence[str],
        clip_length: int,
        stride: int = 1,
        frame_step: int = 1,
        image_size: Sequence[int] = (64, 192),
        camera: str = "image_02",
        crop: str = "center",
        on_error: str = "raise",
    ) -> None:
        _check_choice("crop", crop, CROPS)
        _check_choice("on_error", on_error, ON_ERROR)
        if clip_length < 1 or stride < 1 or frame_step < 1:
            raise ValueError(
                f"clip_length, stride and frame_step must be >= 1, got {clip_length}, {stride}, {frame_step}"
            )
        self._init_skips()
        self.root = Path(root)
        self.clip_length, self.stride, self.frame_step = (
            int(clip_length),
            int(stride),
            int(frame_step),
        )
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.camera, self.crop, self.on_error = camera, crop, on_error
        self.drives: list[KittiRawDrive] = []
        self.clips = []
        span = (self.clip_length - 1) * self.frame_step + 1
        for name in _check_names("drives", drives):
            find_drive(self.root, name)  # an unknown name is a configuration error: always raise
            try:
                drive = KittiRawDrive(self.root, name, streams=(camera,))
                if drive.n_frames < span:
                    raise DataError(
                        f"drive {drive.name} has {drive.n_frames} frames, shorter than one clip of "
                        f"{span} frames (clip_length={clip_length}, frame_step={frame_step})",
                        drive.path,
                    )
            except DataError as err:
                if on_error == "raise":
                    raise
                self._skip(str(err))
                continue
            k = len(self.drives)
            self.drives.append(drive)
            self.clips += [
                (k, s) for s in clip_starts(drive.n_frames, clip_length, stride, frame_step)
            ]
        if not self.clips:
            raise DataError(
                f"no usable clips in drives {list(drives)} (skipped: {self.skipped})", self.root
            )

    def _read(self, i: int) -> dict:
        k, start = self.clips[i]
        drive = self.drives[k]
        frames = [
            drive.read_image(self.camera, start + t * self.frame_step)
            for t in range(self.clip_length)
        ]
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            raise DataError(
                f"frames {start}.. of one clip differ in size: {sorted(shapes)}", drive.path
            )
        video = resize_crop(np.stack(frames), self.image_size, self.crop)
        return {"video": to_video_tensor(video), "drive": drive.name, "start": start}


def index_videos(
    log: _SkipLog,
    paths: Sequence[Path],
    image_size: tuple[int, int] | None,
    short_side: int | None,
    max_size: int | None,
    on_error: str,
    too_short: Callable[[int], str | None],
    starts: Callable[[int], Iterable[int]],
) -> tuple[list[tuple[Path, np.ndarray | None]], list[tuple[int, int]], list[tuple[int, int]]]:
    """Probe each video once: ``(videos, sizes, items)`` with ``videos[k] = (path, frame
    timestamps)``, ``sizes[k]`` its output (H, W) (``image_size``, else `frame_geometry`) and
    ``items`` the ``(k, start)`` of every start in ``starts(n_frames)``. A video that cannot be
    read, or that ``too_short(n_frames)`` gives a reason for, raises `DataError`, or with
    ``on_error="skip"`` is left out and counted in ``log``."""
    videos: list[tuple[Path, np.ndarray | None]] = []
    sizes: list[tuple[int, int]] = []
    items: list[tuple[int, int]] = []
    for path in paths:
        try:
            with VideoReader(path) as reader:
                n, pts, size = reader.n_frames, reader.frame_pts, reader.size
            out_size = image_size or frame_geometry(size, short_side, max_size, path)
            reason = too_short(n)
            if reason is not None:
                raise DataError(reason, path)
        except DataError as err:
            if on_error == "raise":
                raise
            log._skip(str(err))
            continue
        k = len(videos)
        videos.append((path, pts))
        sizes.append(out_size)
        items += [(k, s) for s in starts(n)]
    return videos, sizes, items


class VideoFolderClips(_ClipDataset):
    """Clips from the video files under `root` (mp4 / webm / avi / mkv / mov), same items.

    Args:
        files: names relative to `root` of video files or sub-folders to use (a folder means
            every video in it); None = every video under `root`. Other arguments as in
            `KittiCameraClips`. The item's "drive" is the file's path relative to `root`.
        image_size: (H, W) of every clip (scaled to cover, then cropped); None = each video's
            own size from `frame_geometry(size, short_side, max_size)` (aspect ratio kept,
            centre-cropped to multiples of 8), so clips of different videos may differ in size
            (`clip_size(i)`).
    """

    def __init__(
        self,
        root: str | Path,
        clip_length: int,
        stride: int = 1,
        frame_step: int = 1,
        image_size: Sequence[int] | None = (64, 192),
        files: Sequence[str] | None = None,
        crop: str = "center",
        on_error: str = "raise",
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        short_side: int | None = None,
        max_size: int | None = None,
    ) -> None:
        _check_choice("crop", crop, CROPS)
        _check_choice("on_error", on_error, ON_ERROR)
        if clip_length < 1 or stride < 1 or frame_step < 1:
            raise ValueError(
                f"clip_length, stride and frame_step must be >= 1, got {clip_length}, {stride}, {frame_step}"
            )
        self._init_skips()
        self.root = Path(root)
        self.clip_length, self.stride, self.frame_step = (
            int(clip_length),
            int(stride),
            int(frame_step),
        )
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.short_side, self.max_size = short_side, max_size
        self.crop, self.on_error = crop, on_error
        extensions = tuple(e.lower() for e in extensions)
        paths = self._resolve(files, extensions)
        span = (self.clip_length - 1) * self.frame_step + 1

        def too_short(n: int) -> str | None:
            if n >= span:
                return None
            return (
                f"video has {n} frames, shorter than one clip of {span} frames "
                f"(clip_length={clip_length}, frame_step={frame_step})"
            )

        self.videos, self.sizes, self.clips = index_videos(
            self,
            paths,
            self.image_size,
            short_side,
            max_size,
            on_error,
            too_short=too_short,
            starts=lambda n: clip_starts(n, clip_length, stride, frame_step),
        )
        if not self.clips:
            raise DataError(
                f"no usable clips among {len(paths)} videos (skipped: {self.skipped})", self.root
            )

    def clip_size(self, i: int) -> tuple[int, int]:
        """(H, W) of clip i."""
        return self.sizes[self.clips[i][0]]

    def _resolve(self, files: Sequence[str] | None, extensions: tuple[str, ...]) -> list[Path]:
        available = list_videos(self.root, extensions)
        if files is None:
            if not available:
                raise DataError(f"no video files ({', '.join(extensions)})", self.root)
            return available
        out: list[Path] = []
        for name in _check_names("files", files):
            p = self.root / name
            if p.is_dir():
                found = list_videos(p, extensions)
                if not found:
                    raise DataError(f"no video files ({', '.join(extensions)})", p)
                out += found
            elif p.is_file():
                out.append(p)
            else:
                rel = [str(v.relative_to(self.root)) for v in available]
                raise DataError(
                    f"unknown video {name!r}; available: {', '.join(rel[:20]) or '(none)'}"
                    f"{' ...' if len(rel) > 20 else ''}",
                    self.root,
                )
        return out

    def _read(self, i: int) -> dict:
        k, start = self.clips[i]
        path, pts = self.videos[k]
        with VideoReader(path, frame_pts=pts) as reader:
            frames = reader.read_clip(start, self.clip_length, self.frame_step)
        video = resize_crop(frames, self.sizes[k], self.crop)
        return {
            "video": to_video_tensor(video),
            "drive": str(path.relative_to(self.root)),
            "start": start,
        }


# ----------------------------------------------------------------------------------------------
# LiDAR range sequences


class KittiRangeSequences(_ClipDataset):
    """Sequences of n_obs + n_pred consecutive LiDAR range images.

    Args:
        root: KITTI raw root (layout "raw") or odometry root (layout "odometry").
        drives: drive names (raw) or sequence names ("00".."21", odometry).
        n_obs, n_pred: observed and predicted frames (T = n_obs + n_pred).
        stride: frames between sequence starts. frame_step: frames between the frames of one
            sequence.
        projection: keyword arguments of `RangeProjection` (height, width, fov_up, fov_down,
            method, min_range, max_range, ...); its range limits also bound the normalisation.
        normalization: "log2_81", "log2_6" or "linear_80" (see range_projection).
        channels: ("range",) or ("range", "reflectance"); reflectance maps [0, 1] -> [-1, 1],
            empty cells -1.
    """

    def __init__(
        self,
        root: str | Path,
        drives: Sequence[str],
        n_obs: int,
        n_pred: int,
        stride: int = 1,
        layout: str = "raw",
        projection: dict | None = None,
        normalization: str = "log2_81",
        channels: Sequence[str] = ("range",),
        frame_step: int = 1,
        on_error: str = "raise",
    ) -> None:
        _check_choice("layout", layout, ("raw", "odometry"))
        _check_choice("on_error", on_error, ON_ERROR)
        channels = tuple(channels)
        if (
            not channels
            or len(set(channels)) != len(channels)
            or any(c not in RANGE_CHANNELS for c in channels)
        ):
            raise ValueError(
                f"channels must be distinct names from {RANGE_CHANNELS}, got {channels}"
            )
        if n_obs < 1 or n_pred < 0 or stride < 1 or frame_step < 1:
            raise ValueError(
                f"need n_obs >= 1, n_pred >= 0, stride >= 1, frame_step >= 1; got {n_obs}, {n_pred}, {stride}, {frame_step}"
            )
        self._init_skips()
        self.root = Path(root)
        self.layout, self.channels, self.on_error = layout, channels, on_error
        self.n_obs, self.n_pred, self.frame_step = int(n_obs), int(n_pred), int(frame_step)
        self.length = self.n_obs + self.n_pred
        self.projection = RangeProjection(**dict(projection or {}))
        self.normalization = normalization
        normalize_range(np.zeros(1, np.float32), normalization)  # validates the name early
        self.sources: list[KittiRawDrive | KittiOdometrySequence] = []
        self.clips = []
        span = (self.length - 1) * self.frame_step + 1
        for name in _check_names("drives", drives):
            self._check_known(name)
            try:
                src = self._open(name)
                if src.n_frames < span:
                    raise DataError(
                        f"{src.name} has {src.n_frames} scans, shorter than one sequence of {span} "
                        f"(n_obs={n_obs}, n_pred={n_pred}, frame_step={frame_step})",
                        src.path,
                    )
            except DataError as err:
                if on_error == "raise":
                    raise
                self._skip(str(err))
                continue
            k = len(self.sources)
            self.sources.append(src)
            self.clips += [
                (k, s) for s in clip_starts(src.n_frames, self.length, stride, frame_step)
            ]
        if not self.clips:
            raise DataError(
                f"no usable sequences in {list(drives)} (skipped: {self.skipped})", self.root
            )

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.projection.height, self.projection.width

    def _check_known(self, name: str) -> None:
        if self.layout == "raw":
            find_drive(self.root, name)
            return
        seq = sequence_name(name)
        if not (self.root / "sequences" / seq).is_dir():
            raise DataError(
                f"unknown sequence {seq!r}; available: {', '.join(list_sequences(self.root)) or '(none)'}",
                self.root / "sequences",
            )

    def _open(self, name: str) -> KittiRawDrive | KittiOdometrySequence:
        if self.layout == "raw":
            return KittiRawDrive(self.root, name, streams=("velodyne_points",))
        return KittiOdometrySequence(self.root, name, streams=("velodyne",))

    def _velodyne_poses(self, k: int) -> np.ndarray | None:
        """world_T_velodyne [N, 4, 4] of source k (oxts for raw drives, poses/NN.txt for
        odometry), read once; None when the source has none."""
        cache = self.__dict__.setdefault("_pose_cache", {})
        if k not in cache:
            src = self.sources[k]
            try:
                if isinstance(src, KittiRawDrive):
                    # The scans' drive object opens velodyne_points only: oxts on its own.
                    oxts = KittiRawDrive(self.root, src.name, streams=("oxts",))
                    cache[k] = oxts.poses(sensor="velodyne", relative=False)
                else:
                    cache[k] = src.velodyne_poses() if src.has_poses else None
            except (DataError, OSError, ValueError) as err:
                log.warning("%s: no ego poses (%s); pose-based baselines skip it", src.name, err)
                cache[k] = None
        return cache[k]

    def encode(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One scan [N, 4] -> (frames [C, H, W] in [-1, 1], mask [1, H, W], range_m [1, H, W])."""
        proj = self.projection
        image = proj.project(points)
        img, mask = normalize_range(
            image.range, self.normalization, proj.min_range, proj.max_range or 80.0
        )
        chans = []
        for c in self.channels:
            if c == "range":
                chans.append(img)
            else:
                chans.append(np.where(mask, 2.0 * np.clip(image.reflectance, 0.0, 1.0) - 1.0, -1.0))
        range_m = np.where(mask, image.range, -1.0)
        return (
            np.stack(chans).astype(np.float32),
            mask[None],
            range_m[None].astype(np.float32),
        )

    def _read(self, i: int) -> dict:
        k, start = self.clips[i]
        src = self.sources[k]
        out = [
            self.encode(src.read_velodyne(start + t * self.frame_step)) for t in range(self.length)
        ]
        frames, mask, range_m = (np.stack(parts) for parts in zip(*out))
        poses = np.full((self.length, 4, 4), np.nan)
        world = self._velodyne_poses(k)
        if world is not None:
            idx = [start + t * self.frame_step for t in range(self.length)]
            # Relative to the sequence's first scan: small numbers, exact in float64.
            poses = np.linalg.inv(world[idx[0]]) @ world[idx]
        return {
            "frames": torch.from_numpy(frames),
            "mask": torch.from_numpy(mask),
            "range_m": torch.from_numpy(range_m),
            "poses": torch.from_numpy(poses),
            "drive": src.name,
            "start": start,
        }
