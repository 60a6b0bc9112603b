"""Frame truncation for the STDiff sampler: which frames to denoise at which step.

Adjacent frames differ much at the noisy early steps and little at the late ones (the continuity
study, `temporal.continuity`), so a sampler may denoise only *key frames* early and every frame
after a switch step, initialising the non-key frames from their neighbouring key frames.

- `frame_truncation_schedule(F, S, k, f)`: key frames every k-th plus the last, switch step
  ``round(f * S)``; ``active [S, F]`` says which frames run at each step.
- `autoregressive_truncation_schedule`: the same for an autoregressive roll-out (no later key
  frame to interpolate from: key frames every k-th only).
- `interpolate_from_key_frames`: fill the non-key frames of ``x [.., F, ..]`` at the switch.
- `check_truncation_options`: the pipeline's ``frame_truncation=`` dict, checked and completed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

TRUNCATION_KEYS = {"key_every", "switch_fraction", "renoise", "ar_init"}
AR_INITS = ("key_state", "previous_frame")


@dataclass
class FrameTruncationSchedule:
    """Which frames a sampler denoises at each step (see `frame_truncation_schedule`).

    active [num_steps, num_frames] bool; interpolation maps each non-key frame to
    (left key frame, right key frame, weight of the right one) for its initialisation at
    `switch_step`.
    """

    num_frames: int
    num_steps: int
    key_frames: list[int]
    switch_step: int
    active: np.ndarray
    interpolation: dict[int, tuple[int, int, float]] = field(default_factory=dict)

    def frames_at(self, step: int) -> list[int]:
        return [int(f) for f in np.flatnonzero(self.active[step])]

    @property
    def evaluations(self) -> int:
        """Frame-denoising evaluations in total (a full sampler does num_frames * num_steps)."""
        return int(self.active.sum())

    @property
    def speedup(self) -> float:
        """Ideal speed-up in denoiser work over full sampling (num_frames * num_steps / evaluations)."""
        return self.num_frames * self.num_steps / max(self.evaluations, 1)


def frame_truncation_schedule(
    num_frames: int, num_steps: int, key_every: int, switch_fraction: float
) -> FrameTruncationSchedule:
    """Denoise only key frames (every `key_every`-th frame, plus the last) for the first
    round(switch_fraction * num_steps) steps, and all frames from that switch step on.

    At the switch, a sampler initialises each non-key frame from its two neighbouring key
    frames (`interpolate_from_key_frames`). switch_fraction 0 = plain full sampling.
    """
    if num_frames < 1 or num_steps < 1:
        raise ValueError(
            f"frame_truncation_schedule: num_frames and num_steps must be >= 1, got {num_frames}, {num_steps}"
        )
    if key_every < 1:
        raise ValueError(f"frame_truncation_schedule: key_every must be >= 1, got {key_every}")
    if not 0.0 <= switch_fraction <= 1.0:
        raise ValueError(
            f"frame_truncation_schedule: switch_fraction must be in [0, 1], got {switch_fraction}"
        )
    keys = sorted(set(range(0, num_frames, key_every)) | {num_frames - 1})
    switch = int(round(switch_fraction * num_steps))
    active = np.zeros((num_steps, num_frames), dtype=bool)
    active[:switch, keys] = True
    active[switch:] = True
    interp: dict[int, tuple[int, int, float]] = {}
    for f in range(num_frames):
        if f in keys:
            continue
        left = max(k for k in keys if k < f)
        right = min(k for k in keys if k > f)
        interp[f] = (left, right, (f - left) / (right - left))
    return FrameTruncationSchedule(num_frames, num_steps, keys, switch, active, interp)


def interpolate_from_key_frames(
    x: torch.Tensor,
    schedule: FrameTruncationSchedule,
    frame_dim: int = 1,
    noise_std: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fill the non-key frames of x (frames along `frame_dim`) by linear interpolation of their
    neighbouring key frames; the key frames are returned unchanged.

    noise_std: if given (the noise level of x_t at the switch, sqrt(1 - abar_t)), fresh
    Gaussian noise of std noise_std * sqrt(1 - (1 - w)^2 - w^2) is added, giving back the noise
    variance that averaging two independent noisy latents removes.
    """
    if x.shape[frame_dim] != schedule.num_frames:
        raise ValueError(
            f"interpolate_from_key_frames: x has {x.shape[frame_dim]} frames along dim {frame_dim}, "
            f"the schedule {schedule.num_frames}"
        )
    out = x.clone()
    for f, (left, right, w) in schedule.interpolation.items():
        value = (1 - w) * x.select(frame_dim, left) + w * x.select(frame_dim, right)
        if noise_std is not None:
            extra = math.sqrt(max(0.0, 1.0 - (1 - w) ** 2 - w**2))
            noise = torch.randn(
                value.shape, generator=generator, dtype=value.dtype, device=value.device
            )
            value = value + noise_std * extra * noise
        out.select(frame_dim, f).copy_(value)
    return out


def check_truncation_options(options: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(options, dict):
        raise ValueError(
            f"STDiffPipeline: frame_truncation must be a dict {{key_every, switch_fraction}}, "
            f"got {type(options).__name__}"
        )
    unknown = set(options) - TRUNCATION_KEYS
    missing = {"key_every", "switch_fraction"} - set(options)
    if unknown or missing:
        raise ValueError(
            f"STDiffPipeline: frame_truncation keys: unknown {sorted(unknown)}, missing "
            f"{sorted(missing)} (known: {sorted(TRUNCATION_KEYS)})"
        )
    out = {"renoise": True, "ar_init": "previous_frame", **options}
    if out["ar_init"] not in AR_INITS:
        raise ValueError(
            f"STDiffPipeline: frame_truncation.ar_init must be one of {AR_INITS}, got "
            f"{out['ar_init']!r}"
        )
    return out


def autoregressive_truncation_schedule(
    num_frames: int, num_steps: int, key_every: int, switch_fraction: float
) -> FrameTruncationSchedule:
    """``frame_truncation_schedule`` for an autoregressive roll-out: key frames are every
    ``key_every``-th frame only (the last frame need not be one: nothing is interpolated from
    it), and no frame is truncated when the switch step is 0."""
    schedule = frame_truncation_schedule(num_frames, num_steps, key_every, switch_fraction)
    step = key_every if schedule.switch_step > 0 else 1
    keys = list(range(0, num_frames, step))
    active = np.zeros_like(schedule.active)
    active[: schedule.switch_step, keys] = True
    active[schedule.switch_step :] = True
    return dataclasses.replace(schedule, key_frames=keys, active=active, interpolation={})
