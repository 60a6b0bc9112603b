"""Flow estimation against synthetic ground truth; flow composition and consistency checks."""

from __future__ import annotations

import math

import pytest
import torch

from wavecast.flow import (
    accumulate_flow,
    compose_flow,
    end_point_error,
    estimate_flow,
    forward_backward_consistency,
    run_at_multiple,
)


def _texture(h: int, w: int, dx: float = 0.0, dy: float = 0.0, seed: int = 0) -> torch.Tensor:
    """A smooth random texture [1, 1, H, W] in [0, 1], sampled at (x - dx, y - dy).

    The frame built with (dx, dy) is the dx=dy=0 frame translated by (dx, dy): its true flow
    from the untranslated frame is exactly (dx, dy) everywhere.
    """
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    x, y = x - dx, y - dy
    img = torch.zeros(h, w, dtype=torch.float64)
    for _ in range(12):
        fx, fy = (torch.rand(2, generator=g, dtype=torch.float64) - 0.5) * 0.7
        phase = torch.rand(1, generator=g, dtype=torch.float64) * 2 * math.pi
        amp = 0.3 + 0.7 * torch.rand(1, generator=g, dtype=torch.float64)
        img += amp * torch.sin(fx * x + fy * y + phase)
    img = 0.5 + img / (2 * 6.5)  # the 12 amplitudes sum to at most 12 (< 13): stays in (0, 1)
    return img.float().view(1, 1, h, w)


def _gt(h: int, w: int, dx: float, dy: float, b: int = 1) -> torch.Tensor:
    flow = torch.zeros(b, 2, h, w)
    flow[:, 0], flow[:, 1] = dx, dy
    return flow


def _interior(h: int, w: int, m: int = 8) -> torch.Tensor:
    mask = torch.zeros(1, 1, h, w)
    mask[..., m:-m, m:-m] = 1
    return mask


@pytest.mark.parametrize("method", ["dis", "farneback"])
@pytest.mark.parametrize("dx,dy", [(2.5, -1.5), (5.25, 3.0)])
def test_flow_epe_on_translated_texture(method: str, dx: float, dy: float) -> None:
    h, w = 64, 80
    a, b = _texture(h, w), _texture(h, w, dx, dy)
    flow = estimate_flow(a, b, method=method)
    assert flow.shape == (1, 2, h, w) and flow.dtype == torch.float32
    epe = end_point_error(flow, _gt(h, w, dx, dy), _interior(h, w)).item()
    assert epe < 0.2, f"{method} EPE {epe:.3f} px"
    # the reverse pair gives the opposite flow
    back = estimate_flow(b, a, method=method)
    assert end_point_error(back, _gt(h, w, -dx, -dy), _interior(h, w)).item() < 0.2


def test_rgb_grey_and_value_ranges_agree() -> None:
    h, w = 48, 48
    a, b = _texture(h, w, seed=1), _texture(h, w, 2.0, 1.0, seed=1)
    grey = estimate_flow(a, b)
    rgb = estimate_flow(a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1))
    signed = estimate_flow(2 * a - 1, 2 * b - 1)
    torch.testing.assert_close(grey, rgb, atol=1e-4, rtol=0)
    torch.testing.assert_close(grey, signed, atol=1e-4, rtol=0)
    batch = estimate_flow(torch.cat((a, b)), torch.cat((b, a)))
    torch.testing.assert_close(batch[:1], grey, atol=1e-4, rtol=0)


def test_estimate_flow_input_errors() -> None:
    a = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="outside the value range"):
        estimate_flow(a * 255, a * 255)
    with pytest.raises(ValueError, match="frame_a"):
        estimate_flow(torch.rand(1, 2, 16, 16), torch.rand(1, 2, 16, 16))
    with pytest.raises(ValueError, match="differ"):
        estimate_flow(a, torch.rand(1, 3, 16, 8))
    with pytest.raises(ValueError, match="method"):
        estimate_flow(a, a, method="lk")
    with pytest.raises(ValueError, match="raft_weights"):
        estimate_flow(a, a, method="raft")


def test_raft_needs_an_existing_local_file_and_torchvision(tmp_path) -> None:
    a = torch.rand(1, 3, 16, 16)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        estimate_flow(a, a, method="raft", raft_weights=tmp_path / "missing.pth")
    weights = tmp_path / "raft.pth"
    torch.save({}, weights)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="torchvision"):
            estimate_flow(a, a, method="raft", raft_weights=weights)


def test_run_at_multiple_maps_flow_back_with_rescaled_values() -> None:
    # a real estimator run on frames resized 40x40 -> 64x64 (multiple=32) sees a 1.6x larger
    # shift; mapped back, the flow must be the true shift at 40x40
    h, w, dx, dy = 40, 40, 3.0, -2.0
    a, b = _texture(h, w, seed=2), _texture(h, w, dx, dy, seed=2)
    seen = {}

    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen["size"] = tuple(x.shape[-2:])
        return estimate_flow(x, y, method="dis")

    flow = run_at_multiple(fn, a, b, multiple=32)
    assert seen["size"] == (64, 64) and flow.shape == (1, 2, h, w)
    assert end_point_error(flow, _gt(h, w, dx, dy), _interior(h, w, 6)).item() < 0.5


def test_compose_constant_translations() -> None:
    h, w = 10, 12
    f01, f12 = _gt(h, w, 1.0, 2.0), _gt(h, w, 3.0, -1.0)
    f02 = compose_flow(f12, f01)
    torch.testing.assert_close(f02, _gt(h, w, 4.0, 1.0))
    acc = accumulate_flow(torch.stack((f01, f12, _gt(h, w, -0.5, 0.5)), dim=1))
    torch.testing.assert_close(acc[:, 2], _gt(h, w, 3.5, 1.5))


def test_compose_affine_flows_closed_form() -> None:
    # rotation-free affine displacements F_i(p) = A_i p + b_i with diagonal A_i:
    # F_02(p) = F_01(p) + A_2 (p + F_01(p)) + b_2, exact under bilinear sampling (affine field)
    h, w = 24, 32
    y, x = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    a1, b1 = (0.05, -0.03), (1.0, 2.0)
    a2, b2 = (-0.02, 0.04), (-0.5, 1.5)
    f01 = torch.stack((a1[0] * x + b1[0], a1[1] * y + b1[1])).unsqueeze(0)
    f12 = torch.stack((a2[0] * x + b2[0], a2[1] * y + b2[1])).unsqueeze(0)
    qx, qy = x + f01[0, 0], y + f01[0, 1]
    expected = f01 + torch.stack((a2[0] * qx + b2[0], a2[1] * qy + b2[1])).unsqueeze(0)
    inside = ((qx >= 0) & (qx <= w - 1) & (qy >= 0) & (qy <= h - 1)).expand(1, 2, h, w)
    assert inside.float().mean() > 0.5
    got = compose_flow(f12, f01)
    torch.testing.assert_close(got[inside], expected[inside], atol=1e-4, rtol=0)
    # the other composition order is wrong for non-constant flows
    assert (compose_flow(f01, f12)[inside] - expected[inside]).abs().max() > 0.05


def test_forward_backward_consistency() -> None:
    h, w = 8, 16
    fw = _gt(h, w, 2.0, 0.0)
    assert forward_backward_consistency(fw, -fw).min() == 1
    # |2t|^2 = 16 >= 0.01 * 8 + 0.5: inconsistent everywhere
    assert forward_backward_consistency(fw, fw).max() == 0
    # occlusion-like case: the backward flow is only right on the left half (x < 8)
    bw = -fw.clone()
    bw[..., 8:] = 0
    valid = forward_backward_consistency(fw, bw)
    expected = torch.zeros(1, 1, h, w)
    expected[..., :6] = 1  # x + 2 lands at x < 8
    assert torch.equal(valid, expected)
    in_frame = forward_backward_consistency(fw, -fw, check_bounds=True)
    assert in_frame[..., -2:].max() == 0 and in_frame[..., :-2].min() == 1
    with pytest.raises(ValueError, match="flow_bw"):
        forward_backward_consistency(fw, fw[..., :-1])
