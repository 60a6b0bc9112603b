"""Flow-guided cross-frame attention for the STDiff sampler (``cross_frame_attention=``).

Every UNet attention block gets a processor that routes its self-attention through
``temporal.flow_attention.CrossFrameMemory``: the current frame also attends to the previous
frame's keys / values, warped by the *source* flow, and to a bounded memory bank. Around each
frame's denoising loop the roll-out tells the memory the source motion (the flow between the
two latest frames, observed or predicted: a constant-velocity guess of the coming frame's
motion) and afterwards the *generated* motion (previous -> new frame). Frames are ``[B, C, H, W]``
in [-1, 1]; flows ``[B, 2, H, W]`` in pixels (`wavecast.flow.estimate_flow`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor

from stdiff.unet_blocks import AttentionBlock
from stdiff.unet_motion import UNet2DMotionCond
from temporal.flow_attention import CrossFrameMemory


class CrossFrameAttnProcessor:
    """:data:`stdiff.unet_blocks.AttnProcessor` that sends an attention block's q, k, v
    ``[B, heads, H*W, d]`` to ``memory.attend(name, ...)`` with the exact token grid."""

    def __init__(self, memory: CrossFrameMemory, name: str) -> None:
        self.memory = memory
        self.name = name

    def __call__(
        self, block: AttentionBlock, q: Tensor, k: Tensor, v: Tensor, token_hw: tuple[int, int]
    ) -> Tensor:
        return self.memory.attend(self.name, q, k, v, token_hw)


def cross_frame_memory(
    option: CrossFrameMemory | dict[str, Any] | None,
) -> tuple[CrossFrameMemory | None, str]:
    """The pipeline's ``cross_frame_attention`` option -> (memory, or None when off; the flow
    method). A dict holds CrossFrameMemory's kwargs (``enabled`` defaults to true) and
    ``flow_method`` ("dis" by default)."""
    if option is None:
        return None, "dis"
    if isinstance(option, CrossFrameMemory):
        return (option if option.enabled else None), "dis"
    if isinstance(option, dict):
        kwargs = dict(option)
        method = kwargs.pop("flow_method", "dis")
        try:
            memory = CrossFrameMemory(**{"enabled": True, **kwargs})
        except TypeError as err:
            raise ValueError(f"STDiffPipeline: cross_frame_attention: {err}") from err
        return (memory if memory.enabled else None), method
    raise ValueError(
        "STDiffPipeline: cross_frame_attention must be a CrossFrameMemory, a dict of its "
        f"arguments or None, got {type(option).__name__}"
    )


@contextmanager
def installed_cross_frame_attention(
    unet: UNet2DMotionCond, memory: CrossFrameMemory | None
) -> Iterator[None]:
    """Route every attention block of ``unet`` through ``memory`` (reset) for the duration;
    the previous processors are put back afterwards. ``memory`` None: nothing changes."""
    if memory is None:
        yield
        return
    memory.reset()
    before = unet.set_attn_processor(
        {name: CrossFrameAttnProcessor(memory, name) for name, _ in unet.attention_blocks()}
    )
    try:
        yield
    finally:
        unet.set_attn_processor(before)


def flow_between(a: Tensor, b: Tensor, method: str) -> Tensor:
    """Flow a -> b, ``[B, 2, H, W]`` pixels, between frames ``[B, C, H, W]`` in [-1, 1] (grey or
    RGB; of other channel counts the first channel)."""
    from wavecast.flow import estimate_flow  # OpenCV: imported when the option is used

    if a.shape[1] not in (1, 3):
        a, b = a[:, :1], b[:, :1]
    return estimate_flow(a.float(), b.float(), method=method, value_range=(-1, 1))
