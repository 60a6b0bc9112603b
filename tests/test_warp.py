"""warp / resize_flow / valid_mask / forward_splat against closed-form shifts."""

from __future__ import annotations

import pytest
import torch

from wavecast.warping import forward_splat, resize_flow, valid_mask, warp


def _const_flow(b: int, h: int, w: int, dx: float, dy: float) -> torch.Tensor:
    flow = torch.zeros(b, 2, h, w)
    flow[:, 0] = dx
    flow[:, 1] = dy
    return flow


@pytest.mark.parametrize("dx,dy", [(2, 1), (-3, 2), (1, -2), (0, 0)])
def test_integer_shift_is_exact_in_interior(dx: int, dy: int) -> None:
    g = torch.Generator().manual_seed(0)
    h, w = 12, 16
    prev = torch.randn(2, 3, h, w, generator=g)
    # frame t = frame t-1 translated by (dx, dy): cur[y, x] = prev[y - dy, x - dx]
    cur = torch.roll(prev, shifts=(dy, dx), dims=(2, 3))
    out = warp(prev, _const_flow(2, h, w, dx, dy))
    ys = slice(max(dy, 0), h + min(dy, 0))
    xs = slice(max(dx, 0), w + min(dx, 0))
    torch.testing.assert_close(out[..., ys, xs], cur[..., ys, xs], atol=1e-5, rtol=0)
    # the opposite direction (sampling at p + flow) must not match for a non-zero shift
    if (dx, dy) != (0, 0):
        wrong = warp(prev, _const_flow(2, h, w, -dx, -dy))
        assert (wrong[..., ys, xs] - cur[..., ys, xs]).abs().max() > 0.1


def test_align_corners_scale_moves_content_exactly_k_pixels() -> None:
    h, w, k = 5, 8, 2
    ramp = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(1, 1, h, w).contiguous()
    out = warp(ramp, _const_flow(1, h, w, k, 0))
    # content moved right by exactly k pixels: out(x) = x - k
    torch.testing.assert_close(out[..., k:], ramp[..., k:] - k, atol=1e-5, rtol=0)

    # The same for y on the non-square grid: a flow scaled by W instead of H (or by W/2, the
    # align_corners=False convention) would move the content by a fraction of a pixel off k.
    ramp_y = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(1, 1, h, w).contiguous()
    out_y = warp(ramp_y, _const_flow(1, h, w, 0, k))
    torch.testing.assert_close(out_y[..., k:, :], ramp_y[..., k:, :] - k, atol=1e-5, rtol=0)
    # a fractional shift along both axes: out(x, y) = (x - 1.5) + 10 (y - 0.5), bilinear is exact
    plane = ramp + 10 * ramp_y
    out_xy = warp(plane, _const_flow(1, h, w, 1.5, 0.5))
    torch.testing.assert_close(
        out_xy[..., 1:, 2:], plane[..., 1:, 2:] - 1.5 - 5.0, atol=1e-4, rtol=0
    )


def test_fractional_shift_interpolates_linearly() -> None:
    h, w = 4, 10
    ramp = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(1, 1, h, w).contiguous()
    out = warp(ramp, _const_flow(1, h, w, 0.25, 0))
    torch.testing.assert_close(out[..., 1:], ramp[..., 1:] - 0.25, atol=1e-5, rtol=0)


def test_valid_mask_marks_out_of_frame_samples() -> None:
    h, w = 6, 7
    mask = valid_mask(_const_flow(1, h, w, 2, -1))
    expected = torch.zeros(1, 1, h, w)
    # source x - 2 >= 0 -> x >= 2; source y + 1 <= h - 1 -> y <= h - 2
    expected[..., : h - 1, 2:] = 1
    assert torch.equal(mask, expected)
    _, m2 = warp(torch.ones(1, 1, h, w), _const_flow(1, h, w, 2, -1), return_mask=True)
    assert torch.equal(m2, expected)


@pytest.mark.parametrize("mode", ["zeros", "border", "reflection"])
def test_padding_modes(mode: str) -> None:
    x = torch.arange(6, dtype=torch.float32).view(1, 1, 1, 6).expand(1, 1, 3, 6).contiguous()
    out = warp(x, _const_flow(1, 3, 6, 2, 0), padding_mode=mode)
    left = out[0, 0, 0, :2]
    expected = {"zeros": [0.0, 0.0], "border": [0.0, 0.0], "reflection": [2.0, 1.0]}[mode]
    torch.testing.assert_close(left, torch.tensor(expected), atol=1e-5, rtol=0)
    if mode == "zeros":
        # a non-zero image shows the zero padding
        o = warp(torch.ones(1, 1, 3, 6), _const_flow(1, 3, 6, 2, 0), padding_mode=mode)
        assert o[0, 0, 0, :2].abs().max() < 1e-6


def test_resize_flow_rescales_values() -> None:
    flow = _const_flow(2, 32, 48, 6.0, -4.0)
    small = resize_flow(flow, (8, 16))
    assert small.shape == (2, 2, 8, 16)
    torch.testing.assert_close(small[:, 0], torch.full((2, 8, 16), 6.0 * 16 / 48))
    torch.testing.assert_close(small[:, 1], torch.full((2, 8, 16), -4.0 * 8 / 32))
    big = resize_flow(small, (32, 48))
    torch.testing.assert_close(big, flow)


def test_resized_flow_warps_consistently_with_resized_image() -> None:
    # an image-resolution shift of 8 px on a 4x-downsampled grid is a 2 px shift there
    g = torch.Generator().manual_seed(1)
    lat = torch.randn(1, 2, 8, 12, generator=g)
    flow_img = _const_flow(1, 32, 48, 8.0, 4.0)
    out = warp(lat, resize_flow(flow_img, (8, 12)))
    cur = torch.roll(lat, shifts=(1, 2), dims=(2, 3))
    torch.testing.assert_close(out[..., 1:, 2:], cur[..., 1:, 2:], atol=1e-5, rtol=0)


def test_forward_splat_integer_shift_and_holes() -> None:
    g = torch.Generator().manual_seed(2)
    h, w = 6, 8
    prev = torch.randn(1, 2, h, w, generator=g)
    out, mask = forward_splat(prev, _const_flow(1, h, w, 2, 1), return_mask=True)
    cur = torch.roll(prev, shifts=(1, 2), dims=(2, 3))
    torch.testing.assert_close(out[..., 1:, 2:], cur[..., 1:, 2:], atol=1e-5, rtol=0)
    assert mask[..., :1, :].sum() == 0 and mask[..., :, :2].sum() == 0
    assert mask[..., 1:, 2:].min() == 1


def test_forward_splat_reads_flow_at_source() -> None:
    # only pixel (y=2, x=1) moves, by +3 in x: it lands on the static pixel x=4 (the two are
    # averaged) and leaves a hole at x=1; backward sampling at p - flow(p) cannot do this
    x = torch.zeros(1, 1, 5, 6)
    x[0, 0, 2, 1] = 1.0
    x[0, 0, 2, 4] = 3.0
    flow = torch.zeros(1, 2, 5, 6)
    flow[0, 0, 2, 1] = 3.0
    out, mask = forward_splat(x, flow, return_mask=True)
    assert out[0, 0, 2, 4] == pytest.approx(2.0)
    assert out[0, 0, 2, 1] == 0 and mask[0, 0, 2, 1] == 0
    assert mask.sum() == 5 * 6 - 1


def test_shape_errors() -> None:
    x = torch.zeros(1, 3, 4, 5)
    with pytest.raises(ValueError, match="2 channels"):
        warp(x, torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="does not match"):
        warp(x, torch.zeros(1, 2, 4, 6))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        warp(torch.zeros(3, 4, 5), torch.zeros(1, 2, 4, 5))
    bad = torch.zeros(1, 2, 4, 5)
    bad[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        warp(x, bad)
    with pytest.raises(ValueError, match="padding_mode"):
        warp(x, torch.zeros(1, 2, 4, 5), padding_mode="wrap")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_keeps_subpixel_positions_on_wide_grids(dtype: torch.dtype) -> None:
    # half precision cannot hold x = 500.75 (bf16 steps are 2-4 px there): positions must be
    # computed in float32 for a 0.25 px shift of a fine pattern to land right
    w = 512
    xs = torch.arange(w, dtype=torch.float64)
    pattern = torch.sin(2 * torch.pi * xs / 6).float().view(1, 1, 1, w).expand(1, 1, 2, w)
    pattern = pattern.to(dtype).contiguous()
    # bilinear sampling at x - 0.25: 0.75 * p[x] + 0.25 * p[x - 1]
    p32 = pattern.float()
    expected = 0.75 * p32[..., 1:] + 0.25 * p32[..., :-1]
    flow = _const_flow(1, 2, w, 0.25, 0).to(dtype)
    out = warp(pattern, flow)
    assert out.dtype == dtype
    torch.testing.assert_close(out[..., 1:].float(), expected, atol=1e-2, rtol=0)
    splat = forward_splat(pattern, flow)
    assert splat.dtype == dtype
    torch.testing.assert_close(splat[..., 1:].float(), expected, atol=1e-2, rtol=0)


def test_package_exports_are_the_documented_objects_whatever_was_imported_first() -> None:
    """`from temporal import warp` is the function even after every submodule is loaded (a
    submodule named like an export would be bound over it by the import system)."""
    import importlib
    import pkgutil
    import types

    import temporal
    from wavecast import warping

    submodules = {m.name for m in pkgutil.iter_modules(temporal.__path__)}
    assert not submodules & set(temporal.__all__)
    for name in sorted(submodules):
        importlib.import_module(f"temporal.{name}")
    from temporal import TemporalModule, warp

    assert warp is warping.warp and callable(warp)
    assert TemporalModule.__name__ == "TemporalModule"
    for name in temporal.__all__:
        obj = getattr(temporal, name)
        assert not isinstance(obj, types.ModuleType), name
        assert obj is getattr(importlib.import_module(temporal._EXPORTS[name]), name)
