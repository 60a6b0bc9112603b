"""Turning tensors into viewable media (mp4, PNG strips) and sending them to the loggers.

Kept apart from the LightningModules: a module only says *what* to show (a dict of tensors);
this file knows file formats and logger APIs.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import torch

log = logging.getLogger(__name__)


def to_uint8(x: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Map a float tensor in `value_range` to uint8 (clipped)."""
    lo, hi = value_range
    x = (x.detach().float().cpu() - lo) / (hi - lo)
    return (x.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()


def video_frames(video: torch.Tensor) -> np.ndarray:
    """[C, T, H, W] in [-1, 1] (C = 1 or 3) -> uint8 [T, H, W, 3]."""
    if video.ndim != 4:
        raise ValueError(f"video must be [C, T, H, W], got shape {tuple(video.shape)}")
    frames = to_uint8(video).transpose(1, 2, 3, 0)
    if frames.shape[-1] == 1:
        frames = colorize(frames[..., 0])
    return np.ascontiguousarray(frames)


def colorize(gray: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W] -> uint8 [..., H, W, 3] with a perceptual colour map (range images)."""
    flat = gray.reshape(-1, gray.shape[-1])
    rgb = cv2.applyColorMap(flat, cv2.COLORMAP_TURBO)[..., ::-1]
    return rgb.reshape(*gray.shape, 3)


def frames_strip(frames: np.ndarray, gap: int = 2) -> np.ndarray:
    """uint8 [T, H, W, 3] -> one image [H, T*W + gaps, 3], frames left to right."""
    t, h, w, c = frames.shape
    out = np.full((h, t * w + (t - 1) * gap, c), 255, np.uint8)
    for i in range(t):
        out[:, i * (w + gap) : i * (w + gap) + w] = frames[i]
    return out


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 5) -> Path:
    """Encode uint8 [T, H, W, 3] as H.264 (MPEG-4 part 2 if no x264) with PyAV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w, _ = frames.shape
    # yuv420p needs even sizes.
    ph, pw = h + h % 2, w + w % 2
    if (ph, pw) != (h, w):
        frames = np.pad(frames, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    with av.open(str(path), mode="w") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


#: Encoders tried per container, first available wins.
ENCODERS = {
    ".mp4": ("libx264", "h264", "mpeg4"),
    ".m4v": ("libx264", "h264", "mpeg4"),
    ".mov": ("libx264", "h264", "mpeg4"),
    ".mkv": ("libx264", "h264", "mpeg4"),
    ".avi": ("mpeg4", "libx264"),
    ".webm": ("libvpx-vp9", "libvpx"),
}


def encoder_for(path: str | Path) -> str:
    """The encoder for a file's container (by suffix) that this PyAV build has."""
    suffix = Path(path).suffix.lower()
    if suffix not in ENCODERS:
        raise ValueError(
            f"{path}: unknown video container {suffix!r}; use one of {sorted(ENCODERS)}"
        )
    for codec in ENCODERS[suffix]:
        if codec in av.codecs_available:
            return codec
    raise ValueError(f"{path}: this PyAV build has none of the encoders {ENCODERS[suffix]}")


class VideoWriter:
    """Appends uint8 [H, W, 3] RGB frames one by one to a video file (PyAV; codec by suffix,
    yuv420p, so H and W must be even). Use as a context manager; `close` flushes the encoder."""

    def __init__(
        self, path: str | Path, fps: float | Fraction, size: tuple[int, int], bit_rate: int = 0
    ) -> None:
        h, w = size
        if h % 2 or w % 2:
            raise ValueError(f"{path}: frame size {h}x{w} must be even (yuv420p)")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        codec = encoder_for(self.path)
        rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(10_000)
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream(codec, rate=rate)
        self._stream.width, self._stream.height, self._stream.pix_fmt = w, h, "yuv420p"
        if bit_rate:
            self._stream.bit_rate = int(bit_rate)
        if codec == "libx264":
            self._stream.options = {"crf": "18"}  # near-transparent: the output is for looking at
        self.size, self.frames = (h, w), 0

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != (*self.size, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"{self.path}: frames must be uint8 {(*self.size, 3)}, got {frame.dtype} "
                f"{frame.shape}"
            )
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_png(image: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image[..., ::-1] if image.ndim == 3 else image):
        raise OSError(f"could not write {path}")
    return path


def log_media(
    loggers: list, name: str, tensor: torch.Tensor, step: int, save_dir: str | Path, fps: int = 5
) -> list[Path]:
    """Write `tensor` to `save_dir` and log it to every logger that can show it.

    tensor: a video [C, T, H, W] or an image [C, H, W], values in [-1, 1].
    Videos go to disk as mp4 and a PNG strip; wandb gets the mp4, TensorBoard the strip
    (its add_video needs moviepy), CSV only has the files on disk.
    """
    save_dir = Path(save_dir)
    safe = name.replace("/", "_")
    written: list[Path] = []
    if tensor.ndim == 4:
        frames = video_frames(tensor)
        image = frames_strip(frames)
        written.append(write_mp4(frames, save_dir / f"{safe}_step{step:06d}.mp4", fps))
    elif tensor.ndim == 3:
        image = video_frames(tensor.unsqueeze(1))[0]
    else:
        raise ValueError(
            f"media '{name}': expected [C,T,H,W] or [C,H,W], got {tuple(tensor.shape)}"
        )
    written.append(write_png(image, save_dir / f"{safe}_step{step:06d}.png"))
    for logger in loggers:
        kind = type(logger).__name__
        try:
            if kind == "WandbLogger":
                import wandb

                media = (
                    wandb.Video(str(written[0]), format="mp4")
                    if tensor.ndim == 4
                    else wandb.Image(image)
                )
                logger.experiment.log({name: media, "trainer/global_step": step})
            elif kind == "TensorBoardLogger":
                logger.experiment.add_image(name, image, step, dataformats="HWC")
        except Exception as e:  # media must never kill a training run
            log.warning("could not log media '%s' to %s: %s", name, kind, e)
    return written
