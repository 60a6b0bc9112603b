"""Frame-exact clip reading from video files (mp4 / webm / avi / mkv / mov) with PyAV.

Opening a file demuxes its packets once (no decoding) to build the table of presentation
timestamps: frame k is the k-th smallest pts. `read_clip` then seeks to the key frame at or
before the first wanted frame and decodes forward, keeping the frames whose pts are wanted, so a
clip equals the same frames of a full decode whatever the GOP structure (B-frames included).
Files whose packets carry no pts fall back to decoding from the start.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from wavecast.data.errors import DataError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")


class VideoReader:
    """Random access to the frames of one video file.

    Attributes: n_frames, fps (float), size ((height, width)), frame_pts (int64 [n_frames] in
    the stream's time_base, or None when the file has no pts), time_base, last_decoded (frames
    the last `read_clip` decoded: shows that it seeked instead of decoding from the start).
    Pass `frame_pts` from an earlier reader of the same file to skip the demux pass.
    """

    def __init__(self, path: str | Path, frame_pts: np.ndarray | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError("video file not found", self.path)
        self._container = None
        self.last_decoded = 0
        try:
            self._container = av.open(str(self.path))
            if not self._container.streams.video:
                raise DataError("no video stream", self.path)
            stream = self._container.streams.video[0]
            self.time_base = stream.time_base
            self.size = (int(stream.codec_context.height), int(stream.codec_context.width))
            rate = stream.average_rate or stream.guessed_rate
            if frame_pts is None:
                frame_pts = self._scan_pts(stream)
            self.frame_pts = None if frame_pts is None else np.asarray(frame_pts, dtype=np.int64)
            if self.frame_pts is None:
                self.n_frames = self._count_by_decoding()
            else:
                self.n_frames = len(self.frame_pts)
        except av.FFmpegError as err:
            self.close()
            raise DataError(f"cannot read video ({err})", self.path) from err
        except DataError:
            self.close()
            raise
        if self.n_frames == 0 or min(self.size) <= 0:
            self.close()
            raise DataError("video holds no decodable frames", self.path)
        if rate:
            self.fps = float(rate)
        elif self.frame_pts is not None and self.n_frames > 1:
            span = float((self.frame_pts[-1] - self.frame_pts[0]) * self.time_base)
            self.fps = (self.n_frames - 1) / span if span > 0 else 0.0
        else:
            self.fps = 0.0

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        if getattr(self, "_container", None) is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __len__(self) -> int:
        return self.n_frames

    def __repr__(self) -> str:
        return f"VideoReader({str(self.path)!r}, n_frames={self.n_frames}, fps={self.fps:.3f}, size={self.size})"

    def _open(self):
        """The open container (reopened after `close`)."""
        if self._container is None:
            self._container = av.open(str(self.path))
        return self._container

    # -- indexing ---------------------------------------------------------------------------

    def _scan_pts(self, stream) -> np.ndarray | None:
        pts = []
        for packet in self._container.demux(stream):
            if packet.size == 0:  # the flush packet at the end
                continue
            if packet.pts is None:
                return None
            pts.append(packet.pts)
        self._container.seek(0)
        return np.unique(np.array(pts, dtype=np.int64))

    def _count_by_decoding(self) -> int:
        n = sum(1 for _ in self._container.decode(video=0))
        self._container.seek(0)
        return n

    # -- reading ----------------------------------------------------------------------------

    def read_all(self) -> np.ndarray:
        """Every frame, decoded from the start: uint8 [n_frames, H, W, 3] RGB."""
        try:
            frames = [f.to_ndarray(format="rgb24") for f in self._decode_from_start()]
        except av.FFmpegError as err:
            raise DataError(f"decoding failed ({err})", self.path) from err
        return np.stack(frames)

    def iter_frames(self) -> Iterator[np.ndarray]:
        """Every frame in order, decoded lazily from the start: uint8 [H, W, 3] RGB each."""
        try:
            for frame in self._decode_from_start():
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as err:
            raise DataError(f"decoding failed ({err})", self.path) from err

    def _decode_from_start(self):
        container = self._open()
        container.seek(0)
        yield from container.decode(video=0)

    def read_clip(self, start: int, length: int, step: int = 1) -> np.ndarray:
        """Frames start, start + step, ..., (length of them): uint8 [length, H, W, 3] RGB."""
        if length < 1 or step < 1:
            raise ValueError(f"read_clip: length and step must be >= 1, got {length}, {step}")
        last = start + (length - 1) * step
        if start < 0 or last >= self.n_frames:
            raise IndexError(
                f"{self.path}: clip frames [{start}, {last}] outside [0, {self.n_frames})"
            )
        wanted = list(range(start, last + 1, step))
        try:
            if self.frame_pts is None:
                frames = self._read_sequential(wanted)
            else:
                frames = self._read_seek(wanted)
        except av.FFmpegError as err:
            raise DataError(f"decoding frames {start}..{last} failed ({err})", self.path) from err
        return np.stack(frames)

    def _read_sequential(self, wanted: list[int]) -> list[np.ndarray]:
        wanted_set, out = set(wanted), {}
        for i, frame in enumerate(self._decode_from_start()):
            self.last_decoded = i + 1
            if i in wanted_set:
                out[i] = frame.to_ndarray(format="rgb24")
            if i >= wanted[-1]:
                break
        if len(out) != len(wanted):
            raise DataError(f"stream ended before frame {wanted[-1]}", self.path)
        return [out[i] for i in wanted]

    def _read_seek(self, wanted: list[int]) -> list[np.ndarray]:
        target = {int(self.frame_pts[i]): k for k, i in enumerate(wanted)}
        first_pts, last_pts = int(self.frame_pts[wanted[0]]), int(self.frame_pts[wanted[-1]])
        container = self._open()
        stream = container.streams.video[0]
        out: list[np.ndarray | None] = [None] * len(wanted)
        self.last_decoded = 0
        for attempt in range(2):
            # backward=True: the demuxer lands on the key frame at or before first_pts; the retry
            # decodes from the file start for containers whose index overshoots.
            seek_pts = first_pts if attempt == 0 else int(self.frame_pts[0])
            container.seek(seek_pts, stream=stream, backward=True)
            overshot = False
            for frame in container.decode(stream):
                self.last_decoded += 1
                if frame.pts is None:
                    continue
                if frame.pts > first_pts and out[0] is None:
                    overshot = True
                    break
                k = target.get(int(frame.pts))
                if k is not None:
                    out[k] = frame.to_ndarray(format="rgb24")
                if frame.pts >= last_pts:
                    break
            if not overshot:
                break
        missing = [wanted[k] for k, f in enumerate(out) if f is None]
        if missing:
            raise DataError(f"frames {missing[:5]} could not be decoded", self.path)
        return out  # type: ignore[return-value]


def list_videos(root: str | Path, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> list[Path]:
    """Video files under `root` (recursive), sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("video folder does not exist", root)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
