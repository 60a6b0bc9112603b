"""Small test videos written with PyAV: common aspect ratios and the codecs this PyAV can encode.

Frame i of every video is a smooth pattern shifted right by `i * speed` pixels (flow methods
can follow it) plus its index as bright stripes in the top rows (an off-by-one frame shows).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

# (height, width) of tiny frames in common aspect ratios.
SIZES = {"4:3": (48, 64), "16:9": (36, 64), "portrait": (64, 36)}


def codec_for(ext: str) -> str | None:
    """An encoder this PyAV build has for a container: h264 mp4, vp9 webm, mpeg4 avi / mkv."""
    wanted = {
        "mp4": ("libx264", "h264", "mpeg4"),
        "webm": ("libvpx-vp9", "libvpx"),
        "avi": ("mpeg4",),
        "mkv": ("libx264", "mpeg4"),
    }[ext]
    return next((c for c in wanted if c in av.codecs_available), None)


def pattern(i: int, size: tuple[int, int], speed: float = 1.0) -> np.ndarray:
    """Frame i: uint8 [H, W, 3]; a blurred texture moved right by i * speed pixels."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    x = x - i * speed
    img = np.stack(
        [
            127 + 100 * np.sin(x / 5.0) * np.cos(y / 7.0),
            127 + 100 * np.sin((x + y) / 9.0),
            127 + 100 * np.cos(x / 11.0 - y / 6.0),
        ],
        axis=-1,
    )
    img[:3, :] = 0
    for bit in range(6):
        if (i >> bit) & 1:
            img[:3, bit * (w // 6) : (bit + 1) * (w // 6)] = 255
    return img.clip(0, 255).astype(np.uint8)


def write_video(
    path: Path, size: tuple[int, int], n: int = 12, fps: int = 10, speed: float = 1.0
) -> Path:
    """Write `n` frames of `pattern` at `size` (H, W, even) with the codec fitting the suffix."""
    ext = path.suffix.lstrip(".")
    codec = codec_for(ext)
    if codec is None:
        raise RuntimeError(f"no encoder for .{ext} in this PyAV build")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(pattern(i, size, speed), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def video_folder(root: Path, n: int = 12) -> dict[str, tuple[int, int]]:
    """A folder of five videos in three aspect ratios and several codecs (two in a sub-folder).

    Returns {relative path: (H, W)}. Containers whose codec is missing here are left out.
    """
    spec = {
        "street.mp4": SIZES["16:9"],
        "room.avi": SIZES["4:3"],
        "trips/phone.mp4": SIZES["portrait"],
        "trips/beach.webm": SIZES["16:9"],
        "garden.mkv": SIZES["4:3"],
    }
    made = {}
    for rel, size in spec.items():
        if codec_for(rel.rsplit(".", 1)[1]) is not None:
            write_video(root / rel, size, n=n)
            made[rel] = size
    return made


def snapshot(root: Path) -> dict[str, tuple[int, float]]:
    """{relative path: (size, mtime)} of every file under root: shows anything written there."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime)
        for p in sorted(root.rglob("*"))
    }
