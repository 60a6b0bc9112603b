"""WF-VAE training objective: reconstruction + LPIPS + KL + wavelet (+ 3D PatchGAN).

Generator objective of the reference (``LPIPSWithDiscriminator3D``), per clip of ``N = C*T*H*W``
pixel elements, written with per-element means (``rec``, ``perceptual`` are means over all
elements / frames of the batch):

    nll     = (rec + perceptual_weight * perceptual) / exp(logvar) + logvar      (per element)
    KL      = sum over latent elements of KL(q || N(0, I)), averaged over the batch (per clip)
    WL      = sum |w2 - w2_hat| + sum |w3 - w3_hat|, averaged over the batch          (per clip)
    total_sum  = N * nll + kl_weight * KL + wavelet_weight * WL + d_weight * disc_factor * g_gan

``reduction="sum"`` returns ``total_sum``: the reference's own scale (1e4-1e5 are normal).
``reduction="mean"`` (default) returns ``total_sum / N``: the same objective, same balance between
the terms (every weight keeps its published meaning), on a per-element scale (O(1)). The
adaptive GAN weight is computed from the returned scale's ``nll``, so it too is divided by
``N`` and the GAN term stays in proportion; its clamp is ``d_weight_max`` (default 1e4 for
"mean", the reference's 1e6 for "sum").

Logged values (all float tensors, detached) are per-element means whatever the reduction:
``rec``, ``perceptual``, ``nll``, ``kl`` (mean over latent elements), ``wavelet`` (mean |w2 -
w2_hat| + mean |w3 - w3_hat|), ``g_gan`` (= -mean logits of the fakes), ``d_weight``,
``disc_factor``, ``logvar``; ``total`` is the returned loss. The discriminator step logs
``d_loss``, ``logits_real``, ``logits_fake``, ``disc_factor``.

Differences from the reference, on purpose: the discriminator is not run at all before
``disc_start`` (the reference runs it and throws the result away); its parameters are frozen
while the generator loss runs through it (they receive no gradient from the generator step);
the losses are formed in float32 under autocast; LPIPS is deterministic (no dropout).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wfvae.lpips import build_perceptual_loss

log = logging.getLogger(__name__)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """``0.5 * (mean relu(1 - real) + mean relu(1 + fake))``."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """``0.5 * (mean softplus(-real) + mean softplus(fake))`` (non-saturating BCE)."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


_D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


@contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Run ``module`` without building gradients for its parameters (inputs still get them)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class WFVAELoss(nn.Module):
    """Losses of WF-VAE; ``generator_loss`` and ``discriminator_loss`` (see module docstring).

    Args:
        rec_loss: "l1" or "l2" per-pixel reconstruction loss.
        perceptual_weight: weight of per-frame LPIPS; 0 switches it off.
        lpips_weights: local LPIPS weights: a folder with the backbone and head files, or
            ``{backbone: file, lin: file}``; None -> ``$WAVECAST_WEIGHTS_DIR`` or off (said once).
        lpips_net: "vgg" (reference) or "alex".
        kl_weight, wavelet_weight: weights of the KL and wavelet terms (reference 1e-6, 0.1).
        logvar_init, learn_logvar: the (fixed by default) output log-variance.
        disc: the discriminator (e.g. :class:`wfvae.discriminator.PatchDiscriminator3D`) or None
            for no GAN at all.
        disc_weight: factor on the adaptive GAN weight (reference 0.5).
        disc_start: generator step from which the GAN term and discriminator loss are on.
        disc_loss: "hinge" or "vanilla".
        disc_factor: GAN factor once on.
        reduction: "mean" (per-element scale) or "sum" (reference scale).
        d_weight_max: clamp of the adaptive weight (None: 1e4 for "mean", 1e6 for "sum").
    """

    def __init__(
        self,
        rec_loss: str = "l1",
        perceptual_weight: float = 1.0,
        lpips_weights: Any = None,
        lpips_net: str = "vgg",
        kl_weight: float = 1e-6,
        wavelet_weight: float = 0.1,
        logvar_init: float = 0.0,
        learn_logvar: bool = False,
        disc: nn.Module | None = None,
        disc_weight: float = 0.5,
        disc_start: int = 5000,
        disc_loss: str = "hinge",
        disc_factor: float = 1.0,
        reduction: str = "mean",
        d_weight_max: float | None = None,
    ) -> None:
        super().__init__()
        if rec_loss not in ("l1", "l2"):
            raise ValueError(f"rec_loss must be 'l1' or 'l2', got {rec_loss!r}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if disc_loss not in _D_LOSSES:
            raise ValueError(f"disc_loss must be one of {sorted(_D_LOSSES)}, got {disc_loss!r}")
        self.rec_loss = rec_loss
        self.perceptual_weight = float(perceptual_weight)
        self.perceptual = (
            build_perceptual_loss(lpips_weights, lpips_net) if self.perceptual_weight > 0 else None
        )
        self.kl_weight = float(kl_weight)
        self.wavelet_weight = float(wavelet_weight)
        self.logvar = nn.Parameter(torch.full((), float(logvar_init)), requires_grad=learn_logvar)
        self.disc = disc
        self.disc_weight = float(disc_weight)
        self.disc_start = int(disc_start)
        self.disc_loss_name = disc_loss
        self.disc_factor = float(disc_factor)
        self.reduction = reduction
        self.d_weight_max = (
            float(d_weight_max)
            if d_weight_max is not None
            else (1e4 if reduction == "mean" else 1e6)
        )
        self._noted: set[str] = set()

    # ------------------------------------------------------------------ helpers
    def _note_once(self, key: str, message: str, level: int = logging.INFO) -> None:
        if key not in self._noted:
            self._noted.add(key)
            log.log(level, message)

    def factor_at(self, global_step: int) -> float:
        """GAN factor at this generator step: 0 before ``disc_start``, ``disc_factor`` after."""
        return self.disc_factor if global_step >= self.disc_start else 0.0

    def _gan_active(self, global_step: int) -> bool:
        return self.disc is not None and self.factor_at(global_step) > 0

    def adaptive_weight(
        self, nll: Tensor, g_loss: Tensor, last_layer: nn.Parameter | None
    ) -> Tensor:
        """``disc_weight * clamp(||d nll / d W|| / (||d g / d W|| + 1e-6), 0, d_weight_max)`` at the
        decoder's last layer W, detached; 0 (with a once-only note) when it cannot be computed."""
        zero = torch.zeros((), device=nll.device)
        if not (
            self.training and torch.is_grad_enabled() and nll.requires_grad and g_loss.requires_grad
        ):
            self._note_once(
                "no-grad",
                "WFVAELoss: adaptive GAN weight needs a training-mode call with gradients; "
                "it is 0 here (e.g. validation)",
            )
            return zero
        if last_layer is None:
            self._note_once(
                "no-last-layer",
                "WFVAELoss: no last_layer given, the GAN term has weight 0 (pass "
                "net.get_last_layer() to generator_loss to train with the GAN)",
                logging.WARNING,
            )
            return zero
        try:
            g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
            g_gan = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        except RuntimeError as e:
            raise ValueError(
                f"WFVAELoss: last_layer {tuple(last_layer.shape)} is not in the graph of the "
                f"reconstruction and GAN losses (pass net.get_last_layer()): {e}"
            ) from e
        w = g_nll.float().norm() / (g_gan.float().norm() + 1e-6)
        return w.clamp(0.0, self.d_weight_max).detach() * self.disc_weight

    @staticmethod
    def _check(x: Tensor, recon: Tensor) -> None:
        if x.dim() != 5 or recon.shape != x.shape:
            raise ValueError(
                f"WFVAELoss expects input and reconstruction [B, C, T, H, W] of one shape, got "
                f"{tuple(x.shape)} and {tuple(recon.shape)}"
            )

    def _wavelet(self, out: Any) -> tuple[Tensor, Tensor] | None:
        """(mean form, per-clip sum form) of the wavelet L1, or None when a level is missing."""
        pairs = [(getattr(out, "w2", None), getattr(out, "w2_hat", None)),
                 (getattr(out, "w3", None), getattr(out, "w3_hat", None))]  # fmt: skip
        if any(v is None for pair in pairs for v in pair):
            return None
        mean_form, sum_form = 0.0, 0.0
        for a, b in pairs:
            if a.shape != b.shape:
                raise ValueError(
                    f"WFVAELoss: wavelet coefficients differ in shape: {tuple(a.shape)} vs "
                    f"{tuple(b.shape)}"
                )
            err = (a.float() - b.float()).abs()
            mean_form = mean_form + err.mean()
            sum_form = sum_form + err.sum() / a.shape[0]
        return mean_form, sum_form

    # ------------------------------------------------------------------ losses
    def generator_loss(
        self,
        x: Tensor,
        out: Any,
        global_step: int,
        last_layer: nn.Parameter | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Generator (VAE) loss.

        Args:
            x: input video ``[B, 3, T, H, W]`` in [-1, 1].
            out: model output with ``recon`` (like ``x``), ``posterior`` (``kl()`` -> ``[B]``,
                ``kl_mean()``) and optionally ``w2, w3, w2_hat, w3_hat`` (None in chunked mode:
                the wavelet term is then 0).
            global_step: generator step (decides whether the GAN term is on).
            last_layer: the decoder's last weight, for the adaptive GAN weight.

        Returns ``(loss, logs)``; see the module docstring for scales.
        """
        recon = out.recon
        self._check(x, recon)
        xf, rf = x.float(), recon.float()
        n_elem = xf[0].numel()
        scale = 1.0 if self.reduction == "mean" else float(n_elem)
        zero = torch.zeros((), device=xf.device)

        err = (xf - rf).abs() if self.rec_loss == "l1" else (xf - rf).pow(2)
        rec = err.mean()
        if self.perceptual is not None:
            perceptual = self.perceptual(xf, rf).float().mean()  # per-frame LPIPS, [B*T] -> mean
        else:
            perceptual = zero
        logvar = self.logvar.float()
        nll = (rec + self.perceptual_weight * perceptual) / torch.exp(logvar) + logvar
        nll_obj = nll * scale

        post = out.posterior
        kl_clip = post.kl().float().mean()
        wl = self._wavelet(out)
        wl_mean, wl_clip = wl if wl is not None else (zero, zero)

        total = nll_obj + (self.kl_weight * kl_clip + self.wavelet_weight * wl_clip) * (
            scale / n_elem
        )

        factor = self.factor_at(global_step)
        g_gan, d_weight = zero, zero
        if self._gan_active(global_step):
            with _frozen(self.disc):
                logits_fake = self.disc(recon)
            g_gan = -logits_fake.float().mean()
            d_weight = self.adaptive_weight(nll_obj, g_gan, last_layer)
            total = total + d_weight * factor * g_gan

        logs = {
            "rec": rec.detach(),
            "perceptual": perceptual.detach(),
            "nll": nll.detach(),
            "kl": post.kl_mean().detach().float(),
            "wavelet": wl_mean.detach(),
            "g_gan": g_gan.detach(),
            "d_weight": d_weight.detach(),
            "disc_factor": torch.tensor(factor, device=xf.device),
            "logvar": logvar.detach(),
            "total": total.detach(),
        }
        return total, logs

    def discriminator_loss(
        self, x: Tensor, recon: Tensor, global_step: int
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Discriminator loss on real ``x`` and (detached) ``recon``, times the GAN factor.

        Real and fake clips go through the discriminator in separate calls, as in the reference
        (with BatchNorm, one joint batch would mix their statistics).
        """
        if self.disc is None:
            raise RuntimeError(
                "WFVAELoss.discriminator_loss: no discriminator configured (disc=None)"
            )
        self._check(x, recon)
        factor = self.factor_at(global_step)
        logits_real = self.disc(x.detach()).float()
        logits_fake = self.disc(recon.detach()).float()
        d_loss = factor * _D_LOSSES[self.disc_loss_name](logits_real, logits_fake)
        logs = {
            "d_loss": d_loss.detach(),
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
            "disc_factor": torch.tensor(factor, device=x.device),
        }
        return d_loss, logs
