"""LightningModule that trains the TemporalModule in the latent space of a frozen WF-VAE.

Batches (from `wavecast.data.flow_pairs.FlowPairDataModule`)::

    frames      [B, 2, 3, H, W] in [-1, 1]   frame t-1, frame t
    flow        [B, 2, H, W]  t-1 -> t in image pixels (dx right, dy down)
    flow_valid  [B, 1, H, W]  bool, or None / absent (all valid)

One step:

1. Both frames are encoded by the frozen VAE as one-frame clips (no grad, posterior mode):
   z_prev, z_cur [B, C, H/8, W/8].
2. The flow goes to the latent grid with `wavecast.warping.resize_flow` (area averaging by
   default: a latent pixel covers an 8 x 8 block of image pixels; values scaled by 1/8). Its
   validity is pooled the same way; a latent pixel counts as valid when at least
   `latent_valid_threshold` of its block is.
3. `z_fused, _, aux = temporal(z_prev, z_cur, flow=flow_latent)`.
4. Loss, each term with its weight (0 switches it off; the decoder only runs when a term needs it):

   - ``rec``: L1 between decode(z_fused) and frame t (the fused latent must still decode to the
     current frame);
   - ``latent``: L1 between z_fused and z_cur;
   - ``warp``: L1 between the refined warp (aux z_warp_refined) and z_cur on valid latent
     pixels: a direct signal for the refiner to correct what the warp gets wrong;
   - ``temporal``: temporal consistency, L1 between decode(z_fused) and the previous frame
     carried to time t by the image-resolution flow, on pixels where that carried frame is
     defined. `temporal_target="decoded"` (default) carries decode(z_prev), i.e. what a viewer
     saw at t-1, so the term measures flicker of the decoded video; "input" carries the input
     frame t-1 (a second reconstruction target). `temporal_warp="splat"` (default) forward-splats
     frame t-1 (reads the flow at the source pixels, where flows t-1 -> t and their valid masks
     are defined; invalid source pixels are left out, so occluded content does not land in
     frame t); "backward" samples at p - flow(p) like the TemporalModule (first-order).
   - ``edge``: `edge_loss` (e.g. `temporal.edge_loss.EdgePreservingLoss`, weight inside) between
     the Sobel edges of z_warp_refined and z_cur (`edge_on="latent"`) or of decode(z_fused) and
     frame t (`edge_on="image"`): fights blur from warping.

   The conflict between ``rec`` / ``latent`` (pull alpha down, towards z_cur) and ``temporal``
   (pull towards the previous output) is what sets the learned alpha after the warmup.

Frozen VAE: `requires_grad_(False)`, kept in eval mode across `train()` calls, not in the
optimizer (only `temporal` parameters are), and left out of saved checkpoints unless
`save_vae_in_checkpoint` (a checkpoint records the VAE config, `vae_ckpt` and a digest of its
weights; on load the VAE weights come from `vae_ckpt` again, and a different digest warns).
`vae_ckpt`: a Lightning checkpoint of a WF-VAE run (`net.*` under `state_dict`) or a plain
WF-VAE state_dict; null keeps the random init (a smoke test only, said once).

Optimisation is automatic: the optimizer is built from config over `temporal`'s parameters;
gradient clipping is the trainer's (`trainer.gradient_clip_val`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from temporal.temporal_module import TemporalModule
from wavecast.checkpoints import (
    check_config,
    check_model_kind,
    check_state_dict,
    checkpoint_source,
    config_differences,
    load_checkpoint,
)
from wavecast.config import ConfigError
from wavecast.metrics.dataset import FramePSNR, MaskedL1
from wavecast.warping import carry_forward, masked_l1, resize_flow

log = logging.getLogger(__name__)

TEMPORAL_TARGETS = ("decoded", "input")
# Flow the TemporalModule warps with: the data's (ground truth / OpenCV / RAFT) or its own
# LatentFlowPredictor's (the data's flow then only serves the temporal loss).
FLOW_INPUTS = ("given", "predicted")
TEMPORAL_WARPS = ("splat", "backward")
EDGE_ON = ("latent", "image")


# ----------------------------------------------------------------------------------------------
# Helpers


def tensor_digest(module: nn.Module | dict[str, torch.Tensor]) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes and bytes), in key order."""
    state = module.state_dict() if isinstance(module, nn.Module) else module
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_vae_weights(vae: nn.Module, path: str | Path) -> None:
    """Load WF-VAE weights from a Lightning checkpoint of a WF-VAE run or a plain state_dict.

    ConfigError naming `model.vae_ckpt` and the file on a missing file, another model's
    checkpoint, another WF-VAE config, or keys that do not match.
    """
    obj = load_checkpoint(path, "model.vae_ckpt")
    source = f"model.vae_ckpt: '{path}'"
    if "state_dict" in obj:
        meta = obj.get("wavecast") or {}
        check_model_kind(meta, "wfvae", "a WF-VAE run", source)
        _check_vae_config(
            vae, meta.get("net_config") or {}, f"{source} was trained with another WF-VAE config"
        )
        state = {k[4:]: v for k, v in obj["state_dict"].items() if k.startswith("net.")}
        if not state:
            raise ConfigError(
                f"{source} is a Lightning checkpoint without 'net.*' keys under "
                "state_dict (not a WF-VAE run?)"
            )
    else:
        state = obj
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.vae_ckpt: '{path}' is neither a checkpoint nor a state_dict")
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}  # torch.compile prefix
    check_state_dict(vae.state_dict(), state, source, "model.vae")
    vae.load_state_dict(state)


def _check_vae_config(vae: nn.Module, theirs: Mapping[str, Any], message: str) -> None:
    """Refuse a checkpoint made with another WF-VAE config (``theirs``) than model.vae."""
    ours = dict(getattr(vae, "config", {}) or {})
    diff = config_differences(ours, theirs, ignore=("gradient_checkpointing",))
    check_config(diff, message, "model.vae")


# ----------------------------------------------------------------------------------------------
# The module


class TemporalFusionModule(pl.LightningModule):
    """Trains `temporal` (a TemporalModule) on frame pairs encoded by the frozen `vae`.

    Args:
        vae: the WF-VAE (`wfvae.model.WFVAE`), frozen here.
        temporal: the TemporalModule; channels must equal the VAE's latent_dim.
        optimizer: partial optimizer (params=...) for the TemporalModule's parameters.
        scheduler: optional partial LR scheduler, stepped every optimizer step.
        vae_ckpt: WF-VAE weights (see the module docstring); null = random init (smoke test).
        rec_weight, latent_weight, warp_weight, temporal_weight: loss weights (see above).
        temporal_target: "decoded" | "input". temporal_warp: "splat" | "backward".
        edge_loss: optional module (pred, target) -> weighted loss. edge_on: "latent" | "image".
        flow_resize_mode: `F.interpolate` mode for the image -> latent flow ("area", "bilinear").
        latent_valid_threshold: fraction of valid image pixels for a valid latent pixel.
        save_vae_in_checkpoint: keep the frozen VAE's weights in saved checkpoints.
        final_state_dir: when set, each rank writes `rank<k>_final.json` there at the end of
            fit (alpha, alpha_param, a digest of the TemporalModule's state): a DDP check.
    """

    def __init__(
        self,
        vae: nn.Module,
        temporal: TemporalModule,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        vae_ckpt: str | None = None,
        rec_weight: float = 1.0,
        latent_weight: float = 0.1,
        warp_weight: float = 0.1,
        temporal_weight: float = 0.5,
        temporal_target: str = "decoded",
        temporal_warp: str = "splat",
        edge_loss: nn.Module | None = None,
        edge_on: str = "latent",
        flow_resize_mode: str = "area",
        latent_valid_threshold: float = 0.5,
        save_vae_in_checkpoint: bool = False,
        final_state_dir: str | None = None,
        z_noise: float = 0.0,
        flow_input: str = "given",
    ) -> None:
        super().__init__()
        if flow_input not in FLOW_INPUTS:
            raise ConfigError(f"model.flow_input must be one of {FLOW_INPUTS}, got {flow_input!r}")
        if flow_input == "predicted" and getattr(temporal, "flow_predictor", None) is None:
            raise ConfigError("model.flow_input=predicted needs model.temporal.flow_predictor=true")
        if not z_noise >= 0:
            raise ConfigError(f"model.z_noise must be >= 0, got {z_noise}")
        for name, value, choices in (
            ("temporal_target", temporal_target, TEMPORAL_TARGETS),
            ("temporal_warp", temporal_warp, TEMPORAL_WARPS),
            ("edge_on", edge_on, EDGE_ON),
        ):
            if value not in choices:
                raise ConfigError(f"model.{name} must be one of {choices}, got {value!r}")
        weights = {
            "rec_weight": rec_weight,
            "latent_weight": latent_weight,
            "warp_weight": warp_weight,
            "temporal_weight": temporal_weight,
        }
        for name, w in weights.items():
            if w < 0:
                raise ConfigError(f"model.{name} must be >= 0, got {w}")
        if not 0.0 < latent_valid_threshold <= 1.0:
            raise ConfigError(
                f"model.latent_valid_threshold must be in (0, 1], got {latent_valid_threshold}"
            )
        latent_dim = getattr(vae, "latent_dim", None)
        if latent_dim is not None and temporal.channels != latent_dim:
            raise ConfigError(
                f"model.temporal.channels={temporal.channels} must equal the VAE's latent_dim "
                f"({latent_dim})"
            )
        self.vae = vae
        self.temporal = temporal
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.vae_ckpt = None if vae_ckpt is None else str(vae_ckpt)
        self.rec_weight, self.latent_weight = float(rec_weight), float(latent_weight)
        self.warp_weight, self.temporal_weight = float(warp_weight), float(temporal_weight)
        self.temporal_target, self.temporal_warp = temporal_target, temporal_warp
        self.edge_loss, self.edge_on = edge_loss, edge_on
        self.flow_resize_mode = flow_resize_mode
        self.latent_valid_threshold = float(latent_valid_threshold)
        self.save_vae_in_checkpoint = bool(save_vae_in_checkpoint)
        self.final_state_dir = final_state_dir
        self.z_noise, self.flow_input = float(z_noise), flow_input
        if self.vae_ckpt is not None:
            load_vae_weights(self.vae, self.vae_ckpt)
        else:
            rank_zero_warn(
                "model.vae_ckpt is null: the WF-VAE keeps its random init, so decoded frames and "
                "every image metric are meaningless (smoke test only). Point model.vae_ckpt at "
                "a WF-VAE run's checkpoint for real results."
            )
        self.vae.requires_grad_(False)
        self.vae.eval()
        self._vae_digest: str | None = None
        # Dataset-level val / test metrics (torchmetrics state, reset at each epoch end).
        self.eval_metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {
                        "psnr": FramePSNR(),
                        "psnr_plain": FramePSNR(),
                        "temporal_error": MaskedL1(),
                        "temporal_error_plain": MaskedL1(),
                    }
                )
                for stage in ("val", "test")
            }
        )

    # ------------------------------------------------------------------ frozen VAE
    def train(self, mode: bool = True) -> TemporalFusionModule:
        """Lightning calls train() on every fit / validation switch: the VAE stays in eval."""
        super().train(mode)
        self.vae.eval()
        return self

    @property
    def vae_digest(self) -> str:
        if self._vae_digest is None:  # the VAE never changes: hash it once
            self._vae_digest = tensor_digest(self.vae)
        return self._vae_digest

    def check_data(self, datamodule: pl.LightningDataModule) -> None:
        """Start-up check: frame pairs, sizes divisible by the VAE's 8 x 8 compression."""
        clip = getattr(datamodule, "clip_length", None)
        if clip is not None and clip != 2:
            raise ConfigError(
                f"the temporal model trains on frame pairs (data.clip_length 2), got a data "
                f"module with clip_length={clip}; use data=kitti_flow_pairs"
            )
        size = getattr(datamodule, "frame_size", None)
        if size is not None and any(int(s) % 8 for s in size):
            raise ConfigError(f"data.image_size={list(size)} must be divisible by 8 (WF-VAE 8x8)")

    def compile_networks(self) -> None:
        # In place (nn.Module.compile): `temporal` stays a TemporalModule for AlphaWarmup.
        self.temporal.compile()

    def configure_optimizers(self):
        # No weight decay on the alpha logit and biases: decoupled decay moves a parameter even
        # when its gradient is zero (alpha_param during the warmup) and would pull alpha to 0.5.
        params = [p for p in self.temporal.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim >= 2]},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        opt = self.optimizer_factory(params=[g for g in groups if g["params"]])
        if self.scheduler_factory is None:
            return opt
        sched = {"scheduler": self.scheduler_factory(optimizer=opt), "interval": "step"}
        return [opt], [sched]

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _unpack(
        batch: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        for key in ("frames", "flow"):
            if key not in batch:
                raise KeyError(
                    f"TemporalFusionModule: batch has no '{key}' (keys: {sorted(batch)}); use a "
                    "flow-pair data module (data=kitti_flow_pairs)"
                )
        frames, flow, valid = batch["frames"], batch["flow"], batch.get("flow_valid")
        if frames.ndim != 5 or frames.shape[1:3] != (2, 3):
            raise ValueError(f"batch['frames'] must be [B, 2, 3, H, W], got {tuple(frames.shape)}")
        b, _, _, h, w = frames.shape
        if tuple(flow.shape) != (b, 2, h, w):
            raise ValueError(
                f"batch['flow'] must be [B, 2, H, W] = {(b, 2, h, w)}, got {tuple(flow.shape)}"
            )
        if valid is not None:
            if tuple(valid.shape) != (b, 1, h, w):
                raise ValueError(
                    f"batch['flow_valid'] must be [B, 1, H, W] = {(b, 1, h, w)}, got "
                    f"{tuple(valid.shape)}"
                )
            valid = valid.bool()
        return frames, flow.to(frames.dtype), valid

    @torch.no_grad()
    def encode_pair(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames [B, 2, 3, H, W] -> z_prev, z_cur [B, C, H/8, W/8] (posterior modes)."""
        b = frames.shape[0]
        z = self.vae.encode(frames.flatten(0, 1).unsqueeze(2)).posterior.mode()[:, :, 0]
        z = z.reshape(b, 2, *z.shape[1:])
        return z[:, 0].contiguous(), z[:, 1].contiguous()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, C, h, w] -> frame [B, 3, 8h, 8w] (gradients flow to z, not to the VAE)."""
        return self.vae.decode(z.unsqueeze(2)).video[:, :, 0]

    def latent_flow(
        self, flow: torch.Tensor, valid: torch.Tensor | None, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image flow [B, 2, H, W] (+ valid) -> latent flow [B, 2, h, w] (+ valid [B, 1, h, w])."""
        flow_lat = resize_flow(flow, size, mode=self.flow_resize_mode)
        if valid is None:
            return flow_lat, None
        frac = F.interpolate(valid.to(flow.dtype), size=size, mode="area")
        return flow_lat, frac >= self.latent_valid_threshold

    def perturb(self, z: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """z [B, C, h, w] plus independent Gaussian noise of std `z_noise` x std(z) (or z).

        Simulates per-frame generation, whose latents flicker independently from frame to
        frame; the targets stay the clean frame / latent, so the module learns to lean on the
        warped previous latent where the current one is unreliable. `seed` makes it repeatable
        (evaluation batches).
        """
        if self.z_noise <= 0:
            return z
        gen = None
        if seed is not None:
            gen = torch.Generator(device=z.device).manual_seed(int(seed))
        noise = torch.randn(z.shape, generator=gen, device=z.device, dtype=z.dtype)
        return z + self.z_noise * z.detach().std() * noise

    def fuse(self, batch: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
        """Encode, resize the flow, perturb z_cur (`z_noise`) and fuse; returns everything the
        losses and media need (`z_in` is the perturbed current latent the module saw)."""
        frames, flow, valid = self._unpack(batch)
        z_prev, z_cur = self.encode_pair(frames)
        flow_lat, valid_lat = self.latent_flow(flow, valid, tuple(z_cur.shape[-2:]))
        z_in = self.perturb(z_cur, seed=seed)
        fusion_flow = None if self.flow_input == "predicted" else flow_lat
        z_fused, _, aux = self.temporal(z_prev, z_in, flow=fusion_flow)
        mask_lat = aux["valid_mask"]
        if valid_lat is not None:
            mask_lat = mask_lat * valid_lat.to(mask_lat.dtype)
        return {
            "x_prev": frames[:, 0],
            "x_cur": frames[:, 1],
            "flow": flow,
            "valid": valid,
            "z_prev": z_prev,
            "z_cur": z_cur,
            "z_in": z_in,
            "z_fused": z_fused,
            "aux": aux,
            "mask_lat": mask_lat,
        }

    def _previous_output(self, f: dict[str, Any]) -> torch.Tensor:
        if self.temporal_target == "input":
            return f["x_prev"]
        return self._decoded_prev(f)

    @torch.no_grad()
    def _decoded_prev(self, f: dict[str, Any]) -> torch.Tensor:
        if f.get("x_prev_decoded") is None:  # decoded once per batch
            f["x_prev_decoded"] = self.decode(f["z_prev"])
        return f["x_prev_decoded"]

    def losses(self, f: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted loss terms of a `fuse` result; returns (total, unweighted terms)."""
        aux, z_cur = f["aux"], f["z_cur"]
        z_ref = aux["z_warp_refined"]
        needs_image = (
            self.rec_weight > 0
            or self.temporal_weight > 0
            or (self.edge_loss is not None and self.edge_on == "image")
        )
        x_fused = self.decode(f["z_fused"]) if needs_image else None
        f["x_fused"] = x_fused
        terms: dict[str, torch.Tensor] = {}
        total = f["z_fused"].new_zeros(())
        if self.rec_weight > 0:
            terms["rec"] = (x_fused - f["x_cur"]).abs().mean()
            total = total + self.rec_weight * terms["rec"]
        if self.latent_weight > 0:
            terms["latent"] = (f["z_fused"] - z_cur).abs().mean()
            total = total + self.latent_weight * terms["latent"]
        if self.warp_weight > 0:
            terms["warp"] = masked_l1(z_ref, z_cur, f["mask_lat"])
            total = total + self.warp_weight * terms["warp"]
        if self.temporal_weight > 0:
            carried, defined = carry_forward(
                self._previous_output(f), f["flow"], f["valid"], self.temporal_warp
            )
            terms["temporal"] = masked_l1(x_fused, carried, defined)
            total = total + self.temporal_weight * terms["temporal"]
        if self.edge_loss is not None:
            if self.edge_on == "latent":
                terms["edge"] = self.edge_loss(z_ref, z_cur)
            else:
                terms["edge"] = self.edge_loss(x_fused, f["x_cur"])
            total = total + terms["edge"]  # the edge module carries its own weight
        return total, terms

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        f = self.fuse(batch)
        loss, terms = self.losses(f)
        b = f["z_cur"].shape[0]
        aux = f["aux"]
        logs = {f"train/{k}": v.detach() for k, v in terms.items()}
        logs["train/alpha_used"] = aux["alpha"].detach().float()
        logs["train/alpha_learned"] = torch.sigmoid(self.temporal.alpha_param.detach()).float()
        logs["train/valid_fraction"] = f["mask_lat"].detach().float().mean()
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=b)
        self.log_dict(logs, batch_size=b)
        return loss

    def _eval_step(
        self, batch: dict[str, Any], stage: str, batch_idx: int = 0
    ) -> dict[str, torch.Tensor]:
        f = self.fuse(batch, seed=batch_idx)  # the same perturbation at every evaluation
        loss, terms = self.losses(f)
        x_cur = f["x_cur"]
        x_fused = f["x_fused"] if f["x_fused"] is not None else self.decode(f["z_fused"])
        x_plain = self.decode(f["z_in"])  # baseline: no fusion (the same perturbed latent)
        prev_out = self._decoded_prev(f)
        carried, defined = carry_forward(prev_out, f["flow"], f["valid"], self.temporal_warp)
        m = self.eval_metrics[stage]
        m["psnr"].update(x_fused, x_cur)
        m["psnr_plain"].update(x_plain, x_cur)
        # flicker against the previous decoded frame, motion-compensated: lower = steadier
        m["temporal_error"].update(x_fused, carried, defined)
        m["temporal_error_plain"].update(x_plain, carried, defined)
        metrics = {"loss": loss.detach(), "alpha": f["aux"]["alpha"].detach().float()}
        metrics.update({k: v.detach() for k, v in terms.items()})
        b = x_cur.shape[0]
        self.log_dict(
            {f"{stage}/{k}": v for k, v in metrics.items()},
            prog_bar=False,
            sync_dist=True,
            batch_size=b,
        )
        self.log_dict({f"{stage}/{k}": metric for k, metric in m.items()}, batch_size=b)
        return metrics

    def validation_step(self, batch: dict[str, Any], batch_idx: int):
        return self._eval_step(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int):
        return self._eval_step(batch, "test", batch_idx)

    def media_from_batch(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """decode(z_prev) | decode(z_cur) | decode(z_warp) | decode(z_fused), [B, 3, H, 4W]."""
        f = self.fuse(batch)
        panels = [f["z_prev"], f["z_cur"], f["aux"]["z_warp"], f["z_fused"]]
        images = [self.decode(z).clamp(-1, 1) for z in panels]
        return {"val/prev_cur_warp_fused": torch.cat(images, dim=-1)}

    # ------------------------------------------------------------------ end of fit
    def final_state(self) -> dict[str, Any]:
        """Alpha and a digest of the TemporalModule's state (compared across DDP ranks)."""
        tm = self.temporal
        return {
            "rank": int(self.global_rank),
            "world_size": int(self.trainer.world_size) if self._trainer else 1,
            "global_step": int(self.trainer.global_step) if self._trainer else 0,
            "alpha": float(tm.alpha.detach()),
            "alpha_learned": float(torch.sigmoid(tm.alpha_param.detach())),
            "alpha_param": float(tm.alpha_param.detach()),
            "temporal_digest": tensor_digest(tm),
        }

    def on_fit_end(self) -> None:
        if self.final_state_dir is None:
            return
        out = Path(self.final_state_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"rank{self.global_rank}_final.json"
        path.write_text(json.dumps(self.final_state(), indent=2, sort_keys=True))

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not self.save_vae_in_checkpoint:
            state = checkpoint.get("state_dict", {})
            for k in [k for k in state if k.startswith("vae.")]:
                del state[k]
        checkpoint["wavecast"] = {
            "model": "temporal",
            "vae_config": dict(getattr(self.vae, "config", {}) or {}),
            "vae_ckpt": self.vae_ckpt,
            "vae_digest": self.vae_digest,
            "vae_in_checkpoint": self.save_vae_in_checkpoint,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        source = checkpoint_source(self)
        meta = checkpoint.get("wavecast", {})
        check_model_kind(meta, "temporal", "the temporal model", source)
        _check_vae_config(
            self.vae, meta.get("vae_config") or {}, f"{source} was trained with another WF-VAE"
        )
        state = checkpoint.setdefault("state_dict", {})
        if any(k.startswith("vae.") for k in state):
            self._vae_digest = None  # the checkpoint's VAE weights replace ours
        else:
            # The frozen VAE was left out when saving: take the one built from the config.
            state.update({f"vae.{k}": v for k, v in self.vae.state_dict().items()})
            digest = meta.get("vae_digest")
            if digest is not None and digest != self.vae_digest:
                rank_zero_warn(
                    "the checkpoint's TemporalModule was trained on other WF-VAE weights "
                    f"(model.vae_ckpt then: {meta.get('vae_ckpt')!r}, now: {self.vae_ckpt!r})"
                )


__all__ = [
    "TemporalFusionModule",
    "carry_forward",
    "load_vae_weights",
    "masked_l1",
    "tensor_digest",
]
