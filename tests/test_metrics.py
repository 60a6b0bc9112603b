"""Shared metrics against closed forms and independent formulations (scipy)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import jensenshannon
from torch import nn

from wavecast.metrics import weights as W
from wavecast.metrics.backbones import build_backbone
from wavecast.metrics.flicker import brightness_flicker, temporal_flicker
from wavecast.metrics.fvd import FVD, FeatureStats, frechet_distance, preprocess_i3d
from wavecast.metrics.image import psnr, ssim
from wavecast.metrics.lpips import LPIPS
from wavecast.metrics.range import bev_histogram, bev_jsd, bev_mmd, chamfer_distance, range_l1


@pytest.fixture(autouse=True)
def _no_weights_env(monkeypatch):
    monkeypatch.delenv(W.WEIGHTS_ENV, raising=False)
    W.reset_notices()
    yield
    W.reset_notices()


def write_lpips_files(folder: Path, net: str, seed: int = 0) -> W.LPIPSWeights:
    """Random weights written in the real formats: a torchvision full-model file (features +
    classifier keys) and an lpips-package head file. Test infrastructure only."""
    torch.manual_seed(seed)
    backbone = build_backbone(net)
    sd = {f"features.{k}": v for k, v in backbone.torchvision_state_dict().items()}
    sd["classifier.1.weight"] = torch.zeros(4, 4)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / W.BACKBONE_FILES[net][0])
    lin = {
        f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(backbone.channels)
    }
    torch.save(lin, folder / W.LIN_FILES[net][0])
    return W.LPIPSWeights(net, folder / W.BACKBONE_FILES[net][0], folder / W.LIN_FILES[net][0])


# ---------------------------------------------------------------------------------- PSNR / SSIM
def test_psnr_known_mse_per_frame():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 4, 8, 8) - 0.5  # [-0.5, 0.5] in model units: no clamping below
    offsets = torch.tensor([0.02, 0.1, 0.2, 0.4])  # model units ([-1, 1]); half in [0, 1]
    y = x + offsets.view(1, 1, 4, 1, 1)
    got = psnr(y, x)
    expected = 10 * torch.log10(1 / (offsets / 2) ** 2)
    assert got.shape == (2, 4)
    torch.testing.assert_close(got, expected.expand(2, 4), atol=1e-4, rtol=0)
    assert psnr(x, x).eq(100.0).all()
    # layout [B, T, C, H, W] gives the same numbers
    torch.testing.assert_close(psnr(y.transpose(1, 2), x.transpose(1, 2), layout="btchw"), got)
    # value_range [0, 1]: offsets are already in unit scale
    torch.testing.assert_close(
        psnr(x[:, :, :1] / 2 + 0.5 + offsets[0], x[:, :, :1] / 2 + 0.5, value_range=(0.0, 1.0)),
        (10 * torch.log10(1 / offsets[0] ** 2)).expand(2, 1),
        atol=1e-4,
        rtol=0,
    )


def _ssim_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of [C, H, W] images in [0, 1], Gaussian 11x11 sigma 1.5, valid region."""
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for ca, cb in zip(a, b):

        def blur(z):
            # truncate = 5 / 1.5 gives radius 5: the 11-tap window; crop the 5-pixel border.
            return gaussian_filter(z, sigma=1.5, truncate=5 / 1.5, mode="constant")[5:-5, 5:-5]

        mu_a, mu_b = blur(ca), blur(cb)
        s_aa = blur(ca * ca) - mu_a**2
        s_bb = blur(cb * cb) - mu_b**2
        s_ab = blur(ca * cb) - mu_a * mu_b
        m = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / (
            (mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2)
        )
        vals.append(m.mean())
    return float(np.mean(vals))


def test_ssim_matches_scipy_formulation_and_identity():
    rng = np.random.default_rng(0)
    a = rng.random((2, 3, 3, 24, 20))
    b = np.clip(a + 0.15 * rng.standard_normal(a.shape), 0, 1)
    got = ssim(torch.tensor(b), torch.tensor(a), value_range=(0.0, 1.0))
    assert got.shape == (2, 3)
    for i in range(2):
        for t in range(3):
            assert got[i, t].item() == pytest.approx(_ssim_scipy(b[i, :, t], a[i, :, t]), abs=1e-6)
    x = torch.rand(1, 3, 2, 16, 16) * 2 - 1
    torch.testing.assert_close(ssim(x, x), torch.ones(1, 2), atol=1e-6, rtol=0)
    assert got.max() < 1


def test_ssim_constant_images_closed_form():
    # Constant frames: variances and covariance vanish -> (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 0.3, 0.7
    x = torch.full((1, 1, 12, 12), a)
    y = torch.full((1, 1, 12, 12), b)
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(x, y, value_range=(0.0, 1.0)).item() == pytest.approx(expected, abs=1e-6)


def test_image_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(torch.zeros(1, 3, 2, 8, 8), torch.zeros(1, 3, 2, 8, 9))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 2, 8, 8), torch.zeros(1, 3, 2, 8, 8))
    with pytest.raises(ValueError, match="layout"):
        psnr(torch.zeros(1, 3, 2, 8, 8), torch.zeros(1, 3, 2, 8, 8), layout="tbchw")


# ---------------------------------------------------------------------------------- flicker
def test_flicker_alternating_brightness_closed_form():
    torch.manual_seed(0)
    frame = torch.rand(2, 3, 1, 8, 8) - 0.5
    x = frame.expand(-1, -1, 6, -1, -1)  # static video
    a = 0.2  # model units; the change between frames is 2a = 0.2 in [0, 1] units
    sign = torch.tensor([(-1.0) ** t for t in range(6)]).view(1, 1, 6, 1, 1)
    y = x + a * sign
    got = temporal_flicker(y, x)
    assert got.shape == (2, 5)
    torch.testing.assert_close(got, torch.full((2, 5), a), atol=1e-6, rtol=0)
    torch.testing.assert_close(brightness_flicker(y, x), torch.full((2, 5), a), atol=1e-6, rtol=0)
    # A constant offset and an exact copy of a moving video do not flicker.
    moving = torch.rand(1, 3, 5, 8, 8) - 0.5
    assert temporal_flicker(moving + 0.3, moving).abs().max() < 1e-6
    assert temporal_flicker(moving, moving).abs().max() == 0
    with pytest.raises(ValueError, match="at least 2 frames"):
        temporal_flicker(x[:, :, :1], x[:, :, :1])


# ---------------------------------------------------------------------------------- FVD
def test_frechet_distance_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.5])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-10)
    # Equal (full) covariances: only the means count.
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 5))
    sig = a @ a.T + 0.1 * np.eye(5)
    got = frechet_distance(torch.zeros(5), torch.tensor(sig), torch.ones(5), torch.tensor(sig))
    assert got == pytest.approx(5.0, abs=1e-6)
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(mu1, np.eye(3), mu2[:2], np.eye(2))


def test_feature_stats_streaming_equals_numpy():
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((23, 4)) * [1, 2, 3, 4] + [10, 0, -5, 1]
    stats = FeatureStats()
    for chunk in np.array_split(feats, 4):
        stats.update(torch.tensor(chunk))
    mu, cov = stats.mean_cov()
    np.testing.assert_allclose(mu, feats.mean(0), atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(feats, rowvar=False), atol=1e-10)


def test_fvd_accumulates_over_the_dataset():
    torch.manual_seed(0)

    def extractor(v):  # per-channel, per-frame means: a fixed, simple "feature network"
        return v.mean(dim=(3, 4)).flatten(1)

    real = torch.rand(12, 3, 4, 8, 8)
    fake = (real + 0.3 * torch.randn_like(real)).clamp(0, 1)
    fvd = FVD(extractor, preprocess=None, batch_size=5)
    for i in range(0, 12, 4):  # dataset-level: three batches, one statistic
        fvd.update(real[i : i + 4], fake[i : i + 4])
    fr, ff = extractor(real).double().numpy(), extractor(fake).double().numpy()
    expected = frechet_distance(
        fr.mean(0), np.cov(fr, rowvar=False), ff.mean(0), np.cov(ff, rowvar=False)
    )
    assert fvd.compute() == pytest.approx(expected, rel=1e-6)
    same = FVD(extractor, preprocess=None)
    same.update(real, real)
    assert abs(same.compute()) < 1e-6


def test_i3d_preprocess_resize_crop_and_range():
    v = torch.full((1, 1, 10, 32, 64), 0.5)  # value 0.5 in [-1, 1] units, non-square, grey
    out = preprocess_i3d(v)
    assert out.shape == (1, 3, 10, 224, 224)
    torch.testing.assert_close(out, torch.full_like(out, 0.5))
    with pytest.raises(ValueError, match="at least 10 frames"):
        preprocess_i3d(torch.zeros(1, 3, 9, 32, 32))


class _FakeI3D(nn.Module):
    def forward(
        self,
        x: torch.Tensor,
        rescale: bool = True,
        resize: bool = True,
        return_features: bool = False,
    ) -> torch.Tensor:
        assert not rescale and not resize and return_features
        return torch.cat([x.mean(dim=(2, 3, 4)), x.amin(dim=(2, 3, 4))[:, :1]], dim=1)


def test_fvd_from_local_torchscript_and_missing(tmp_path, caplog):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(_FakeI3D()).save(str(path))
    fvd = FVD.from_local(path)
    torch.manual_seed(0)
    real = torch.rand(3, 3, 10, 16, 16) * 2 - 1
    fvd.update(real, -real)
    assert fvd.real.n == 3 and fvd.real.sum.shape == (4,)
    assert math.isfinite(fvd.compute()) and fvd.compute() > 0

    with pytest.raises(W.WeightsError, match="nope.pt"):
        FVD.from_local(tmp_path / "nope.pt")
    with pytest.raises(W.WeightsError, match="i3d_torchscript.pt"):
        FVD.from_local(None)
    with caplog.at_level(logging.WARNING):
        assert FVD.from_local_or_none(None) is None
        assert FVD.from_local_or_none(None) is None
    notices = [r for r in caplog.records if "FVD disabled" in r.getMessage()]
    assert len(notices) == 1  # said once (from_local above already counted as the first)


def test_fvd_found_through_weights_dir(tmp_path, monkeypatch):
    torch.jit.script(_FakeI3D()).save(str(tmp_path / "i3d_torchscript.pt"))
    monkeypatch.setenv(W.WEIGHTS_ENV, str(tmp_path))
    assert W.resolve_i3d_weights() == tmp_path / "i3d_torchscript.pt"
    assert FVD.from_local_or_none() is not None


# ---------------------------------------------------------------------------------- backbones
# torchvision's layouts (ground truth from its source): index -> weight shape.
TV_VGG16 = {
    0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
    14: (256, 256), 17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512),
    26: (512, 512), 28: (512, 512),
}  # fmt: skip
TV_ALEX = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3),
           10: (256, 256, 3, 3)}  # fmt: skip


def test_backbones_have_torchvision_keys_and_sizes():
    vgg = build_backbone("vgg").torchvision_state_dict()
    assert set(vgg) == {f"{i}.{p}" for i in TV_VGG16 for p in ("weight", "bias")}
    for i, (o, c) in TV_VGG16.items():
        assert vgg[f"{i}.weight"].shape == (o, c, 3, 3)
    assert sum(v.numel() for v in vgg.values()) == 14_714_688  # torchvision vgg16().features
    alex = build_backbone("alex").torchvision_state_dict()
    assert {k: tuple(v.shape) for k, v in alex.items() if k.endswith("weight")} == {
        f"{i}.weight": s for i, s in TV_ALEX.items()
    }
    assert sum(v.numel() for v in alex.values()) == 2_469_696  # torchvision alexnet().features
    # LPIPS taps are the ReLUs closing each slice.
    for net in ("vgg", "alex"):
        b = build_backbone(net)
        assert all(isinstance(b.layers[i], nn.ReLU) for i in b.taps)
        feats = b(torch.rand(1, 3, 64, 64))
        assert [f.shape[1] for f in feats] == list(b.channels)


# ---------------------------------------------------------------------------------- LPIPS
def _lpips_by_hand(model: LPIPS, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS written out differently: explicit layer loop, F.normalize, einsum heads."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    hx, hy = (x - shift) / scale, (y - shift) / scale
    total = torch.zeros(x.shape[0])
    k = 0
    for i, layer in enumerate(model.net.layers):
        hx, hy = layer(hx.clone()), layer(hy.clone())
        if i in model.net.taps:
            d = (F.normalize(hx, dim=1, eps=1e-20) - F.normalize(hy, dim=1, eps=1e-20)) ** 2
            w = model.lins[k].model[1].weight.view(-1)
            total += torch.einsum("nchw,c->nhw", d, w).mean(dim=(1, 2))
            k += 1
            if i == model.net.taps[-1]:
                break
    return total


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_round_trip_and_properties(tmp_path, net):
    files = write_lpips_files(tmp_path, net)
    model = LPIPS(net, files.backbone, files.lin)
    saved = torch.load(files.backbone, weights_only=True)
    torch.testing.assert_close(model.net.layers[0].weight, saved["features.0.weight"])
    assert not any(p.requires_grad for p in model.parameters())
    torch.manual_seed(1)
    x = torch.rand(3, 3, 48, 48) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    d_xy, d_yx = model(x, y), model(y, x)
    assert d_xy.shape == (3,)
    assert model(x, x).abs().max() == 0
    torch.testing.assert_close(d_xy, d_yx)
    assert (d_xy > 0).all()
    torch.testing.assert_close(d_xy, _lpips_by_hand(model, x, y), rtol=1e-4, atol=1e-6)
    # as a loss (one side needs gradients): same value, and gradients reach that side
    y_req = y.clone().requires_grad_(True)
    d_loss = model(x, y_req)
    torch.testing.assert_close(d_loss.detach(), d_xy, rtol=1e-5, atol=1e-7)
    d_loss.sum().backward()
    assert y_req.grad is not None and y_req.grad.abs().sum() > 0
    # videos: per frame
    vx, vy = x.view(1, 3, 3, 48, 48).transpose(1, 2), y.view(1, 3, 3, 48, 48).transpose(1, 2)
    torch.testing.assert_close(model.video(vx, vy), d_xy.view(1, 3))


def test_lpips_bad_files_name_file_and_keys(tmp_path):
    files = write_lpips_files(tmp_path / "vgg", "vgg")
    alex = write_lpips_files(tmp_path / "alex", "alex")
    sd = torch.load(files.backbone, weights_only=True)
    del sd["features.28.weight"]
    broken = tmp_path / "broken_vgg.pth"
    torch.save(sd, broken)
    with pytest.raises(W.WeightsError, match=r"broken_vgg\.pth.*28\.weight"):
        LPIPS("vgg", broken, files.lin)
    with pytest.raises(W.WeightsError, match=r"alex\.pth.*lin1"):
        LPIPS("vgg", files.backbone, alex.lin)  # heads of the other network
    heads = tmp_path / "heads.pth"
    torch.save({"lin0.model.1.weight": torch.rand(1, 64, 1, 1)}, heads)
    with pytest.raises(W.WeightsError, match=r"heads\.pth.*lin1\.model\.1\.weight"):
        LPIPS("vgg", files.backbone, heads)
    with pytest.raises(W.WeightsError, match="needs local"):
        LPIPS("alex", None, None)


# ---------------------------------------------------------------------------------- weights
def test_weight_resolution_and_single_notice(tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING):
        assert W.resolve_lpips_weights(None, "vgg") is None
        assert W.resolve_lpips_weights(None, "vgg") is None
        assert LPIPS.from_config(None, "alex") is None
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("LPIPS disabled: no local weights configured (set" in m for m in msgs) == 2
    assert sum("vgg16-397923af.pth" in m for m in msgs) == 1  # vgg said once

    files = write_lpips_files(tmp_path, "alex")
    assert W.resolve_lpips_weights(tmp_path, "alex") == files
    assert W.resolve_lpips_weights({"backbone": files.backbone, "lin": files.lin}, "alex") == files
    monkeypatch.setenv(W.WEIGHTS_ENV, str(tmp_path))
    assert W.resolve_lpips_weights(None, "alex") == files
    with pytest.raises(W.WeightsError, match="vgg16-397923af.pth"):
        W.resolve_lpips_weights(tmp_path, "vgg")  # folder lacks the VGG files
    with pytest.raises(W.WeightsError, match="does not exist"):
        W.resolve_lpips_weights({"backbone": tmp_path / "x.pth", "lin": files.lin}, "alex")
    with pytest.raises(W.WeightsError, match="single file"):
        W.resolve_lpips_weights(files.lin, "alex")
    with pytest.raises(ValueError, match="net"):
        W.resolve_lpips_weights(None, "squeeze")


# ---------------------------------------------------------------------------------- range metrics
def test_range_l1_valid_pixels_only():
    gt = torch.tensor([[[10.0, 20.0], [-1.0, 5.0]]])  # one empty cell (-1)
    pred = torch.tensor([[[11.0, 18.0], [50.0, 5.5]]])
    # default mask = gt > 0: errors 1, 2, 0.5 over 3 valid cells
    assert range_l1(pred, gt).item() == pytest.approx(3.5 / 3)
    mask = torch.tensor([[[True, False], [False, False]]])
    assert range_l1(pred, gt, mask).item() == pytest.approx(1.0)
    assert torch.isnan(range_l1(pred, gt, torch.zeros_like(mask))).all()
    per_step = range_l1(
        pred.expand(4, 2, 2).reshape(2, 2, 2, 2), gt.expand(4, 2, 2).reshape(2, 2, 2, 2)
    )
    assert per_step.shape == (2, 2)
    with pytest.raises(ValueError, match="shapes differ"):
        range_l1(pred, gt[..., :1])


def test_chamfer_shifted_cloud_and_asymmetric_case():
    g = torch.arange(5, dtype=torch.float64)
    grid = torch.cartesian_prod(g, g, g) * 1.0 + 40.0  # 1 m spacing, far from the origin
    shift = torch.tensor([0.03, -0.04, 0.0], dtype=torch.float64)  # |shift| = 5 cm
    moved = grid + shift
    assert chamfer_distance(grid, moved, chunk=7, dst_chunk=11).item() == pytest.approx(
        0.05, abs=1e-9
    )
    assert chamfer_distance(grid.float(), moved.float()).item() == pytest.approx(0.05, abs=1e-5)
    assert chamfer_distance(grid, moved, squared=True).item() == pytest.approx(0.0025, abs=1e-10)
    assert chamfer_distance(grid, moved, reduction="sum").item() == pytest.approx(0.1, abs=1e-9)
    a = torch.zeros(1, 3)
    b = torch.tensor([[0.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    # a->b: 0; b->a: (0 + 2) / 2 = 1; mean of both directions = 0.5
    assert chamfer_distance(a, b).item() == pytest.approx(0.5)
    assert chamfer_distance(b, a).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        chamfer_distance(torch.zeros(4, 2), b)


def test_bev_histogram_binning_and_range_filter():
    pts = torch.tensor(
        [
            [10.0, 0.0, 0.0],  # r 10: cell ((10 + 80) / 1.6, 80 / 1.6) = (56, 50)
            [-30.0, 20.0, 1.0],  # cell (31, 62)
            [1.0, 1.0, 0.0],  # r < 3: dropped
            [69.0, 15.0, 0.0],  # r > 70: dropped
        ]
    )
    h = bev_histogram(pts)
    assert h.shape == (100, 100) and h.sum() == 2
    assert h[56, 50] == 1 and h[31, 62] == 1


def test_bev_jsd_and_mmd_closed_forms():
    torch.manual_seed(0)
    ha = torch.rand(4, 10, 10)
    hb = torch.rand(3, 10, 10)
    assert bev_jsd(ha, ha).item() == pytest.approx(0.0, abs=1e-12)
    j_ab, j_ba = bev_jsd(ha, hb), bev_jsd(hb, ha)
    assert j_ab.item() == pytest.approx(j_ba.item(), rel=1e-12)
    assert 0 < j_ab.item() <= math.log(2)
    # scipy's jensenshannon (natural log) is the square root of the divergence
    p, q = ha.double().sum(0).flatten().numpy(), hb.double().sum(0).flatten().numpy()
    assert bev_jsd(ha, hb, distance=True).item() == pytest.approx(jensenshannon(p, q), rel=1e-9)
    left, right = torch.zeros(10, 10), torch.zeros(10, 10)
    left[:, :5], right[:, 5:] = 1.0, 2.0
    assert bev_jsd(left, right).item() == pytest.approx(math.log(2), rel=1e-12)  # disjoint

    assert bev_mmd(ha, ha).item() == pytest.approx(0.0, abs=1e-12)
    assert bev_mmd(ha, hb).item() == pytest.approx(bev_mmd(hb, ha).item(), rel=1e-9)
    assert bev_mmd(ha, hb).item() > 0
    one_i, one_j = torch.zeros(1, 10, 10), torch.zeros(1, 10, 10)
    one_i[0, 0, 0], one_j[0, 3, 3] = 5.0, 1.0  # one-hot after normalisation: ||a - b||^2 = 2
    expected = 2 - 2 * math.exp(-2 / (2 * 0.5**2))
    assert bev_mmd(one_i, one_j).item() == pytest.approx(expected, rel=1e-9)
