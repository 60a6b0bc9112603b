"""Pairs of consecutive camera frames with the optical flow t-1 -> t (for the TemporalModule).

Items are dicts::

    {"frames": float32 [2, 3, H, W] in [-1, 1]  (frame t-1, frame t),
     "flow": float32 [2, H, W]   (t-1 -> t, pixels of the H x W output, dx right then dy down),
     "flow_valid": bool [1, H, W], "drive": str, "start": int  (index of frame t-1)}

Flow sources (`flow_source`):

* ``ground_truth``: the synthetic KITTI's exact flow, ``<root>/ground_truth/<drive>/flow/
  %010d.npz`` (file t holds 'flow' [H, W, 2] and 'valid' [H, W] from frame t to t+1, defined at
  the pixels of frame t). Only the synthetic KITTI ships it; image_02 only.
* ``dis`` / ``farneback``: OpenCV, estimated on the resized frames (`wavecast.flow.estimate_flow`).
  `flow_valid` is then the forward-backward consistency mask (`consistency_check`, one more
  flow estimate per pair) or all True.
* ``raft``: torchvision RAFT from a local weights file (`raft_weights`), when torchvision is
  installed; valid mask as for OpenCV.

Frames are scaled (aspect kept) to cover `image_size` and cropped, like the video clips; the
ground-truth flow goes through the same scaling and crop, its values multiplied by the scale of
each axis. Its valid mask is resized conservatively (a pixel stays valid only when every source
pixel it mixes is valid).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from wavecast.data.datamodules import _KittiDataModule, _plain
from wavecast.data.datasets import CROPS, ON_ERROR, _check_choice, _check_names, _ClipDataset
from wavecast.data.errors import DataError
from wavecast.data.kitti_raw import KittiRawDrive, find_drive
from wavecast.flow import estimate_flow, forward_backward_consistency

log = logging.getLogger(__name__)

FLOW_SOURCES = ("ground_truth", "dis", "farneback", "raft")
GROUND_TRUTH_CAMERA = "image_02"
_GT_HINT = (
    "needed by data.flow_source=ground_truth (only the synthetic KITTI ships flow ground truth; "
    "on real KITTI use data.flow_source=dis or raft)"
)


def flow_file(root: str | Path, drive: str, index: int) -> Path:
    """Ground-truth flow file of frame `index` -> `index + 1` of `drive` (synthetic KITTI)."""
    return Path(root) / "ground_truth" / drive / "flow" / f"{index:010d}.npz"


def read_flow_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """'flow' float32 [H, W, 2] and 'valid' bool [H, W] of a ground-truth flow file.

    DataError naming the file when it is missing, unreadable, or holds other keys / shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing ground-truth flow file; {_GT_HINT}", path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "flow" not in data or "valid" not in data:
                raise DataError(
                    f"expected arrays 'flow' and 'valid', found {sorted(data.files)}", path
                )
            flow, valid = data["flow"], data["valid"]
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"cannot read ground-truth flow ({err})", path) from err
    if flow.ndim != 3 or flow.shape[-1] != 2 or valid.shape != flow.shape[:2]:
        raise DataError(
            f"'flow' must be [H, W, 2] and 'valid' [H, W], got {flow.shape} and {valid.shape}",
            path,
        )
    if not np.isfinite(flow).all():
        raise DataError("'flow' contains NaN or inf values", path)
    return flow.astype(np.float32, copy=False), valid.astype(bool, copy=False)


def resize_crop_pair(
    frames: np.ndarray,
    size: tuple[int, int],
    flow: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    crop: str = "center",
    generator: torch.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Scale (aspect kept) to cover `size` = (h, w), then crop; frames, flow and mask alike.

    frames uint8 [T, H, W, C] -> [T, h, w, C]; flow float32 [H, W, 2] (pixels) -> [h, w, 2] with
    dx, dy multiplied by the x, y scale; valid bool [H, W] -> [h, w], True only where all the
    source pixels mixed into the output pixel are valid.

    Same geometry as `wavecast.data.datasets.resize_crop` (hand-written here because that one
    resizes one array and draws its own crop; OpenCV's INTER_AREA takes at most 4 channels, so
    frames and flow cannot be stacked through it).
    """
    t, h_in, w_in, c = frames.shape
    h, w = size
    scale = max(h / h_in, w / w_in)
    h_new, w_new = max(h, round(h_in * scale)), max(w, round(w_in * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = (h_new, w_new) != (h_in, w_in)
    if resized:
        frames = np.stack([cv2.resize(f, (w_new, h_new), interpolation=interp) for f in frames])
        frames = frames.reshape(t, h_new, w_new, c)
        if flow is not None:
            flow = cv2.resize(flow, (w_new, h_new), interpolation=interp)
            flow = flow * np.array([w_new / w_in, h_new / h_in], np.float32)
        if valid is not None:
            soft = cv2.resize(valid.astype(np.float32), (w_new, h_new), interpolation=interp)
            valid = soft >= 1.0 - 1e-4
    if crop == "random":
        top = int(torch.randint(0, h_new - h + 1, (1,), generator=generator))
        left = int(torch.randint(0, w_new - w + 1, (1,), generator=generator))
    else:
        top, left = (h_new - h) // 2, (w_new - w) // 2
    window = (slice(top, top + h), slice(left, left + w))
    frames = frames[(slice(None), *window)]
    if flow is not None:
        flow = flow[window]
    if valid is not None:
        valid = valid[window]
    return frames, flow, valid


def _check_raft(raft_weights: str | Path | None) -> None:
    if raft_weights is None:
        raise ValueError(
            "data.flow_source=raft needs data.raft_weights= a local RAFT state-dict file "
            "(nothing is downloaded)"
        )
    if not Path(str(raft_weights)).is_file():
        raise DataError("RAFT weights file does not exist (data.raft_weights)", raft_weights)
    try:
        import torchvision.models.optical_flow  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "data.flow_source=raft needs torchvision (pip install 'wavecast[vision]'); use "
            "data.flow_source=dis without it"
        ) from err


class KittiFlowPairs(_ClipDataset):
    """Consecutive frame pairs (t-1, t) of one KITTI raw camera with the flow t-1 -> t.

    Args:
        root: KITTI raw root. drives: drive names.
        image_size: (H, W) of the output frames and flow.
        flow_source: "ground_truth" | "dis" | "farneback" | "raft" (see the module docstring).
        stride: frames between the starts of consecutive pairs.
        camera: ``image_02`` (the only camera with ground-truth flow).
        crop: "center" or "random" (one offset for both frames and the flow).
        on_error: "raise" or "skip" (a drive or file that cannot be used is left out).
        raft_weights: local RAFT weights (flow_source=raft). raft_model: "large" | "small".
        consistency_check: estimated flows get the forward-backward consistency mask as
            `flow_valid` (else all True).
    """

    def __init__(
        self,
        root: str | Path,
        drives: Sequence[str],
        image_size: Sequence[int] = (64, 192),
        flow_source: str = "ground_truth",
        stride: int = 1,
        camera: str = "image_02",
        crop: str = "center",
        on_error: str = "raise",
        raft_weights: str | Path | None = None,
        raft_model: str = "large",
        consistency_check: bool = True,
    ) -> None:
        _check_choice("flow_source", flow_source, FLOW_SOURCES)
        _check_choice("crop", crop, CROPS)
        _check_choice("on_error", on_error, ON_ERROR)
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if flow_source == "ground_truth" and camera != GROUND_TRUTH_CAMERA:
            raise ValueError(
                f"flow_source=ground_truth exists for camera {GROUND_TRUTH_CAMERA} only, got "
                f"camera={camera!r}"
            )
        if flow_source == "raft":
            _check_raft(raft_weights)
        self._init_skips()
        self.root = Path(root)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        if min(self.image_size) < 1:
            raise ValueError(f"image_size must be positive, got {list(image_size)}")
        self.flow_source, self.stride, self.camera = flow_source, int(stride), camera
        self.crop, self.on_error = crop, on_error
        self.raft_weights, self.raft_model = raft_weights, raft_model
        self.consistency_check = bool(consistency_check)
        self.drives: list[KittiRawDrive] = []
        self.clips = []
        for name in _check_names("drives", drives):
            find_drive(self.root, name)  # an unknown name is a configuration error: always raise
            try:
                drive = KittiRawDrive(self.root, name, streams=(camera,))
                if drive.n_frames < 2:
                    raise DataError(
                        f"drive {drive.name} has {drive.n_frames} frame(s): no pair", drive.path
                    )
                starts = list(range(0, drive.n_frames - 1, self.stride))
                if flow_source == "ground_truth":
                    for s in starts:  # stat calls only: fail at start-up, not mid-epoch
                        path = flow_file(self.root, drive.name, s)
                        if not path.is_file():
                            raise DataError(f"missing ground-truth flow file; {_GT_HINT}", path)
            except DataError as err:
                if on_error == "raise":
                    raise
                self._skip(str(err))
                continue
            k = len(self.drives)
            self.drives.append(drive)
            self.clips += [(k, s) for s in starts]
        if not self.clips:
            raise DataError(
                f"no usable frame pairs in drives {list(drives)} (skipped: {self.skipped})",
                self.root,
            )

    def _estimate(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames [2, 3, H, W] in [-1, 1] -> flow [2, H, W], valid [1, H, W] bool."""
        a, b = frames[:1], frames[1:]
        kwargs = dict(
            method=self.flow_source,
            raft_weights=self.raft_weights,
            value_range=(-1.0, 1.0),
            raft_model=self.raft_model,
        )
        fw = estimate_flow(a, b, **kwargs)
        if self.consistency_check:
            bw = estimate_flow(b, a, **kwargs)
            valid = forward_backward_consistency(fw, bw) > 0.5
        else:
            valid = torch.ones_like(fw[:, :1], dtype=torch.bool)
        return fw[0], valid[0]

    def _read(self, i: int) -> dict:
        k, start = self.clips[i]
        drive = self.drives[k]
        images = [drive.read_image(self.camera, start + d) for d in (0, 1)]
        if images[0].shape != images[1].shape:
            raise DataError(
                f"frames {start} and {start + 1} differ in size: {images[0].shape} vs "
                f"{images[1].shape}",
                drive.path,
            )
        flow = valid = None
        if self.flow_source == "ground_truth":
            path = flow_file(self.root, drive.name, start)
            flow, valid = read_flow_file(path)
            if flow.shape[:2] != images[0].shape[:2]:
                raise DataError(
                    f"flow is {flow.shape[0]}x{flow.shape[1]} but {self.camera} frames are "
                    f"{images[0].shape[0]}x{images[0].shape[1]}",
                    path,
                )
        frames, flow, valid = resize_crop_pair(
            np.stack(images), self.image_size, flow, valid, self.crop
        )
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x / 127.5 - 1.0).contiguous()
        if flow is None:
            flow_t, valid_t = self._estimate(x)
        else:
            flow_t = torch.from_numpy(np.ascontiguousarray(flow)).permute(2, 0, 1).float()
            valid_t = torch.from_numpy(np.ascontiguousarray(valid))[None]
        return {
            "frames": x,
            "flow": flow_t.contiguous(),
            "flow_valid": valid_t.contiguous(),
            "drive": drive.name,
            "start": start,
        }


class FlowPairDataModule(_KittiDataModule):
    """Frame pairs with flow {"frames": [B, 2, 3, H, W], "flow": [B, 2, H, W], "flow_valid":
    [B, 1, H, W], "drive", "start"} from KITTI raw drives named per split.

    `batch_size` is per process (train.py passes data.batch_size / world size);
    `max_pairs_per_split` caps each split with evenly spaced pairs ({train: 64, val: 8}).
    `train_crop` applies to the train split only; val / test crop the centre. Other arguments:
    see `KittiFlowPairs` and `wavecast.data.datamodules`.
    """

    def __init__(
        self,
        root: str | Path,
        train_drives: Sequence[str] | None,
        val_drives: Sequence[str] | None,
        test_drives: Sequence[str] | None,
        image_size: Sequence[int],
        batch_size: int,
        flow_source: str = "ground_truth",
        stride: int = 1,
        num_workers: int = 0,
        camera: str = "image_02",
        train_crop: str = "center",
        on_error: str = "raise",
        synthetic: Mapping[str, Any] | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        max_pairs_per_split: Mapping[str, int | None] | None = None,
        raft_weights: str | None = None,
        raft_model: str = "large",
        consistency_check: bool = True,
    ) -> None:
        super().__init__(
            root, train_drives, val_drives, test_drives, batch_size, num_workers, on_error,
            synthetic, pin_memory, persistent_workers, max_pairs_per_split,
        )  # fmt: skip
        _check_choice("data.flow_source", flow_source, FLOW_SOURCES)
        _check_choice("data.train_crop", train_crop, CROPS)
        if flow_source == "ground_truth" and camera != GROUND_TRUTH_CAMERA:
            raise ValueError(
                f"data.flow_source=ground_truth exists for {GROUND_TRUTH_CAMERA} only, got "
                f"data.camera={camera!r}"
            )
        if flow_source == "raft":
            _check_raft(raft_weights)  # at start-up, not in the first batch
        image_size = list(_plain(image_size))
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"data.image_size must be [H, W], got {image_size}")
        if stride < 1:
            raise ValueError(f"data.stride must be >= 1, got {stride}")
        self.frame_size = (int(image_size[0]), int(image_size[1]))
        self.channels = 3
        self.clip_length = 2
        self.flow_source, self.stride, self.camera = flow_source, int(stride), camera
        self.train_crop = train_crop
        self.raft_weights, self.raft_model = raft_weights, raft_model
        self.consistency_check = bool(consistency_check)

    def _build(self, split: str) -> Dataset:
        return KittiFlowPairs(
            self.root,
            self.drives[split],
            image_size=self.frame_size,
            flow_source=self.flow_source,
            stride=self.stride,
            camera=self.camera,
            crop=self.train_crop if split == "train" else "center",
            on_error=self.on_error,
            raft_weights=self.raft_weights,
            raft_model=self.raft_model,
            consistency_check=self.consistency_check,
        )


__all__ = [
    "FLOW_SOURCES",
    "FlowPairDataModule",
    "KittiFlowPairs",
    "flow_file",
    "read_flow_file",
    "resize_crop_pair",
]
