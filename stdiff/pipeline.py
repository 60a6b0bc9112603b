"""STDiffPipeline: sampling future frames (model / scheduler / pipeline split as in diffusers).

Encode the observed context once, draw one SDE motion path per sample for all requested future
times, then for every future frame run a full denoising loop with a *fresh* scheduler
(multistep solvers keep history; the published code leaked it from frame to frame),
conditioned on that time's motion feature and (autoregressive) the previous prediction.
K stochastic futures are batched along the batch dimension (index ``k * N + n``). Long horizons
roll out in chunks, re-encoding the context from the last To frames (predictions included).
All randomness (Brownian entropy, initial noise, DDPM variance noise) comes from ``generator``.
Frame truncation draws the same motion and initial noise as full sampling, so with a
deterministic sampler (DDIM) and the same seed the two differ by the truncation alone.

Two sampling options (both off by default, and then sampling is unchanged bit for bit):

**Frame truncation** (``frame_truncation={"key_every": k, "switch_fraction": f}``, after the
continuity study of ``temporal.continuity``; ``stdiff.truncation``: adjacent frames differ little at the noisy early
steps). ``frame_truncation_schedule(Tp, steps, k, f)`` picks key frames (every k-th and the
last) and a switch step ``s = round(f * steps)``:

- non-autoregressive models: the frames of a chunk are denoised *together* (one batched UNet
  call per step); for steps ``< s`` only the key frames, at ``s`` every non-key frame is
  initialised from its two neighbouring key frames' ``x_s`` (``interpolate_from_key_frames``,
  re-noised to the schedule's noise level unless ``renoise=False``), then all frames are
  denoised to the end. Key and non-key frames have their own scheduler (so multistep solvers
  keep a consistent history). The schedule is built per chunk.
- autoregressive models: frame j needs frame j-1's prediction, so no later key frame exists
  to interpolate from. Key frames (every k-th: :func:`autoregressive_truncation_schedule`,
  over all ``Tp`` frames) run all steps; a non-key frame runs only the steps from ``s`` on,
  starting from ``ar_init``: ``"previous_frame"`` (default) the previous prediction noised to
  step s (SDEdit-style, with the frame's own noise draw), or ``"key_state"`` the state
  ``x_s`` of the latest key frame's own loop (the early trajectory shared, as the continuity
  study suggests). On briefly-trained tiny models "previous_frame" stays closer to full
  sampling (scripts/benchmark.py --only stdiff_truncation).

**Flow-guided cross-frame attention** (``cross_frame_attention=CrossFrameMemory(...)`` or a
dict of its kwargs plus ``flow_method``): every UNet attention block gets a processor that
routes its self-attention through ``temporal.flow_attention.CrossFrameMemory`` (the current
frame also attends to the previous frame's keys / values, warped by the source flow, and to a
bounded memory bank). Around each frame's denoising loop the memory is told the *source*
motion, the flow between the two latest frames (observed or predicted; a constant-velocity
guess of the coming frame's motion, ``wavecast.flow.estimate_flow``), and afterwards the
*generated* motion, the flow from the previous to the new frame. The processors are removed
when the call returns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from stdiff.model import STDiff, fresh_scheduler
from stdiff.truncation import (
    FrameTruncationSchedule,
    autoregressive_truncation_schedule,
    check_truncation_options,
    frame_truncation_schedule,
    interpolate_from_key_frames,
)
from stdiff.unet_blocks import AttentionBlock
from temporal.flow_attention import CrossFrameMemory

#: ``step_callback(frame_index, step_index, timestep, x_t [K, N, C, H, W], eps_hat [K, N, C, H, W])``
StepCallback = Callable[[int, int, Tensor, Tensor, Tensor], None]


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


def _cross_frame_memory(
    option: CrossFrameMemory | dict | None,
) -> tuple[CrossFrameMemory | None, str]:
    """(memory or None when off, flow method)."""
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


class STDiffPipeline:
    """``STDiffPipeline(model, scheduler=None)``; ``scheduler`` defaults to the schedule stored
    with the model and must match it when given (ValueError otherwise)."""

    def __init__(self, model: STDiff, scheduler: Any | None = None) -> None:
        if scheduler is None:
            scheduler = model.make_scheduler()
        else:
            model.check_scheduler(scheduler)
        self.model = model
        self.scheduler = scheduler

    def make_scheduler(self, scheduler_type: str | None = None) -> Any:
        """A fresh scheduler from the pipeline scheduler's config: its own class (None) or
        "ddpm" / "ddim" / "dpm" (multistep DPM-Solver) via ``from_config``."""
        return fresh_scheduler(self.scheduler, scheduler_type)

    @torch.no_grad()
    def sample_frame(
        self,
        m: Tensor,
        cond: Tensor | None,
        noise: Tensor,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        scheduler_type: str | None = None,
        step_callback: StepCallback | None = None,
        frame_index: int = 0,
        num_samples: int = 1,
        cache_motion: bool = True,
        start_step: int = 0,
    ) -> Tensor:
        """One frame's denoising loop from ``noise [B, C, H, W]`` with motion ``m [B, M, h, w]``
        and extra UNet channels ``cond`` -> ``[B, C, H, W]``. A new scheduler every call.
        ``start_step`` > 0 starts at that index of the timesteps with ``noise`` as the state
        there (frame truncation)."""
        return self._denoise_loop(
            m,
            cond,
            noise,
            num_inference_steps,
            generator,
            scheduler_type,
            step_callback,
            frame_index,
            num_samples,
            cache_motion,
            start_step,
        )[0]

    def _denoise_loop(
        self,
        m: Tensor,
        cond: Tensor | None,
        noise: Tensor,
        num_inference_steps: int,
        generator: torch.Generator | None,
        scheduler_type: str | None,
        step_callback: StepCallback | None,
        frame_index: int,
        num_samples: int,
        cache_motion: bool,
        start_step: int = 0,
        keep_state_at: int | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`sample_frame`, also returning the state at the start of step
        ``keep_state_at`` (None when not asked)."""
        sched = self.make_scheduler(scheduler_type)
        sched.set_timesteps(num_inference_steps, device=noise.device)
        x = noise * sched.init_noise_sigma if start_step == 0 else noise
        kept = None
        unet = self.model.unet
        k = num_samples
        with unet.cached_motion() if cache_motion else nullcontext():
            for step, t in enumerate(sched.timesteps):
                if step < start_step:
                    continue
                if step == keep_state_at:
                    kept = x
                eps = self.model.denoise(sched.scale_model_input(x, t), t, m, cond)
                if step_callback is not None:
                    step_callback(
                        frame_index, step, t, x.unflatten(0, (k, -1)), eps.unflatten(0, (k, -1))
                    )
                x = sched.step(eps, t, x, generator=generator).prev_sample
        if keep_state_at is not None and keep_state_at >= len(sched.timesteps):
            kept = x
        return x, kept

    @torch.no_grad()
    def sample_frames_truncated(
        self,
        m: Tensor,
        cond: Tensor | None,
        noise: Tensor,
        schedule: FrameTruncationSchedule,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        scheduler_type: str | None = None,
        step_callback: StepCallback | None = None,
        first_frame_index: int = 0,
        num_samples: int = 1,
        renoise: bool = True,
    ) -> Tensor:
        """Independent (non-autoregressive) frames denoised together with frame truncation.

        ``m [F, B, M, h, w]``, ``noise [F, B, C, H, W]``, ``cond [B, C', H, W]`` or None (the
        same for every frame) -> ``[F, B, C, H, W]``. Key frames run every step, the others
        from ``schedule.switch_step`` on, initialised by interpolating the key frames' states.
        """
        nf = noise.shape[0]
        if schedule.num_frames != nf or schedule.num_steps != num_inference_steps:
            raise ValueError(
                f"STDiffPipeline: truncation schedule for {schedule.num_frames} frames x "
                f"{schedule.num_steps} steps, sampling {nf} frames x {num_inference_steps}"
            )
        keys = schedule.key_frames
        rest = [f for f in range(nf) if f not in keys]
        scheds = {}
        for part in ("key", "rest"):
            scheds[part] = self.make_scheduler(scheduler_type)
            scheds[part].set_timesteps(num_inference_steps, device=noise.device)
        x = noise * scheds["key"].init_noise_sigma  # [F, B, C, H, W]; rest rows replaced at s
        b = noise.shape[1]
        k = num_samples
        abar = scheds["key"].alphas_cumprod
        every = list(range(nf))

        def batch(active: list[int]) -> tuple[Tensor, Tensor | None]:
            c = None if cond is None else cond.repeat(len(active), 1, 1, 1)
            return m[active].flatten(0, 1), c

        # One motion batch per phase: the SPADE cache lives while m is the same tensor.
        phases = {"early": batch(keys), "late": batch(every)}
        switch = schedule.switch_step
        with self.model.unet.cached_motion():
            for step, t in enumerate(scheds["key"].timesteps):
                if step == switch and step > 0 and rest:
                    level = math.sqrt(1.0 - float(abar[int(t)])) if renoise else None
                    x = interpolate_from_key_frames(x, schedule, 0, level, generator)
                active = keys if step < switch else every
                ma, ca = phases["early" if step < switch else "late"]
                xa = scheds["key"].scale_model_input(x[active].flatten(0, 1), t)
                eps = self.model.denoise(xa, t, ma, ca).unflatten(0, (-1, b))
                new_x = x.clone()
                for part, frames in (("key", keys), ("rest", rest)):
                    idx = [active.index(f) for f in frames if f in active]
                    if not idx:
                        continue
                    xs, es = x[frames].flatten(0, 1), eps[idx].flatten(0, 1)
                    if step_callback is not None:
                        for f, i in zip(frames, idx):
                            step_callback(
                                first_frame_index + f,
                                step,
                                t,
                                x[f].unflatten(0, (k, -1)),
                                eps[i].unflatten(0, (k, -1)),
                            )
                    new = scheds[part].step(es, t, xs, generator=generator).prev_sample
                    new_x[frames] = new.unflatten(0, (len(frames), b))
                x = new_x
        if switch >= num_inference_steps and rest:
            # Switch after the last step: the non-key frames interpolate the clean key frames.
            x = interpolate_from_key_frames(x, schedule, 0)
        return x

    @contextmanager
    def _cross_frame_attention(self, memory: CrossFrameMemory | None) -> Iterator[None]:
        """Route every UNet attention block through ``memory`` (reset) for the duration."""
        if memory is None:
            yield
            return
        unet = self.model.unet
        memory.reset()
        before = unet.set_attn_processor(
            {name: CrossFrameAttnProcessor(memory, name) for name, _ in unet.attention_blocks()}
        )
        try:
            yield
        finally:
            unet.set_attn_processor(before)

    @torch.no_grad()
    def __call__(
        self,
        Vo: Tensor,
        idx_o: Tensor,
        idx_p: Tensor,
        num_inference_steps: int = 50,
        num_samples: int = 1,
        generator: torch.Generator | None = None,
        scheduler_type: str | None = None,
        step_callback: StepCallback | None = None,
        chunk_horizon: int | None = None,
        frame_size: tuple[int, int] | None = None,
        drift_only: bool = False,
        cache_motion: bool = True,
        frame_truncation: dict[str, Any] | None = None,
        cross_frame_attention: CrossFrameMemory | dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Sample ``num_samples`` futures of ``Vo [N, To, C, Ho, Wo]`` (times ``idx_o [To]``) at
        times ``idx_p [Tp]`` (increasing, after ``idx_o[-1]``; may be fractional).

        Returns ``frames [K, N, Tp, C, H, W]`` (model space, [-1, 1] up to the sampler),
        ``motion [K, N, Tp, M, h, w]`` and ``idx_p``; with frame truncation also
        ``truncation`` (key frames, switch step, UNet frame evaluations and the full count),
        with cross-frame attention ``cross_frame`` (one dict per frame: the memory's keyframe
        rule inputs and ``bank_size``). ``chunk_horizon``: predict at most that many frames per
        SDE path, then re-encode the context from the last To frames. ``frame_size``
        (super-resolution models): the predicted size, default ``unet.sample_size``.
        ``drift_only``: deterministic motion (no SDE noise). ``cache_motion``: compute the
        SPADE modulation once per frame (same result). ``frame_truncation`` and
        ``cross_frame_attention``: see the module docstring.
        """
        model = self.model
        if Vo.dim() != 5 or Vo.shape[2] != model.channels:
            raise ValueError(
                f"STDiffPipeline: Vo must be [N, To, {model.channels}, H, W], got {tuple(Vo.shape)}"
            )
        n, to, c, ho, wo = Vo.shape
        if idx_o.dim() != 1 or idx_o.numel() != to:
            raise ValueError(
                f"STDiffPipeline: idx_o must have To={to} entries, got {tuple(idx_o.shape)}"
            )
        if idx_p.dim() != 1 or idx_p.numel() < 1:
            raise ValueError(
                f"STDiffPipeline: idx_p must be a non-empty 1-D tensor, got {tuple(idx_p.shape)}"
            )
        if num_samples < 1 or num_inference_steps < 1:
            raise ValueError("STDiffPipeline: num_samples and num_inference_steps must be >= 1")
        if chunk_horizon is not None and chunk_horizon < 1:
            raise ValueError(f"STDiffPipeline: chunk_horizon must be >= 1, got {chunk_horizon}")
        trunc = None if frame_truncation is None else check_truncation_options(frame_truncation)
        if trunc is not None and model.residual:
            raise ValueError(
                "STDiffPipeline: frame_truncation is not supported for residual models (its "
                "key-frame state lives in frame space)"
            )
        memory, flow_method = _cross_frame_memory(cross_frame_attention)
        if model.super_res_training:
            size = frame_size or model.unet.sample_size
            if size is None:
                raise ValueError("STDiffPipeline: super-resolution sampling needs frame_size")
            hp, wp = int(size[0]), int(size[1])
        else:
            if frame_size is not None and tuple(frame_size) != (ho, wo):
                raise ValueError(
                    f"STDiffPipeline: frame_size {tuple(frame_size)} != observed size {(ho, wo)} "
                    "(only super-resolution models predict at another size)"
                )
            hp, wp = ho, wo
        super_res = model.super_res_training and (ho < hp or wo < wp)
        k = num_samples
        b = k * n
        tp = idx_p.numel()
        dtype = model.unet.conv_in.weight.dtype
        idx_o = idx_o.to(torch.float32)
        idx_p = idx_p.to(torch.float32)
        ar_schedule = None
        if trunc is not None and model.autoregressive:
            ar_schedule = autoregressive_truncation_schedule(
                tp, num_inference_steps, trunc["key_every"], trunc["switch_fraction"]
            )
        evaluations = 0

        def up(x: Tensor) -> Tensor:
            if not super_res:
                return x
            return F.interpolate(x, size=(hp, wp), mode="bicubic", antialias=True)

        history = Vo.repeat(k, 1, 1, 1, 1)  # [K*N, To, C, Ho, Wo], index k * N + n
        history_t = idx_o
        previous = up(history[:, -1])
        # The two latest clean frames at the predicted size (source motion for the memory).
        recent = [up(history[:, -2]).clamp(-1, 1) if to >= 2 else None, previous.clamp(-1, 1)]
        cross_info: list[dict[str, Any]] = []
        horizon = chunk_horizon or tp
        frames: list[Tensor] = []
        motions: list[Tensor] = []
        key_state: Tensor | None = None
        if memory is not None and trunc is not None and not model.autoregressive:
            raise ValueError(
                "STDiffPipeline: cross_frame_attention needs frame-by-frame sampling; it cannot "
                "be combined with frame_truncation of a non-autoregressive model (frames batched)"
            )
        with self._cross_frame_attention(memory):
            for start in range(0, tp, horizon):
                times = idx_p[start : start + horizon]
                context_frames = history[:, -to:]
                context_t = history_t[-to:]
                context = model.tde.context_encode(context_frames, context_t)
                ts = torch.cat([context_t[-1:], times])
                m_chunk = model.tde.future_predict(
                    context, ts, generator=generator, drift_only=drift_only
                )
                if trunc is not None and not model.autoregressive:
                    batched, n_eval = self._truncated_chunk(
                        context_frames,
                        m_chunk,
                        trunc,
                        (b, c, hp, wp),
                        num_inference_steps,
                        generator,
                        scheduler_type,
                        step_callback,
                        start,
                        k,
                        dtype,
                    )
                    evaluations += n_eval
                    frames += batched
                    motions.append(m_chunk)
                    history, history_t = self._feed_back(
                        history, history_t, batched, times, super_res
                    )
                    continue
                chunk: list[Tensor] = []
                for j in range(times.numel()):
                    f = start + j
                    prev = previous.clamp(-1, 1)
                    cond = model.conditioning(
                        context_frames, prev if model.autoregressive else None, (hp, wp), 1
                    )
                    noise = randn_tensor(
                        (b, c, hp, wp), generator=generator, device=Vo.device, dtype=dtype
                    )
                    start_step, keep_at = 0, None
                    if ar_schedule is not None:
                        if f in ar_schedule.key_frames:
                            keep_at = ar_schedule.switch_step
                        else:
                            start_step = ar_schedule.switch_step
                            noise = self._truncated_start(
                                trunc["ar_init"],
                                key_state,
                                prev,
                                noise,
                                start_step,
                                num_inference_steps,
                                scheduler_type,
                            )
                        evaluations += num_inference_steps - start_step
                    if memory is not None:
                        src = None if recent[0] is None else self._flow(*recent, flow_method)
                        memory.begin_frame(src)
                    x, kept = self._denoise_loop(
                        m_chunk[j],
                        cond,
                        noise,
                        num_inference_steps,
                        generator,
                        scheduler_type,
                        step_callback,
                        f,
                        k,
                        cache_motion,
                        start_step,
                        keep_at,
                    )
                    if keep_at is not None:
                        key_state = kept
                    # Residual models denoise the change from the previous frame.
                    x = model.from_diffusion(x, prev)
                    if memory is not None:
                        gen = None
                        if memory.flow is not None:
                            gen = self._flow(recent[1], x.clamp(-1, 1), flow_method)
                        info = memory.end_frame(gen)
                        cross_info.append({**info, "bank_size": memory.bank_size})
                    recent = [recent[1], x.clamp(-1, 1)]
                    chunk.append(x)
                    previous = model.degrade(x, (ho, wo)) if super_res else x
                frames += chunk
                motions.append(m_chunk)
                history, history_t = self._feed_back(history, history_t, chunk, times, super_res)
        out = torch.stack(frames, dim=1).unflatten(0, (k, n))
        motion = torch.cat(motions, dim=0).transpose(0, 1).unflatten(0, (k, n))
        result: dict[str, Any] = {"frames": out, "motion": motion, "idx_p": idx_p}
        if trunc is not None:
            result["truncation"] = {
                # Non-autoregressive: key frames per chunk (every key_every-th and the last).
                "key_frames": ar_schedule.key_frames if ar_schedule is not None else None,
                "switch_step": int(round(trunc["switch_fraction"] * num_inference_steps)),
                "evaluations": evaluations,
                "full_evaluations": tp * num_inference_steps,
            }
        if memory is not None:
            result["cross_frame"] = cross_info
        return result

    @staticmethod
    def _feed_back(
        history: Tensor, history_t: Tensor, chunk: list[Tensor], times: Tensor, super_res: bool
    ) -> tuple[Tensor, Tensor]:
        """The next chunk's context: the last To frames (predictions included), at the observed
        resolution, and their times."""
        to, (ho, wo) = history.shape[1], history.shape[-2:]
        new = torch.stack(chunk, dim=1)
        if super_res:
            new = F.interpolate(new.flatten(0, 1), size=(ho, wo), mode="bicubic", antialias=True)
            new = new.unflatten(0, (history.shape[0], -1))
        history = torch.cat([history, new.clamp(-1, 1).to(history.dtype)], dim=1)[:, -to:]
        return history, torch.cat([history_t, times])[-to:]

    def _truncated_chunk(
        self,
        context_frames: Tensor,
        m_chunk: Tensor,
        trunc: dict[str, Any],
        shape: tuple[int, int, int, int],
        num_inference_steps: int,
        generator: torch.Generator | None,
        scheduler_type: str | None,
        step_callback: StepCallback | None,
        start: int,
        num_samples: int,
        dtype: torch.dtype,
    ) -> tuple[list[Tensor], int]:
        """A non-autoregressive chunk with frame truncation: (frames, UNet frame evaluations)."""
        nf = m_chunk.shape[0]
        cond = self.model.conditioning(context_frames, None, shape[-2:], 1)
        noise = torch.stack(
            [
                randn_tensor(shape, generator=generator, device=m_chunk.device, dtype=dtype)
                for _ in range(nf)
            ]
        )
        schedule = frame_truncation_schedule(
            nf, num_inference_steps, trunc["key_every"], trunc["switch_fraction"]
        )
        out = self.sample_frames_truncated(
            m_chunk,
            cond,
            noise,
            schedule,
            num_inference_steps,
            generator,
            scheduler_type,
            step_callback,
            first_frame_index=start,
            num_samples=num_samples,
            renoise=trunc["renoise"],
        )
        return list(out.unbind(0)), schedule.evaluations

    def _truncated_start(
        self,
        ar_init: str,
        key_state: Tensor | None,
        previous: Tensor,
        noise: Tensor,
        start_step: int,
        num_inference_steps: int,
        scheduler_type: str | None,
    ) -> Tensor:
        """State of an autoregressive non-key frame at ``start_step``."""
        if ar_init == "key_state":
            if key_state is None:
                raise RuntimeError("STDiffPipeline: no key frame before a non-key frame")
            return key_state
        if start_step >= num_inference_steps:
            return previous.to(noise.dtype)
        sched = self.make_scheduler(scheduler_type)
        sched.set_timesteps(num_inference_steps, device=noise.device)
        t = sched.timesteps[start_step]
        return sched.add_noise(previous.to(noise.dtype), noise, t.reshape(1))

    @staticmethod
    def _flow(a: Tensor, b: Tensor, method: str) -> Tensor:
        """Flow a -> b, ``[B, 2, H, W]`` pixels, between frames in [-1, 1] (grey or RGB; of
        other channel counts the first channel)."""
        from wavecast.flow import estimate_flow  # OpenCV: imported when the option is used

        if a.shape[1] not in (1, 3):
            a, b = a[:, :1], b[:, :1]
        return estimate_flow(a.float(), b.float(), method=method, value_range=(-1, 1))
