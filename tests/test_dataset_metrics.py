"""Dataset-level metrics (torchmetrics state): the value over unequal batches (and over ranks,
merged as DDP syncs them) is the closed form over every frame, not a mean of batch means; the
per-frame conventions are those of the previous per-batch functions."""

from __future__ import annotations

import math

import pytest
import torch

from wavecast.metrics.dataset import (
    FramePSNR,
    FrameSSIM,
    MaskedL1,
    MeanOf,
    RangeL1,
    TemporalFlicker,
)
from wavecast.metrics.flicker import temporal_flicker
from wavecast.metrics.image import psnr, ssim
from wavecast.metrics.range import range_l1
from wavecast.warping import masked_l1

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _offset_clips(deltas: list[list[float]], size=(3, 4, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips [B, 3, T, H, W]: target 0, prediction target + delta[b][t] (values in [-1, 1])."""
    c, h, w = size
    d = torch.tensor(deltas, dtype=torch.float32)  # [B, T]
    target = torch.zeros(d.shape[0], c, d.shape[1], h, w)
    pred = target + d[:, None, :, None, None]
    return pred, target


def test_psnr_over_unequal_batches_is_the_mean_over_all_frames() -> None:
    # Batches of 1, 3 and 2 clips of 2 frames; per-frame offsets chosen so the batch means differ.
    batches = [[[0.2, 0.2]], [[0.02, 0.04], [0.01, 0.5], [0.3, 0.1]], [[0.05, 0.05], [0.6, 0.6]]]
    metric = FramePSNR()
    for deltas in batches:
        metric.update(*_offset_clips(deltas))
    # Closed form: in [0, 1] units an offset d in [-1, 1] is d / 2, MSE (d / 2)^2 over the frame.
    frames = [d for batch in batches for clip in batch for d in clip]
    want = sum(10 * math.log10(1 / (d / 2) ** 2) for d in frames) / len(frames)
    assert metric.compute().item() == pytest.approx(want, rel=1e-5)
    batch_means = [
        sum(10 * math.log10(1 / (d / 2) ** 2) for clip in b for d in clip) / (2 * len(b))
        for b in batches
    ]
    assert abs(sum(batch_means) / len(batch_means) - want) > 0.5  # what a mean of means gives


def test_ranks_merged_as_ddp_syncs_them_give_the_same_value() -> None:
    torch.manual_seed(0)
    x = torch.rand(5, 3, 3, 16, 16) * 2 - 1
    y = (x + 0.2 * torch.randn_like(x)).clamp(-1, 1)
    for cls, reference in ((FramePSNR, psnr), (FrameSSIM, ssim)):
        rank0, rank1 = cls(), cls()
        rank0.update(y[:1], x[:1])  # unequal shares, as DDP's last batches
        rank1.update(y[1:3], x[1:3])
        rank1.update(y[3:], x[3:])
        rank0.merge_state(rank1)  # the reduction DDP's sync applies ("cat" / "sum")
        want = reference(y, x).mean().item()
        assert rank0.compute().item() == pytest.approx(want, rel=1e-5, abs=1e-6), cls.__name__


def test_values_match_the_previous_per_batch_functions() -> None:
    torch.manual_seed(1)
    x = torch.rand(2, 3, 5, 20, 24) * 2 - 1
    y = (x + 0.1 * torch.randn_like(x)).clamp(-1.1, 1.1)
    for metric, previous in (
        (FramePSNR(), psnr(y, x).mean()),
        (FrameSSIM(), ssim(y, x).mean()),
        (TemporalFlicker(), temporal_flicker(y, x).mean()),
    ):
        metric.update(y, x)
        torch.testing.assert_close(metric.compute(), previous.float(), rtol=1e-5, atol=1e-6)
    # STDiff's layout [B, T, C, H, W]
    m = FramePSNR(layout="btchw")
    m.update(y.transpose(1, 2), x.transpose(1, 2))
    torch.testing.assert_close(m.compute(), psnr(y, x).mean(), rtol=1e-5, atol=1e-6)


def test_identical_frames_are_capped_as_before() -> None:
    x = torch.rand(1, 3, 2, 8, 8)
    m = FramePSNR()
    m.update(x, x)
    assert m.compute().item() == pytest.approx(psnr(x, x).mean().item()) == pytest.approx(100.0)


def test_masked_l1_pools_the_valid_pixels_of_every_batch() -> None:
    torch.manual_seed(2)
    a, b = torch.rand(3, 3, 6, 6), torch.rand(3, 3, 6, 6)
    mask = torch.rand(3, 1, 6, 6) > 0.4
    metric = MaskedL1()
    metric.update(a[:1], b[:1], mask[:1])
    metric.update(a[1:], b[1:], mask[1:])
    err = (a - b).abs().mean(dim=1, keepdim=True)
    want = err[mask].sum() / mask.sum()  # closed form over all valid pixels
    torch.testing.assert_close(metric.compute(), want)
    torch.testing.assert_close(want, masked_l1(a, b, mask))  # the per-batch function, one batch


def test_range_l1_over_batches_equals_the_pooled_value() -> None:
    torch.manual_seed(3)
    gt = torch.rand(4, 2, 8, 16) * 50
    gt[gt < 10] = -1.0  # empty cells
    pred = gt + torch.randn_like(gt)
    metric = RangeL1()
    metric.update(pred[:3], gt[:3])
    metric.update(pred[3:], gt[3:])
    want = range_l1(pred, gt, dims=(0, 1, 2, 3))
    torch.testing.assert_close(metric.compute(), want.float())


def test_mean_of_weighted_values_and_nothing_seen() -> None:
    m = MeanOf()
    assert math.isnan(m.compute().item())
    m.update(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 3.0]))
    m.update(torch.tensor([2.0]))
    assert m.compute().item() == pytest.approx((1 + 9 + 2) / 5)


def test_wfvae_validation_over_unequal_batches_logs_the_dataset_value() -> None:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from tests.conftest import compose  # noqa: F401 - registers the resolvers
    from wfvae.losses import WFVAELoss
    from wfvae.model import WFVAE
    from wfvae.module import WFVAEModule

    torch.manual_seed(0)
    net = WFVAE(latent_dim=4, base_channels=8, encoder_energy_flow_hidden_size=8,
                decoder_energy_flow_hidden_size=8, encoder_num_resblocks=1,
                decoder_num_resblocks=1)  # fmt: skip
    module = WFVAEModule(
        net=net,
        loss=WFVAELoss(perceptual_weight=0.0),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
        metric_lpips_weights=None,
    )
    clips = [{"video": torch.rand(3, 5, 16, 16) * 2 - 1} for _ in range(3)]
    loader = DataLoader(clips, batch_size=2)  # batches of 2 and 1 clips
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    (logged,) = trainer.validate(module, dataloaders=loader, verbose=False)
    x = torch.stack([c["video"] for c in clips])
    with torch.no_grad():
        recon = module.net(x, sample_posterior=False).recon
    assert logged["val/psnr"] == pytest.approx(psnr(recon, x).mean().item(), rel=1e-5)
    assert logged["val/ssim"] == pytest.approx(ssim(recon, x).mean().item(), rel=1e-5)
    # a second validation starts from zero (reset at the epoch end)
    (again,) = trainer.validate(module, dataloaders=loader, verbose=False)
    assert again["val/psnr"] == pytest.approx(logged["val/psnr"], rel=1e-6)
