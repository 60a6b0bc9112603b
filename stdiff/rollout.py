"""How STDiffPipeline rolls a forecast out: one function per mode.

- `roll_out_long_horizon`: the future times in chunks of at most ``chunk_horizon`` frames; each
  chunk encodes the context from the last To frames (predictions included), draws one SDE
  motion path for the chunk's times, denoises the chunk with one of the two modes below and
  feeds its frames back as context.
- `roll_out_frame_by_frame` (autoregressive models; non-autoregressive ones without frame
  truncation): one full denoising loop per frame, each conditioned on the previous prediction
  (autoregressive), with autoregressive frame truncation and cross-frame attention.
- `roll_out_frames_together` (non-autoregressive models with frame truncation): the chunk's
  frames denoised as one batch, only the key frames early.

Shapes: K samples of N sequences are batched sample-major, ``B = K * N`` (index ``k * N + n``);
frames ``[B, C, H, W]`` at the predicted size, context ``[B, To, C, Ho, Wo]`` at the observed
size, motion ``[T, B, M, h, w]``. All randomness comes from the options' generator, drawn in a
fixed order (so the same seed gives the same forecast, bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from stdiff.cross_frame import flow_between
from stdiff.truncation import FrameTruncationSchedule, frame_truncation_schedule

if TYPE_CHECKING:
    from stdiff.pipeline import SamplingOptions, STDiffPipeline
    from temporal.flow_attention import CrossFrameMemory


@dataclass
class SamplingPlan:
    """One call's checked settings and sizes (built by `STDiffPipeline.plan`)."""

    options: SamplingOptions
    idx_p: Tensor  # [Tp] future times, float32
    num_sequences: int  # N
    channels: int  # C
    observed_size: tuple[int, int]  # (Ho, Wo)
    size: tuple[int, int]  # (Hp, Wp), the predicted frames'
    super_res: bool  # predicted frames larger than the observed ones
    dtype: torch.dtype  # the UNet's
    truncation: dict[str, Any] | None = None  # checked frame_truncation options
    ar_schedule: FrameTruncationSchedule | None = None  # autoregressive truncation, all Tp frames
    memory: CrossFrameMemory | None = None  # cross-frame attention
    flow_method: str = "dis"

    @property
    def num_frames(self) -> int:
        return self.idx_p.numel()

    @property
    def batch(self) -> int:
        """B = K * N, the samples of every sequence batched together."""
        return self.options.num_samples * self.num_sequences

    @property
    def horizon(self) -> int:
        return self.options.chunk_horizon or self.num_frames

    def upsample(self, x: Tensor) -> Tensor:
        """Observed-size frames ``[B, C, Ho, Wo]`` -> the predicted size (super-resolution)."""
        if not self.super_res:
            return x
        return F.interpolate(x, size=self.size, mode="bicubic", antialias=True)


@dataclass
class RollOutState:
    """What the roll-out carries from frame to frame and chunk to chunk, and what it made."""

    history: Tensor  # [B, To, C, Ho, Wo] the context of the next chunk, clamped
    history_t: Tensor  # [To] its times
    previous: Tensor  # [B, C, Hp, Wp] the latest frame (degraded to the observed size and back)
    recent: list[Tensor | None]  # the two latest clean frames [B, C, Hp, Wp] (flow source)
    key_state: Tensor | None = None  # autoregressive truncation: latest key frame's x_s
    frames: list[Tensor] = field(default_factory=list)  # [B, C, Hp, Wp] per predicted frame
    motions: list[Tensor] = field(default_factory=list)  # [T_chunk, B, M, h, w] per chunk
    evaluations: int = 0  # UNet frame evaluations (frame truncation's bookkeeping)
    cross_frame: list[dict[str, Any]] = field(default_factory=list)  # memory info per frame

    @classmethod
    def start(cls, Vo: Tensor, idx_o: Tensor, plan: SamplingPlan) -> RollOutState:
        """The state before the first frame: ``Vo [N, To, C, Ho, Wo]`` repeated K times."""
        history = Vo.repeat(plan.options.num_samples, 1, 1, 1, 1)
        previous = plan.upsample(history[:, -1])
        before = plan.upsample(history[:, -2]).clamp(-1, 1) if Vo.shape[1] >= 2 else None
        return cls(history, idx_o, previous, [before, previous.clamp(-1, 1)])

    def feed_back(self, chunk: list[Tensor], times: Tensor, super_res: bool) -> None:
        """The next chunk's context: the last To frames (predictions included), at the observed
        resolution, and their times."""
        to, (ho, wo) = self.history.shape[1], self.history.shape[-2:]
        new = torch.stack(chunk, dim=1)
        if super_res:
            new = F.interpolate(new.flatten(0, 1), size=(ho, wo), mode="bicubic", antialias=True)
            new = new.unflatten(0, (self.history.shape[0], -1))
        self.history = torch.cat([self.history, new.clamp(-1, 1).to(self.history.dtype)], 1)[
            :, -to:
        ]
        self.history_t = torch.cat([self.history_t, times])[-to:]


def roll_out_long_horizon(pipe: STDiffPipeline, plan: SamplingPlan, state: RollOutState) -> None:
    """Predict every future time of ``plan`` into ``state``, chunk by chunk."""
    model, opts = pipe.model, plan.options
    together = plan.truncation is not None and not model.autoregressive
    roll_out_chunk = roll_out_frames_together if together else roll_out_frame_by_frame
    for start in range(0, plan.num_frames, plan.horizon):
        times = plan.idx_p[start : start + plan.horizon]
        context_frames, context_t = state.history, state.history_t
        context = model.tde.context_encode(context_frames, context_t)
        ts = torch.cat([context_t[-1:], times])
        motion = model.tde.future_predict(
            context, ts, generator=opts.generator, drift_only=opts.drift_only
        )
        chunk = roll_out_chunk(pipe, plan, state, context_frames, motion, start)
        state.frames += chunk
        state.motions.append(motion)
        state.feed_back(chunk, times, plan.super_res)


def roll_out_frame_by_frame(
    pipe: STDiffPipeline,
    plan: SamplingPlan,
    state: RollOutState,
    context_frames: Tensor,
    motion: Tensor,
    start: int,
) -> list[Tensor]:
    """The chunk's frames ``start, start + 1, ...`` one after the other, each with its own noise
    and a fresh scheduler -> ``[B, C, Hp, Wp]`` per frame."""
    model, opts = pipe.model, plan.options
    chunk: list[Tensor] = []
    for j in range(motion.shape[0]):
        frame = start + j
        prev = state.previous.clamp(-1, 1)
        cond = model.conditioning(
            context_frames, prev if model.autoregressive else None, plan.size, 1
        )
        noise = randn_tensor(
            (plan.batch, plan.channels, *plan.size),
            generator=opts.generator,
            device=state.history.device,
            dtype=plan.dtype,
        )
        noise, start_step, keep_at = _truncated_frame_start(pipe, plan, state, frame, prev, noise)
        _begin_frame(plan, state)
        x, kept = pipe.denoise_frame(
            motion[j], cond, noise, opts, frame, start_step=start_step, keep_state_at=keep_at
        )
        if keep_at is not None:
            state.key_state = kept
        x = model.from_diffusion(x, prev)  # residual models denoise the change from prev
        _end_frame(plan, state, x)
        state.recent = [state.recent[1], x.clamp(-1, 1)]
        chunk.append(x)
        state.previous = model.degrade(x, plan.observed_size) if plan.super_res else x
    return chunk


def roll_out_frames_together(
    pipe: STDiffPipeline,
    plan: SamplingPlan,
    state: RollOutState,
    context_frames: Tensor,
    motion: Tensor,
    start: int,
) -> list[Tensor]:
    """The chunk's (independent) frames denoised as one batch with frame truncation; the
    schedule is built per chunk (key frames every k-th and the chunk's last)."""
    opts, trunc = plan.options, plan.truncation
    nf = motion.shape[0]
    cond = pipe.model.conditioning(context_frames, None, plan.size, 1)
    shape = (plan.batch, plan.channels, *plan.size)
    noise = torch.stack(
        [
            randn_tensor(shape, generator=opts.generator, device=motion.device, dtype=plan.dtype)
            for _ in range(nf)
        ]
    )
    schedule = frame_truncation_schedule(
        nf, opts.num_inference_steps, trunc["key_every"], trunc["switch_fraction"]
    )
    out = pipe.sample_frames_truncated(
        motion,
        cond,
        noise,
        schedule,
        opts.num_inference_steps,
        opts.generator,
        opts.scheduler_type,
        opts.step_callback,
        first_frame_index=start,
        num_samples=opts.num_samples,
        renoise=trunc["renoise"],
    )
    state.evaluations += schedule.evaluations
    return list(out.unbind(0))


def _truncated_frame_start(
    pipe: STDiffPipeline,
    plan: SamplingPlan,
    state: RollOutState,
    frame: int,
    prev: Tensor,
    noise: Tensor,
) -> tuple[Tensor, int, int | None]:
    """(initial state, first step, step whose state to keep) of a frame under autoregressive
    truncation: a key frame runs every step and keeps its state at the switch, a non-key frame
    starts at the switch from ``ar_init`` ("key_state": the latest key frame's state there;
    "previous_frame": the previous prediction noised to that step)."""
    schedule = plan.ar_schedule
    if schedule is None:
        return noise, 0, None
    steps = plan.options.num_inference_steps
    start_step, keep_at = 0, None
    if frame in schedule.key_frames:
        keep_at = schedule.switch_step
    else:
        start_step = schedule.switch_step
        if plan.truncation["ar_init"] == "key_state":
            if state.key_state is None:
                raise RuntimeError("STDiffPipeline: no key frame before a non-key frame")
            noise = state.key_state
        elif start_step >= steps:
            noise = prev.to(noise.dtype)
        else:
            sched = pipe.make_scheduler(plan.options.scheduler_type)
            sched.set_timesteps(steps, device=noise.device)
            t = sched.timesteps[start_step]
            noise = sched.add_noise(prev.to(noise.dtype), noise, t.reshape(1))
    state.evaluations += steps - start_step
    return noise, start_step, keep_at


def _begin_frame(plan: SamplingPlan, state: RollOutState) -> None:
    """Cross-frame attention: tell the memory the source motion of the coming frame."""
    if plan.memory is None:
        return
    a, b = state.recent
    plan.memory.begin_frame(None if a is None else flow_between(a, b, plan.flow_method))


def _end_frame(plan: SamplingPlan, state: RollOutState, x: Tensor) -> None:
    """Cross-frame attention: tell the memory the generated motion, record what it did."""
    memory = plan.memory
    if memory is None:
        return
    generated = None
    if memory.flow is not None:
        generated = flow_between(state.recent[1], x.clamp(-1, 1), plan.flow_method)
    info = memory.end_frame(generated)
    state.cross_frame.append({**info, "bank_size": memory.bank_size})
