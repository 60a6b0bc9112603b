"""Reconstruct a video of any length with bounded memory: frames in, frames out, chunk by chunk.

`stream_reconstruct` feeds the encoder chunks of ``1 + chunk`` then ``chunk`` frames (the
chunking of ``WFVAE.encode(x, chunk_size=chunk)``) with one `ChunkCache` carrying the causal
context, takes the posterior mode of each chunk's latents and decodes them at once with a second
cache. Only a chunk of frames and the caches' few frames of context per layer are held, so the
length of the video does not matter; the output equals the full-clip
``decode(encode(x).posterior.mode())`` to float rounding. The last chunk is known by reading one
frame ahead; a video whose length is not 4n+1 is padded by repeating its last frame (the
`frames_policy="pad"` rule) and the padding is dropped from the output.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from wfvae.causal_conv import ChunkCache
from wfvae.distributions import DiagonalGaussian
from wfvae.model import TIME_COMPRESSION, WFVAE


def _chunks(frames: Iterable[Tensor], chunk: int) -> Iterator[tuple[list[Tensor], bool]]:
    """Groups of 1 + chunk, then chunk frames, each with "is last" (one frame read ahead)."""
    it = iter(frames)
    want = 1 + chunk
    group: list[Tensor] = []
    pending = next(it, None)
    while pending is not None:
        group.append(pending)
        pending = next(it, None)
        if len(group) == want or pending is None:
            yield group, pending is None
            group, want = [], chunk


@torch.no_grad()
def stream_reconstruct(vae: WFVAE, frames: Iterable[Tensor], chunk: int = 16) -> Iterator[Tensor]:
    """Reconstruct frames [3, H, W] (values in [-1, 1], H and W multiples of 8) one by one.

    Args:
        vae: a WF-VAE with norm_type "layernorm" (chunkable), in eval mode.
        frames: the video's frames in order, any number (an iterator: read lazily).
        chunk: video frames per encoder chunk, a multiple of 4 (the first takes one more).
    Yields:
        reconstructed frames [3, H, W] (the posterior mode decoded), as many as came in.
    """
    if chunk < TIME_COMPRESSION or chunk % TIME_COMPRESSION:
        raise ValueError(f"chunk must be a positive multiple of {TIME_COMPRESSION}, got {chunk}")
    vae._check_chunkable()
    enc, dec = ChunkCache(), ChunkCache()
    first, seen, emitted = True, 0, 0
    for group, last in _chunks(frames, chunk):
        seen += len(group)
        x = torch.stack(group, dim=1).unsqueeze(0)  # [1, 3, t, H, W]
        if first and any(s % 8 for s in x.shape[-2:]):
            raise ValueError(f"frame size {tuple(x.shape[-2:])} must be a multiple of 8")
        # The first chunk is 1 + 4k frames, later ones 4k: pad the video's end by repeating its
        # last frame.
        short = -(x.shape[2] - int(first)) % TIME_COMPRESSION
        if short:
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, short, -1, -1)], dim=2)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        enc.final = dec.final = last
        moments = vae.encoder(x, enc)[0].to(x.dtype)
        enc.record()
        z = DiagonalGaussian.from_moments(moments.contiguous()).mode()
        video = vae.decoder(z.contiguous(memory_format=torch.channels_last_3d), dec)[0]
        dec.record()
        first = False
        # The decoder may hold a frame back until the next chunk; padding frames come last.
        for t in range(min(video.shape[2], seen - emitted)):
            yield video[0, :, t].contiguous()
            emitted += 1
    if emitted != seen:
        raise RuntimeError(f"stream_reconstruct: {seen} frames in, {emitted} out")
