"""TemporalModule conventions, extensions, multi-scale hooks and the edge-preserving loss."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from temporal.edge_loss import EdgePreservingLoss, edge_preserving_loss, sobel_gradients
from temporal.temporal_module import MultiScaleTemporalFusion, TemporalModule


def _z(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _const_flow(b: int, h: int, w: int, dx: float, dy: float) -> torch.Tensor:
    flow = torch.zeros(b, 2, h, w)
    flow[:, 0], flow[:, 1] = dx, dy
    return flow


def test_no_flow_is_identity_warp_bit_exact() -> None:
    tm = TemporalModule(4, alpha_init=0.3)
    z_prev, z_cur = _z(2, 4, 6, 8, seed=0), _z(2, 4, 6, 8, seed=1)
    _, _, aux = tm(z_prev, z_cur)
    assert torch.equal(aux["z_warp"], z_prev)
    assert aux["flow"] is None

    plain = TemporalModule(4, alpha_init=0.3, refiner=False)
    z_fused, s_fused, aux = plain(z_prev, z_cur)
    assert s_fused is None
    torch.testing.assert_close(aux["alpha"], torch.tensor(0.3))
    torch.testing.assert_close(z_fused, 0.3 * z_prev + 0.7 * z_cur)


def test_flow_direction_matches_translated_frame() -> None:
    tm = TemporalModule(3, refiner=False)
    z_prev = _z(1, 3, 10, 12)
    z_cur = torch.roll(z_prev, shifts=(2, -3), dims=(2, 3))  # moved by dx=-3, dy=+2
    _, _, aux = tm(z_prev, z_cur, flow=_const_flow(1, 10, 12, -3, 2))
    torch.testing.assert_close(aux["z_warp"][..., 2:, :-3], z_cur[..., 2:, :-3], atol=1e-5, rtol=0)
    assert aux["valid_mask"][..., :2, :].sum() == 0
    assert aux["valid_mask"][..., 2:, :-3].min() == 1


def test_invalid_region_falls_back_to_current_latent() -> None:
    tm = TemporalModule(2, refiner=False, padding_mode="zeros", mask_invalid=True)
    z_prev, z_cur = _z(1, 2, 5, 6, seed=2), _z(1, 2, 5, 6, seed=3)
    z_fused, _, aux = tm(z_prev, z_cur, flow=_const_flow(1, 5, 6, 2, 0))
    torch.testing.assert_close(z_fused[..., :2], z_cur[..., :2])
    a = aux["alpha"]
    expected = a * aux["z_warp"][..., 2:] + (1 - a) * z_cur[..., 2:]
    torch.testing.assert_close(z_fused[..., 2:], expected)


def test_alpha_init_parameter_or_buffer_and_checks() -> None:
    tm = TemporalModule(2, alpha_init=0.4, learnable_alpha=True)
    assert torch.sigmoid(tm.alpha_param).item() == pytest.approx(0.4, abs=1e-6)
    assert any(p is tm.alpha_param for p in tm.parameters())
    fixed = TemporalModule(2, alpha_init=0.25, learnable_alpha=False)
    assert not any(p is fixed.alpha_param for p in fixed.parameters())
    assert "alpha_param" in dict(fixed.named_buffers())
    assert fixed.alpha.item() == pytest.approx(0.25, abs=1e-6)
    with pytest.warns(UserWarning, match="0.8"):
        TemporalModule(2, alpha_init=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TemporalModule(2, alpha_init=0.5)
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="alpha_init"):
            TemporalModule(2, alpha_init=bad)
    with pytest.raises(ValueError, match="padding_mode"):
        TemporalModule(2, padding_mode="circular")


def test_refiner_and_alpha_receive_gradients() -> None:
    tm = TemporalModule(3, alpha_init=0.3)
    z_prev, z_cur = _z(2, 3, 6, 6, seed=4), _z(2, 3, 6, 6, seed=5)
    target = _z(2, 3, 6, 6, seed=6)
    z_fused, _, _ = tm(z_prev, z_cur, flow=_const_flow(2, 6, 6, 0.5, -0.5))
    ((z_fused - target) ** 2).mean().backward()
    assert tm.alpha_param.grad is not None and tm.alpha_param.grad.abs() > 0
    for name, p in tm.refiner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_styles_blend_with_alpha() -> None:
    tm = TemporalModule(2, alpha_init=0.2, refiner=False)
    z = _z(3, 2, 4, 4)
    s_prev, s_cur = _z(3, 5, seed=7), _z(3, 5, seed=8)
    _, s_fused, _ = tm(z, z, s_prev, s_cur)
    torch.testing.assert_close(s_fused, 0.2 * s_prev + 0.8 * s_cur)
    _, s_none, _ = tm(z, z, s_prev, None)
    assert s_none is None


def test_shape_errors_name_the_argument() -> None:
    tm = TemporalModule(2)
    z = torch.zeros(1, 2, 4, 5)
    with pytest.raises(ValueError, match="z_prev"):
        tm(torch.zeros(2, 4, 5), z)
    with pytest.raises(ValueError, match="same shape"):
        tm(z, torch.zeros(1, 2, 4, 6))
    with pytest.raises(ValueError, match="2 channels"):
        tm(z, z, flow=torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="does not match"):
        tm(z, z, flow=torch.zeros(1, 2, 8, 10))
    with pytest.raises(ValueError, match=r"\[B, 2, H, W\]"):
        tm(z, z, flow=torch.zeros(2, 4, 5))
    nan_flow = torch.zeros(1, 2, 4, 5)
    nan_flow[0, 1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        tm(z, z, flow=nan_flow)
    with pytest.raises(ValueError, match="s_prev"):
        tm(z, z, torch.zeros(2, 3), torch.zeros(2, 3))


@pytest.mark.parametrize("mode", ["zero", "straight_through"])
def test_alpha_override_value_and_gradient(mode: str) -> None:
    tm = TemporalModule(2, alpha_init=0.3, refiner=False)
    tm.alpha_override = 0.05
    tm.alpha_override_grad = mode
    z_prev, z_cur = _z(1, 2, 4, 4, seed=9), _z(1, 2, 4, 4, seed=10)
    z_fused, _, aux = tm(z_prev, z_cur)
    assert aux["alpha"].item() == pytest.approx(0.05, abs=1e-7)
    torch.testing.assert_close(z_fused, 0.05 * z_prev + 0.95 * z_cur)
    z_fused.square().mean().backward()
    grad = tm.alpha_param.grad
    assert grad is not None  # DDP sees the parameter used every step
    if mode == "zero":
        assert grad.item() == 0.0
    else:
        assert grad.abs().item() > 0
    tm.alpha_override = None
    tm.set_alpha(0.8)
    assert tm.alpha.item() == pytest.approx(0.8, abs=1e-6)


def test_spatial_alpha_map() -> None:
    tm = TemporalModule(3, alpha_init=0.4, spatial_alpha=True)
    z_prev, z_cur = _z(2, 3, 5, 7, seed=11), _z(2, 3, 5, 7, seed=12)
    z_fused, _, aux = tm(z_prev, z_cur)
    amap = aux["alpha_map"]
    assert amap.shape == (2, 1, 5, 7)
    assert (amap - 0.4).abs().max() < 0.05  # the head starts small
    assert amap.std() > 0  # but it is a map, not a constant
    expected = amap * aux["z_warp_refined"] + (1 - amap) * z_cur
    torch.testing.assert_close(z_fused, expected)
    z_fused.square().mean().backward()
    for name, p in tm.alpha_head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    tm.alpha_override = 0.1
    _, _, aux = tm(z_prev, z_cur)
    torch.testing.assert_close(aux["alpha_map"], torch.full((2, 1, 5, 7), 0.1))


def test_flow_predictor_used_only_without_flow() -> None:
    tm = TemporalModule(2, flow_predictor=True, max_predicted_flow=3.0)
    z_prev, z_cur = _z(1, 2, 6, 6, seed=13), _z(1, 2, 6, 6, seed=14)
    z_fused, _, aux = tm(z_prev, z_cur)
    assert aux["flow"].shape == (1, 2, 6, 6)
    assert aux["flow"].abs().max() <= 3.0
    z_fused.square().mean().backward()
    last = tm.flow_predictor.net[-1][-1]
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0
    given = _const_flow(1, 6, 6, 1.0, 0.0)
    _, _, aux2 = tm(z_prev, z_cur, flow=given)
    assert aux2["flow"] is given


class _ToyDecoder(nn.Module):
    """Two "decoder levels": identity at 4x4, then 2x upsampling and identity at 8x8."""

    def __init__(self) -> None:
        super().__init__()
        self.low = nn.Identity()
        self.high = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.low(x)
        x = x.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)  # 2x nearest, H and W only
        return self.high(x)


def test_multiscale_hook_bt_layout_recurrent_and_not() -> None:
    b, t, c = 2, 3, 2
    x = _z(b * t, c, 4, 4, seed=15)
    frames = x.view(b, t, c, 4, 4)
    a = 0.3
    for recurrent in (False, True):
        fusion = MultiScaleTemporalFusion(
            {"low": c}, num_frames=t, recurrent=recurrent, alpha_init=a, refiner=False
        )
        host = _ToyDecoder()
        fusion.attach(host)
        out = host.low(x).view(b, t, c, 4, 4)
        expected = [frames[:, 0]]
        for i in range(1, t):
            prev = expected[-1] if recurrent else frames[:, i - 1]
            expected.append(a * prev + (1 - a) * frames[:, i])
        torch.testing.assert_close(out, torch.stack(expected, 1))
        fusion.detach()
        assert torch.equal(host.low(x), x)


def test_multiscale_hook_two_scales_bcthw_with_flow() -> None:
    b, t, c = 1, 2, 2
    frame0 = _z(b, c, 4, 4, seed=16)
    frame1 = torch.roll(frame0, shifts=1, dims=3)  # moved 1 px right at 4x4
    x = torch.stack((frame0, frame1), dim=2)  # [B, C, T, H, W]
    fusion = MultiScaleTemporalFusion(
        {"low": c, "high": c}, num_frames=t, layout="bcthw", alpha_init=0.5, refiner=False
    )
    host = _ToyDecoder()
    fusion.attach(host)
    # 4 px right at the 16x16 image grid = 1 px at 4x4 and 2 px at 8x8
    fusion.set_flow(_const_flow(b, 16, 16, 4.0, 0.0).unsqueeze(1))
    out = host(x)
    assert out.shape == (b, c, t, 8, 8)
    aux_low, aux_high = fusion.last_aux["low"][0], fusion.last_aux["high"][0]
    torch.testing.assert_close(aux_low["flow"], _const_flow(b, 4, 4, 1.0, 0.0))
    torch.testing.assert_close(aux_high["flow"], _const_flow(b, 8, 8, 2.0, 0.0))
    # at the low level the warped frame 0 equals frame 1 where valid, so fusion keeps frame 1
    torch.testing.assert_close(aux_low["z_warp"][..., 1:], frame1[..., 1:], atol=1e-5, rtol=0)
    out.square().mean().backward()
    for tm in fusion.temporal_modules():
        # in the graph at both scales; the value is 0 since the warp matches frame 1 exactly
        assert tm.alpha_param.grad is not None
    with pytest.raises(KeyError, match="nope"):
        MultiScaleTemporalFusion({"nope": c}, num_frames=t).attach(host)
    other = _ToyDecoder()
    MultiScaleTemporalFusion({"low": c}, num_frames=3, layout="bcthw").attach(other)
    with pytest.raises(ValueError, match="T=3"):
        other(x)


def test_sobel_gradients_of_a_ramp() -> None:
    h, w = 6, 7
    ramp = (2.0 * torch.arange(w, dtype=torch.float32)).view(1, 1, 1, w).expand(1, 1, h, w)
    g = sobel_gradients(ramp.contiguous())
    torch.testing.assert_close(g[0, 0, 0, :, 1:-1], torch.full((h, w - 2), 2.0))
    torch.testing.assert_close(g[0, 0, 1], torch.zeros(h, w))


def test_edge_preserving_loss_closed_form() -> None:
    h, w = 6, 7
    ramp = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(2, 3, h, w).contiguous()
    assert edge_preserving_loss(ramp, ramp + 5.0).item() == pytest.approx(0.0, abs=1e-6)
    err = edge_preserving_loss(ramp, 3 * ramp, reduction="none")
    torch.testing.assert_close(err[:, :, 0, :, 1:-1], torch.full((2, 3, h, w - 2), 2.0))
    torch.testing.assert_close(err[:, :, 1], torch.zeros(2, 3, h, w))
    assert EdgePreservingLoss(weight=0.5)(ramp, 3 * ramp) == pytest.approx(
        0.5 * edge_preserving_loss(ramp, 3 * ramp).item()
    )
    with pytest.raises(ValueError, match="differ"):
        edge_preserving_loss(ramp, ramp[..., :-1])
