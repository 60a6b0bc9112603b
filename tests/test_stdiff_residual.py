"""STDiff's residual option: the diffusion variable is the change from the previous frame.
Checked against answers computed here: the training target of a sample-predicting model, and
a UNet that predicts "no change" forecasting exactly the last observed frame."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from stdiff import STDiff, STDiffPipeline, stdiff_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IDX_O = torch.tensor([0.0, 1.0, 2.0])
IDX_P = torch.tensor([3.0, 4.0, 5.0])
SAMPLE_SCHEDULE = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "clip_sample": True,
    "prediction_type": "sample",
}


def residual_model(**overrides) -> STDiff:
    torch.manual_seed(0)
    cfg = stdiff_config("tiny", residual=True, scheduler_config=SAMPLE_SCHEDULE, **overrides)
    return STDiff(**cfg).eval()


def clip(n: int = 2, t: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, t, 1, 16, 32, generator=g) * 2 - 1


def test_published_default_is_not_residual():
    assert STDiff(**stdiff_config("tiny")).residual is False


def test_training_target_is_the_scaled_change_from_the_teacher_forced_previous_frame():
    model = residual_model()
    scheduler = DDPMScheduler(**{k: v for k, v in SAMPLE_SCHEDULE.items() if k[0] != "_"})
    x = clip()
    vo, vp = x[:, :3], x[:, 3:]
    _, out = model.training_loss(vo, vp, IDX_O, IDX_P, scheduler, generator=torch.Generator())
    previous = torch.cat([vo[:, -1:], vp[:, :-1]], dim=1)  # last observed, then teacher forcing
    want = ((vp - previous) / 2.0).flatten(0, 1)
    torch.testing.assert_close(out["target"], want)


def test_a_no_change_prediction_forecasts_the_last_observed_frame(monkeypatch):
    model = residual_model()
    # x0 = 0 (no change) at every step, whatever the input.
    monkeypatch.setattr(model, "denoise", lambda noisy, t, m, cond: torch.zeros_like(noisy))
    vo = clip()[:, :3]
    for sampler in ("ddim", "ddpm"):
        out = STDiffPipeline(model)(
            vo,
            IDX_O,
            IDX_P,
            num_inference_steps=5,
            num_samples=2,
            generator=torch.Generator().manual_seed(0),
            scheduler_type=sampler,
        )["frames"]
        want = vo[:, -1:].expand(-1, 3, -1, -1, -1).unsqueeze(0).expand(2, -1, -1, -1, -1, -1)
        torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


def test_residual_needs_the_autoregressive_model():
    with pytest.raises(ValueError, match="autoregressive"):
        STDiff(
            **stdiff_config(
                "tiny",
                residual=True,
                autoregressive=False,
                concat_observed=True,
                unet={"in_channels": 4},
            )
        )
