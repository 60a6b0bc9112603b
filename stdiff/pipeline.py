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
continuity study of ``temporal.continuity``: adjacent frames differ little at the noisy early
steps; ``stdiff.truncation``). ``frame_truncation_schedule(Tp, steps, k, f)`` picks key frames (every k-th and the
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
  sampling (scripts/truncation_study.py).

**Flow-guided cross-frame attention** (``cross_frame_attention=CrossFrameMemory(...)`` or a
dict of its kwargs plus ``flow_method``; ``stdiff.cross_frame``): every UNet attention block
attends also to the previous frame's keys / values, warped by the source flow, and to a
bounded memory bank. The processors are removed when the call returns.

Layout (as diffusers splits a pipeline): `SamplingOptions` (how to sample), `STDiffPipeline`
(``__call__``: check -> plan -> roll out -> output; the single-frame denoising loop),
`stdiff.rollout` (one function per roll-out mode), `STDiffPipelineOutput` (what comes back).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from stdiff.cross_frame import cross_frame_memory, installed_cross_frame_attention
from stdiff.model import STDiff, fresh_scheduler
from stdiff.rollout import RollOutState, SamplingPlan, roll_out_long_horizon
from stdiff.truncation import (
    FrameTruncationSchedule,
    autoregressive_truncation_schedule,
    check_truncation_options,
    interpolate_from_key_frames,
)
from temporal.flow_attention import CrossFrameMemory

#: ``step_callback(frame_index, step_index, timestep, x_t [K, N, C, H, W], eps_hat [K, N, C, H, W])``
StepCallback = Callable[[int, int, Tensor, Tensor, Tensor], None]


@dataclass
class SamplingOptions:
    """How to sample (the keyword arguments of `STDiffPipeline.__call__`).

    num_inference_steps: denoising steps per frame. num_samples: K futures per sequence.
    generator: the only source of randomness (Brownian entropy, initial and sampler noise).
    scheduler_type: "ddpm" | "ddim" | "dpm" | None (the pipeline scheduler's class).
    step_callback: called at every denoising step (see `StepCallback`).
    chunk_horizon: predict at most this many frames per SDE path, then re-encode the context
    from the last To frames. frame_size: the predicted size of super-resolution models (default
    ``unet.sample_size``). drift_only: deterministic motion (no SDE noise). cache_motion: the
    SPADE modulation once per frame (same result). frame_truncation, cross_frame_attention:
    see the module docstring (both off by default).
    """

    num_inference_steps: int = 50
    num_samples: int = 1
    generator: torch.Generator | None = None
    scheduler_type: str | None = None
    step_callback: StepCallback | None = None
    chunk_horizon: int | None = None
    frame_size: tuple[int, int] | None = None
    drift_only: bool = False
    cache_motion: bool = True
    frame_truncation: dict[str, Any] | None = None
    cross_frame_attention: CrossFrameMemory | dict[str, Any] | None = None

    def check(self) -> None:
        """ValueError on counts below 1."""
        if self.num_samples < 1 or self.num_inference_steps < 1:
            raise ValueError("STDiffPipeline: num_samples and num_inference_steps must be >= 1")
        if self.chunk_horizon is not None and self.chunk_horizon < 1:
            raise ValueError(
                f"STDiffPipeline: chunk_horizon must be >= 1, got {self.chunk_horizon}"
            )


@dataclass(eq=False)
class STDiffPipelineOutput(Mapping):
    """What `STDiffPipeline.__call__` returns; also a read-only mapping of its fields that are
    set (``out["frames"]``, ``"truncation" in out``), as diffusers' outputs are.

    frames ``[K, N, Tp, C, H, W]`` (model space, [-1, 1] up to the sampler); motion
    ``[K, N, Tp, M, h, w]``; idx_p ``[Tp]`` (float32); truncation (with frame truncation: key
    frames, switch step, UNet frame evaluations and the full count); cross_frame (with
    cross-frame attention: one dict per frame, the memory's keyframe-rule inputs and
    ``bank_size``).
    """

    frames: Tensor
    motion: Tensor
    idx_p: Tensor
    truncation: dict[str, Any] | None = None
    cross_frame: list[dict[str, Any]] | None = None

    def _set(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: str) -> Any:
        if key not in self._set():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._set())

    def __len__(self) -> int:
        return len(self._set())


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
    ) -> STDiffPipelineOutput:
        """Sample ``num_samples`` futures of ``Vo [N, To, C, Ho, Wo]`` (times ``idx_o [To]``) at
        times ``idx_p [Tp]`` (increasing, after ``idx_o[-1]``; may be fractional). The options
        are `SamplingOptions`' fields; returns an `STDiffPipelineOutput`."""
        options = SamplingOptions(
            num_inference_steps, num_samples, generator, scheduler_type, step_callback,
            chunk_horizon, frame_size, drift_only, cache_motion, frame_truncation,
            cross_frame_attention,
        )  # fmt: skip
        plan = self.plan(Vo, idx_o, idx_p, options)
        state = RollOutState.start(Vo, idx_o.to(torch.float32), plan)
        with installed_cross_frame_attention(self.model.unet, plan.memory):
            roll_out_long_horizon(self, plan, state)
        return self._output(plan, state)

    def plan(
        self, Vo: Tensor, idx_o: Tensor, idx_p: Tensor, options: SamplingOptions
    ) -> SamplingPlan:
        """Check a call's inputs and options (ValueError naming what is wrong) and resolve its
        sizes and optional features."""
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
        options.check()
        trunc = options.frame_truncation
        trunc = None if trunc is None else check_truncation_options(trunc)
        if trunc is not None and model.residual:
            raise ValueError(
                "STDiffPipeline: frame_truncation is not supported for residual models (its "
                "key-frame state lives in frame space)"
            )
        memory, flow_method = cross_frame_memory(options.cross_frame_attention)
        size = self._predicted_size((ho, wo), options.frame_size)
        if memory is not None and trunc is not None and not model.autoregressive:
            raise ValueError(
                "STDiffPipeline: cross_frame_attention needs frame-by-frame sampling; it cannot "
                "be combined with frame_truncation of a non-autoregressive model (frames batched)"
            )
        ar_schedule = None
        if trunc is not None and model.autoregressive:
            ar_schedule = autoregressive_truncation_schedule(
                idx_p.numel(), options.num_inference_steps, trunc["key_every"],
                trunc["switch_fraction"],
            )  # fmt: skip
        return SamplingPlan(
            options=options,
            idx_p=idx_p.to(torch.float32),
            num_sequences=n,
            channels=c,
            observed_size=(ho, wo),
            size=size,
            super_res=model.super_res_training and (ho < size[0] or wo < size[1]),
            dtype=model.unet.conv_in.weight.dtype,
            truncation=trunc,
            ar_schedule=ar_schedule,
            memory=memory,
            flow_method=flow_method,
        )

    def _predicted_size(
        self, observed: tuple[int, int], frame_size: tuple[int, int] | None
    ) -> tuple[int, int]:
        """(Hp, Wp): the observed size, or for super-resolution models ``frame_size`` (default
        ``unet.sample_size``)."""
        model = self.model
        if model.super_res_training:
            size = frame_size or model.unet.sample_size
            if size is None:
                raise ValueError("STDiffPipeline: super-resolution sampling needs frame_size")
            return int(size[0]), int(size[1])
        if frame_size is not None and tuple(frame_size) != observed:
            raise ValueError(
                f"STDiffPipeline: frame_size {tuple(frame_size)} != observed size {observed} "
                "(only super-resolution models predict at another size)"
            )
        return observed

    @staticmethod
    def _output(plan: SamplingPlan, state: RollOutState) -> STDiffPipelineOutput:
        k, n = plan.options.num_samples, plan.num_sequences
        out = STDiffPipelineOutput(
            frames=torch.stack(state.frames, dim=1).unflatten(0, (k, n)),
            motion=torch.cat(state.motions, dim=0).transpose(0, 1).unflatten(0, (k, n)),
            idx_p=plan.idx_p,
        )
        trunc, steps = plan.truncation, plan.options.num_inference_steps
        if trunc is not None:
            schedule = plan.ar_schedule
            out.truncation = {
                # Non-autoregressive: key frames per chunk (every key_every-th and the last).
                "key_frames": schedule.key_frames if schedule is not None else None,
                "switch_step": int(round(trunc["switch_fraction"] * steps)),
                "evaluations": state.evaluations,
                "full_evaluations": plan.num_frames * steps,
            }
        if plan.memory is not None:
            out.cross_frame = state.cross_frame
        return out

    # ------------------------------------------------------------------ denoising loops
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
        options = SamplingOptions(
            num_inference_steps=num_inference_steps,
            num_samples=num_samples,
            generator=generator,
            scheduler_type=scheduler_type,
            step_callback=step_callback,
            cache_motion=cache_motion,
        )
        return self.denoise_frame(m, cond, noise, options, frame_index, start_step)[0]

    def denoise_frame(
        self,
        m: Tensor,
        cond: Tensor | None,
        noise: Tensor,
        options: SamplingOptions,
        frame_index: int = 0,
        start_step: int = 0,
        keep_state_at: int | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`sample_frame` with its options, also returning the state at the start of
        step ``keep_state_at`` (None when not asked)."""
        sched = self.make_scheduler(options.scheduler_type)
        sched.set_timesteps(options.num_inference_steps, device=noise.device)
        x = noise * sched.init_noise_sigma if start_step == 0 else noise
        kept = None
        unet = self.model.unet
        k = options.num_samples
        callback = options.step_callback
        with unet.cached_motion() if options.cache_motion else nullcontext():
            for step, t in enumerate(sched.timesteps):
                if step < start_step:
                    continue
                if step == keep_state_at:
                    kept = x
                eps = self.model.denoise(sched.scale_model_input(x, t), t, m, cond)
                if callback is not None:
                    callback(
                        frame_index, step, t, x.unflatten(0, (k, -1)), eps.unflatten(0, (k, -1))
                    )
                x = sched.step(eps, t, x, generator=options.generator).prev_sample
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
