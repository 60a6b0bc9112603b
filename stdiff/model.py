"""STDiff: temporal dynamics encoder + motion-conditioned diffusion UNet, and its training
objective as plain torch (the LightningModule only calls :meth:`STDiff.training_loss`).

Batch order everywhere: UNet batch index ``n * Tp + tp`` (sample-major), as the reference.
The noise-scheduler config travels with the model (``scheduler_config``, also stored in the
state dict as extra state) so that sampling uses the schedule the model was trained with.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torchsde
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from stdiff.configs import DEFAULT_SCHEDULER_CONFIG
from stdiff.tde import TemporalDynamicsEncoder
from stdiff.unet_motion import UNet2DMotionCond

SCHEDULER_CLASSES = {
    "DDPMScheduler": DDPMScheduler,
    "DDIMScheduler": DDIMScheduler,
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
}
SCHEDULER_TYPES = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}


def normalize_scheduler_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """A scheduler config as stored with the model: ``{"_class_name": ..., **kwargs}``.

    Accepts diffusers' ``scheduler.config``, the fixtures' ``{"class": ...}`` form, or None
    (the kitti_range training schedule).
    """
    if config is None:
        return copy.deepcopy(DEFAULT_SCHEDULER_CONFIG)
    cfg = {k: v for k, v in dict(config).items() if k != "_use_default_values"}
    name = cfg.pop("class", None) or cfg.pop("_class_name", None) or "DDPMScheduler"
    cfg.pop("_diffusers_version", None)
    if name not in SCHEDULER_CLASSES:
        raise ValueError(
            f"scheduler_config: class {name!r} not supported; use one of {sorted(SCHEDULER_CLASSES)}"
        )
    return {"_class_name": name, **copy.deepcopy(cfg)}


def fresh_scheduler(base: Any, scheduler_type: str | None = None) -> Any:
    """A new scheduler with ``base``'s config: ``base``'s own class (None) or "ddpm" / "ddim" /
    "dpm" (multistep DPM-Solver), built by ``from_config``. Multistep solvers keep a history,
    so every denoising loop starts from a fresh one."""
    if scheduler_type is None:
        return type(base).from_config(base.config)
    if scheduler_type not in SCHEDULER_TYPES:
        raise ValueError(f"scheduler_type {scheduler_type!r} not in {sorted(SCHEDULER_TYPES)}")
    return SCHEDULER_TYPES[scheduler_type].from_config(base.config)


def random_future_subset(
    Tp_total: int,
    rand_Tp: int,
    generator: torch.Generator | None = None,
    *,
    start: float = 0.0,
    time_step: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """``rand_predict``: a random sorted subset of ``rand_Tp`` of the ``Tp_total`` future frames.

    Returns ``(index [rand_Tp] int64, times [rand_Tp] float32)``: ``index`` selects frames of
    ``Vp [N, Tp_total, ...]``, ``times = start + time_step * index`` are the model's ``idx_p``
    (the reference uses ``start = To``, ``time_step = 1``). A fractional ``time_step`` (e.g.
    0.5 for frames recorded at twice the model's time unit) gives fractional training times.
    """
    if not 1 <= rand_Tp <= Tp_total:
        raise ValueError(
            f"random_future_subset: need 1 <= rand_Tp <= Tp_total, got {rand_Tp}, {Tp_total}"
        )
    if time_step <= 0:
        raise ValueError(f"random_future_subset: time_step must be > 0, got {time_step}")
    dev = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(Tp_total, generator=generator, device=dev).cpu()
    index = perm[:rand_Tp].sort().values
    return index, start + time_step * index.to(torch.float32)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    # Bicubic with antialias, as the reference's torchvision Resize (tensor path).
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)


class STDiff(nn.Module):
    """``tde`` (:class:`TemporalDynamicsEncoder`) + ``unet`` (:class:`UNet2DMotionCond`).

    ``autoregressive``: the UNet input is ``cat([noisy, previous clean frame])`` (in_channels
    = 2C; teacher forcing in training). ``residual`` (autoregressive only; off in the published
    model): the diffusion variable is the change from that previous frame,
    ``(frame - previous) / residual_scale``, and sampling adds the previous frame back; with the
    default scale 2 the change of two [-1, 1] frames stays in [-1, 1], so ``clip_sample`` clips
    nothing that a frame could reach. Otherwise the noisy frame alone, or with
    ``concat_observed`` (the fork's non-autoregressive variant) ``cat([noisy, Vo as To*C
    channels])``. ``super_res_training``: observed frames are smaller than predicted ones and
    the previous frames are degraded down -> up to the observed resolution.
    """

    def __init__(
        self,
        unet: dict[str, Any],
        tde: dict[str, Any],
        autoregressive: bool = True,
        super_res_training: bool = False,
        concat_observed: bool = False,
        scheduler_config: dict[str, Any] | None = None,
        residual: bool = False,
        residual_scale: float = 2.0,
    ) -> None:
        super().__init__()
        if residual and not autoregressive:
            raise ValueError("STDiff: residual=True needs autoregressive=True (a previous frame)")
        if not residual_scale > 0:
            raise ValueError(f"STDiff: residual_scale must be > 0, got {residual_scale}")
        self.residual = bool(residual)
        self.residual_scale = float(residual_scale)
        self.tde = TemporalDynamicsEncoder(**tde)
        self.unet = UNet2DMotionCond(**unet)
        self.autoregressive = autoregressive
        self.super_res_training = super_res_training
        self.concat_observed = concat_observed and not autoregressive
        self.channels = self.tde.motion_encoder.in_channels
        if self.unet.m_channels != self.tde.motion_channels:
            raise ValueError(
                f"STDiff: unet.m_channels {self.unet.m_channels} != TDE motion channels "
                f"{self.tde.motion_channels} (model_channels * 2**n_downs)"
            )
        if self.unet.out_channels != self.channels:
            raise ValueError(
                f"STDiff: unet.out_channels {self.unet.out_channels} != frame channels "
                f"{self.channels} (tde.in_channels)"
            )
        if autoregressive and self.unet.in_channels != 2 * self.channels:
            raise ValueError(
                f"STDiff: autoregressive needs unet.in_channels = 2 * {self.channels}, got "
                f"{self.unet.in_channels}"
            )
        if not autoregressive and not concat_observed and self.unet.in_channels != self.channels:
            raise ValueError(
                f"STDiff: non-autoregressive without concat_observed needs unet.in_channels = "
                f"{self.channels}, got {self.unet.in_channels}"
            )
        self.scheduler_config = normalize_scheduler_config(scheduler_config)

    def to_channels_last(self) -> STDiff:
        """Channels-last weights for the convolutional nets (faster on CPU, with bf16 most),
        except the motion SDE's drift / diffusion nets: they run on the solver's flat state,
        which is contiguous, and mixed formats in their many small convs (forward and adjoint)
        made a reduced-config bf16 training step with the adjoint 1.6x slower (4.6 against
        2.9 s side by side). Returns ``self``."""
        sde = self.tde.motion_sde
        for module in self.children():
            module.to(memory_format=torch.channels_last)
        sde.to(memory_format=torch.contiguous_format)
        return self

    # ------------------------------------------------------------------ scheduler
    def get_extra_state(self) -> dict[str, Any]:
        return {"scheduler_config": copy.deepcopy(self.scheduler_config)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "scheduler_config" not in state:
            raise ValueError("STDiff: extra state must be a dict with 'scheduler_config'")
        self.scheduler_config = normalize_scheduler_config(state["scheduler_config"])

    def make_scheduler(self, scheduler_type: str | None = None) -> Any:
        """A fresh diffusers scheduler with the stored schedule; ``scheduler_type`` None (the
        stored class), "ddpm", "ddim" or "dpm" (multistep DPM-Solver), built by ``from_config``."""
        cfg = dict(self.scheduler_config)
        base = SCHEDULER_CLASSES[cfg.pop("_class_name")](**cfg)
        return base if scheduler_type is None else fresh_scheduler(base, scheduler_type)

    def check_scheduler(self, scheduler: Any) -> None:
        """ValueError when ``scheduler``'s noise schedule differs from the stored one (e.g. a
        'linear' test config for a model trained with squaredcos_cap_v2)."""
        key = json.dumps(self.scheduler_config, sort_keys=True)
        if getattr(self, "_schedule_key", None) != key:
            self._schedule_key, self._schedule = key, self.make_scheduler().alphas_cumprod
        want = self._schedule
        have = getattr(scheduler, "alphas_cumprod", None)
        if (
            have is None
            or have.shape != want.shape
            or not torch.allclose(have.cpu(), want, atol=1e-6)
        ):
            got = getattr(scheduler, "config", {})
            raise ValueError(
                "STDiff: the scheduler's noise schedule "
                f"(beta_schedule={got.get('beta_schedule')!r}, "
                f"num_train_timesteps={got.get('num_train_timesteps')}) differs from the one "
                f"stored with the model (beta_schedule={self.scheduler_config.get('beta_schedule')!r}, "
                f"num_train_timesteps={self.scheduler_config.get('num_train_timesteps')})"
            )

    # ------------------------------------------------------------------ pieces
    def degrade(self, frames: Tensor, low_size: tuple[int, int]) -> Tensor:
        """Super-resolution degradation ``[B, C, H, W]`` -> down to ``low_size`` -> up again."""
        return _resize(_resize(frames, low_size), (frames.shape[-2], frames.shape[-1]))

    def conditioning(
        self, Vo: Tensor, previous: Tensor | None, frame_size: tuple[int, int], repeats: int
    ) -> Tensor | None:
        """Extra UNet input channels ``[B*repeats, C', Hp, Wp]`` (sample-major) or None.

        Autoregressive: ``previous [B*repeats, C, Hp, Wp]`` (already degraded / clamped as
        the caller wants). Non-autoregressive with ``concat_observed``: ``Vo`` as ``To*C``
        channels, resized to the frame size, repeated ``repeats`` times, clamped to [-1, 1].
        """
        if self.autoregressive:
            if previous is None:
                raise ValueError("STDiff: autoregressive mode needs the previous frames")
            return previous
        if not self.concat_observed:
            return None
        n, to, c = Vo.shape[:3]
        expected = self.channels + to * c
        if self.unet.in_channels != expected:
            raise ValueError(
                f"STDiff: concat_observed with To={to} needs unet.in_channels={expected}, got "
                f"{self.unet.in_channels}"
            )
        obs = _resize(Vo.flatten(1, 2), frame_size).clamp(-1, 1)
        return obs.repeat_interleave(repeats, dim=0)

    def denoise(self, noisy: Tensor, timesteps: Tensor, m: Tensor, cond: Tensor | None) -> Tensor:
        """One UNet evaluation: ``noisy [B, C, H, W]`` (+ ``cond`` channels last) -> ``[B, C, H, W]``."""
        x = noisy if cond is None else torch.cat([noisy, cond.to(noisy.dtype)], dim=1)
        return self.unet(x, timesteps, m)

    def teacher_forced_previous(
        self, Vo: Tensor, Vp: Tensor, Vo_last_frame: Tensor | None = None
    ) -> Tensor:
        """Previous clean frames for training, ``[N, Tp, C, Hp, Wp]``: ``[last observed,
        Vp[:, :-1]]``, degraded down -> up in super-resolution mode."""
        n, tp, c, hp, wp = Vp.shape
        ho, wo = Vo.shape[-2:]
        low = self.super_res_training and (ho < hp or wo < wp)
        if low:
            Vp = self.degrade(Vp.flatten(0, 1), (ho, wo)).unflatten(0, (n, tp))
            Vo_last_frame = _resize(Vo[:, -1], (hp, wp)).unsqueeze(1)
        elif Vo_last_frame is None:
            Vo_last_frame = Vo[:, -1:]
        if tuple(Vo_last_frame.shape[-3:]) != (c, hp, wp):
            raise ValueError(
                f"STDiff: last observed frame {tuple(Vo_last_frame.shape)} does not match the "
                f"predicted frames {tuple(Vp.shape)} (set super_res_training for smaller Vo)"
            )
        return torch.cat([Vo_last_frame, Vp[:, :-1]], dim=1)

    def to_diffusion(self, frames: Tensor, previous: Tensor) -> Tensor:
        """Frames ``[B, C, H, W]`` -> the diffusion variable (identity unless ``residual``)."""
        if not self.residual:
            return frames
        return (frames - previous.to(frames.dtype)) / self.residual_scale

    def from_diffusion(self, x: Tensor, previous: Tensor) -> Tensor:
        """Inverse of :meth:`to_diffusion`: a denoised sample ``[B, C, H, W]`` -> frames."""
        if not self.residual:
            return x
        return previous.to(x.dtype) + self.residual_scale * x

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        Vo: Tensor,
        idx_o: Tensor,
        idx_p: Tensor,
        noisy_Vp: Tensor,
        timesteps: Tensor,
        Vp: Tensor | None = None,
        Vo_last_frame: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        bm: torchsde.BrownianInterval | None = None,
        drift_only: bool = False,
    ) -> Tensor:
        """Training forward: predicted noise ``[N*Tp, C, Hp, Wp]``.

        ``Vo [N, To, C, Ho, Wo]``, ``idx_o [To]``, ``idx_p [Tp]``, ``noisy_Vp [N*Tp, C, Hp, Wp]``,
        ``timesteps [N*Tp]``; ``Vp [N, Tp, C, Hp, Wp]`` clean targets (teacher forcing, needed in
        autoregressive mode). ``generator`` seeds the Brownian path, ``bm`` replaces it,
        ``drift_only`` integrates the motion without diffusion.
        """
        n, tp = Vo.shape[0], idx_p.numel()
        if noisy_Vp.dim() != 4 or noisy_Vp.shape[0] != n * tp or noisy_Vp.shape[1] != self.channels:
            raise ValueError(
                f"STDiff: noisy_Vp must be [N*Tp={n * tp}, {self.channels}, Hp, Wp], got "
                f"{tuple(noisy_Vp.shape)}"
            )
        frame_size = (noisy_Vp.shape[-2], noisy_Vp.shape[-1])
        m_future = self.tde(Vo, idx_o, idx_p, generator=generator, bm=bm, drift_only=drift_only)
        m = m_future.transpose(0, 1).flatten(0, 1)  # [N*Tp, M, h, w], sample-major
        previous = None
        if self.autoregressive:
            if Vp is None:
                raise ValueError("STDiff: autoregressive training needs the clean future frames Vp")
            if tuple(Vp.shape[:2]) != (n, tp):
                raise ValueError(f"STDiff: Vp {tuple(Vp.shape)} does not match N={n}, Tp={tp}")
            previous = self.teacher_forced_previous(Vo, Vp, Vo_last_frame).flatten(0, 1)
        cond = self.conditioning(Vo, previous, frame_size, tp)
        return self.denoise(noisy_Vp, timesteps, m, cond)

    def training_loss(
        self,
        Vo: Tensor,
        Vp: Tensor,
        idx_o: Tensor,
        idx_p: Tensor,
        scheduler: Any,
        loss: Literal["l1", "l2"] = "l1",
        generator: torch.Generator | None = None,
        *,
        noise: Tensor | None = None,
        timesteps: Tensor | None = None,
        drift_only: bool = False,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Diffusion objective on the future frames ``Vp [N, Tp, C, Hp, Wp]``.

        One noise image per frame and one random timestep per frame (from ``generator``, or
        pass ``noise [N*Tp, C, Hp, Wp]`` / ``timesteps [N*Tp]``), teacher forcing in
        autoregressive mode, target per the scheduler's ``prediction_type`` (epsilon: the
        noise; v_prediction; sample), mean L1 (or L2) over all elements. One backward through
        UNet, SDE, GRU and encoder. Returns ``(loss, dict)`` with detached diagnostics.
        """
        if loss not in ("l1", "l2"):
            raise ValueError(f"STDiff.training_loss: loss must be 'l1' or 'l2', got {loss!r}")
        if Vp.dim() != 5 or Vp.shape[1] != idx_p.numel():
            raise ValueError(
                f"STDiff.training_loss: Vp must be [N, Tp={idx_p.numel()}, C, H, W], got "
                f"{tuple(Vp.shape)}"
            )
        self.check_scheduler(scheduler)
        clean = Vp.flatten(0, 1)
        if self.residual:
            # The change from the teacher-forced previous frame (what sampling conditions on).
            clean = self.to_diffusion(clean, self.teacher_forced_previous(Vo, Vp).flatten(0, 1))
        if noise is None:
            noise = randn_tensor(
                tuple(clean.shape), generator=generator, device=clean.device, dtype=clean.dtype
            )
        if timesteps is None:
            dev = generator.device if generator is not None else clean.device
            timesteps = torch.randint(
                0,
                scheduler.config.num_train_timesteps,
                (clean.shape[0],),
                generator=generator,
                device=dev,
            ).to(clean.device)
        if noise.shape != clean.shape or timesteps.shape != (clean.shape[0],):
            raise ValueError(
                f"STDiff.training_loss: noise {tuple(noise.shape)} / timesteps "
                f"{tuple(timesteps.shape)} do not match the frames {tuple(clean.shape)}"
            )
        noisy = scheduler.add_noise(clean, noise, timesteps)
        pred = self(
            Vo,
            idx_o,
            idx_p,
            noisy,
            timesteps,
            Vp=Vp,
            generator=generator,
            drift_only=drift_only,
        )
        kind = scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = scheduler.get_velocity(clean, noise, timesteps)
        elif kind == "sample":
            target = clean
        else:
            raise ValueError(f"STDiff.training_loss: prediction_type {kind!r} not supported")
        fn = F.l1_loss if loss == "l1" else F.mse_loss
        value = fn(pred.float(), target.float())
        return value, {
            "loss": value.detach(),
            "pred": pred.detach(),
            "target": target.detach(),
            "timesteps": timesteps,
        }

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_reference(
        cls,
        state_dict: dict[str, Tensor],
        config: dict[str, Any] | str,
        scheduler_config: dict[str, Any] | str | None = None,
        strict: bool = True,
        **overrides: Any,
    ) -> STDiff:
        """Build from a published ``STDiffDiffusers`` state dict and its ``{"unet", "tde"}``
        config (dicts or JSON). Every reference key must map to one of ours and vice versa
        (ValueError listing them otherwise). ``scheduler_config`` defaults to the kitti_range
        training schedule; ``overrides`` replace translated kwargs (``tde`` / ``unet`` dicts
        are merged)."""
        from stdiff.reference import load_reference_state_dict, translate_config

        kwargs = translate_config(config)
        for key, value in overrides.items():
            if key in ("unet", "tde") and isinstance(value, dict):
                kwargs[key].update(value)
            else:
                kwargs[key] = value
        if isinstance(scheduler_config, str):
            scheduler_config = json.loads(scheduler_config)
        model = cls(**kwargs, scheduler_config=scheduler_config)
        load_reference_state_dict(model, state_dict, strict=strict)
        return model
