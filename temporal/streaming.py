"""Frame-by-frame (streaming) fusion, as at generation time, and its temporal-consistency metrics.

A per-frame generator produces one latent per frame, each with its own independent error. The
TemporalModule runs online: frame t's latent is fused with the *fused* latent of frame t-1 warped
by the flow t-1 -> t, and the fused latent is what gets decoded and carried on:

    z_fused[0] = z[0];  z_fused[t] = temporal(z_fused[t-1], z[t], flow[t-1 -> t])

`encode_frames` gives the clean per-frame latents, `perturb_latents` simulates the per-frame
errors (independent Gaussian noise), `stream_decode` runs the recursion and decodes, and
`warping_error` is the occlusion-masked mean |O_t - warp(O_{t-1})| of Lai et al. 2018 ("Learning
Blind Video Temporal Consistency"; they square the error, we use L1 as the results table asks),
with the ground-truth flow and its occlusion mask.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wavecast.warping import carry_forward, masked_l1


@torch.no_grad()
def encode_frames(vae: nn.Module, frames: Tensor) -> Tensor:
    """frames [T, 3, H, W] in [-1, 1] -> per-frame latents [T, C, H/8, W/8] (posterior modes).

    Each frame is encoded as a one-frame clip (what a per-frame generator's latents are).
    """
    return vae.encode(frames.unsqueeze(2)).posterior.mode()[:, :, 0]


def perturb_latents(z: Tensor, sigma: float, latent_std: float, seed: int = 0) -> Tensor:
    """z [T, C, h, w] + independent per-frame Gaussian noise of std `sigma` x `latent_std`."""
    if sigma <= 0:
        return z
    gen = torch.Generator(device=z.device).manual_seed(int(seed))
    noise = torch.randn(z.shape, generator=gen, device=z.device, dtype=z.dtype)
    return z + sigma * latent_std * noise


@torch.no_grad()
def stream_decode(
    vae: nn.Module,
    z: Tensor,
    temporal: nn.Module | None = None,
    flows: Tensor | None = None,
) -> Tensor:
    """Decode per-frame latents z [T, C, h, w] -> frames [T, 3, 8h, 8w], fusing online.

    Args:
        vae: the WF-VAE (its `decode` takes [B, C, t, h, w]).
        z: the per-frame latents, in order.
        temporal: a `TemporalModule` (None: the VAE alone, every frame decoded as it is).
        flows: [T-1, 2, h, w] latent-grid flows t-1 -> t (None: the module's flow predictor, or
            the identity warp).
    """
    if temporal is None:
        fused = z
    else:
        out = [z[:1]]
        for t in range(1, z.shape[0]):
            flow = None if flows is None else flows[t - 1 : t]
            z_t, _, _ = temporal(out[-1], z[t : t + 1], flow=flow)
            out.append(z_t)
        fused = torch.cat(out)
    return vae.decode(fused.unsqueeze(2)).video[:, :, 0]


def warping_error(frames: Tensor, flows: Tensor, valid: Tensor | None) -> Tensor:
    """Mean over t >= 1 of the occlusion-masked mean |O_t - carry(O_{t-1})|, on [0, 1] images.

    O_{t-1} is carried to t by forward splatting along the flow (read at the source pixel, exact
    for a one-to-one flow); pixels the flow leaves undefined or marks occluded are left out.

    Args:
        frames: [T, 3, H, W] in [-1, 1].
        flows: [T-1, 2, H, W] image flows t-1 -> t (ground truth).
        valid: [T-1, 1, H, W] bool, where the flow is defined and not occluded (or None).
    """
    errs = []
    unit = (frames.float() + 1.0) / 2.0
    for t in range(1, unit.shape[0]):
        v = None if valid is None else valid[t - 1 : t]
        carried, defined = carry_forward(unit[t - 1 : t], flows[t - 1 : t].float(), v, "splat")
        errs.append(masked_l1(unit[t : t + 1], carried, defined))
    return torch.stack(errs).mean()
