"""STDiffPipeline: sampling future frames (model / scheduler / pipeline split as in diffusers).

Encode the observed context once, draw one SDE motion path per sample for all requested future
times, then for every future frame run a full denoising loop with a *fresh* scheduler
(multistep solvers keep history; the published code leaked it from frame to frame),
conditioned on that time's motion feature and (autoregressive) the previous prediction.
K stochastic futures are batched along the batch dimension (index ``k * N + n``). Long horizons
roll out in chunks, re-encoding the context from the last To frames (predictions included).
All randomness (Brownian entropy, initial noise, DDPM variance noise) comes from ``generator``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from stdiff.model import SCHEDULER_TYPES, STDiff

#: ``step_callback(frame_index, step_index, timestep, x_t [K, N, C, H, W], eps_hat [K, N, C, H, W])``
StepCallback = Callable[[int, int, Tensor, Tensor, Tensor], None]


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
        if scheduler_type is None:
            return type(self.scheduler).from_config(self.scheduler.config)
        if scheduler_type not in SCHEDULER_TYPES:
            raise ValueError(
                f"STDiffPipeline: scheduler_type {scheduler_type!r} not in {sorted(SCHEDULER_TYPES)}"
            )
        return SCHEDULER_TYPES[scheduler_type].from_config(self.scheduler.config)

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
    ) -> Tensor:
        """One frame's full denoising loop from ``noise [B, C, H, W]`` with motion ``m [B, M, h, w]``
        and extra UNet channels ``cond`` -> ``[B, C, H, W]``. A new scheduler every call."""
        sched = self.make_scheduler(scheduler_type)
        sched.set_timesteps(num_inference_steps, device=noise.device)
        x = noise * sched.init_noise_sigma
        unet = self.model.unet
        k = num_samples
        with unet.cached_motion() if cache_motion else nullcontext():
            for step, t in enumerate(sched.timesteps):
                eps = self.model.denoise(sched.scale_model_input(x, t), t, m, cond)
                if step_callback is not None:
                    step_callback(
                        frame_index, step, t, x.unflatten(0, (k, -1)), eps.unflatten(0, (k, -1))
                    )
                x = sched.step(eps, t, x, generator=generator).prev_sample
        return x

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
    ) -> dict[str, Tensor]:
        """Sample ``num_samples`` futures of ``Vo [N, To, C, Ho, Wo]`` (times ``idx_o [To]``) at
        times ``idx_p [Tp]`` (increasing, after ``idx_o[-1]``; may be fractional).

        Returns ``frames [K, N, Tp, C, H, W]`` (model space, [-1, 1] up to the sampler),
        ``motion [K, N, Tp, M, h, w]`` and ``idx_p``. ``chunk_horizon``: predict at most that
        many frames per SDE path, then re-encode the context from the last To frames.
        ``frame_size`` (super-resolution models): the predicted size, default
        ``unet.sample_size``. ``drift_only``: deterministic motion (no SDE noise).
        ``cache_motion``: compute the SPADE modulation once per frame (same result).
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
        dtype = model.unet.conv_in.weight.dtype
        idx_o = idx_o.to(torch.float32)
        idx_p = idx_p.to(torch.float32)

        def up(x: Tensor) -> Tensor:
            if not super_res:
                return x
            return F.interpolate(x, size=(hp, wp), mode="bicubic", antialias=True)

        history = Vo.repeat(k, 1, 1, 1, 1)  # [K*N, To, C, Ho, Wo], index k * N + n
        history_t = idx_o
        previous = up(history[:, -1])
        horizon = chunk_horizon or idx_p.numel()
        frames: list[Tensor] = []
        motions: list[Tensor] = []
        for start in range(0, idx_p.numel(), horizon):
            times = idx_p[start : start + horizon]
            context_frames = history[:, -to:]
            context_t = history_t[-to:]
            context = model.tde.context_encode(context_frames, context_t)
            ts = torch.cat([context_t[-1:], times])
            m_chunk = model.tde.future_predict(
                context, ts, generator=generator, drift_only=drift_only
            )
            chunk: list[Tensor] = []
            for j in range(times.numel()):
                m_j = m_chunk[j]
                if model.autoregressive:
                    prev = previous.clamp(-1, 1)
                    cond = model.conditioning(context_frames, prev, (hp, wp), 1)
                else:
                    cond = model.conditioning(context_frames, None, (hp, wp), 1)
                noise = randn_tensor(
                    (b, c, hp, wp), generator=generator, device=Vo.device, dtype=dtype
                )
                x = self.sample_frame(
                    m_j,
                    cond,
                    noise,
                    num_inference_steps,
                    generator,
                    scheduler_type,
                    step_callback,
                    frame_index=start + j,
                    num_samples=k,
                    cache_motion=cache_motion,
                )
                chunk.append(x)
                previous = model.degrade(x, (ho, wo)) if super_res else x
            frames += chunk
            motions.append(m_chunk)
            # The next chunk's context: the last To frames, at the observed resolution.
            new = torch.stack(chunk, dim=1)
            if super_res:
                new = F.interpolate(
                    new.flatten(0, 1), size=(ho, wo), mode="bicubic", antialias=True
                )
                new = new.unflatten(0, (b, -1))
            history = torch.cat([history, new.clamp(-1, 1).to(history.dtype)], dim=1)[:, -to:]
            history_t = torch.cat([history_t, times])[-to:]
        out = torch.stack(frames, dim=1).unflatten(0, (k, n))
        motion = torch.cat(motions, dim=0).transpose(0, 1).unflatten(0, (k, n))
        return {"frames": out, "motion": motion, "idx_p": idx_p}
