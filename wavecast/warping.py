"""Flow warping on pixel grids: backward sampling, forward splatting, flow resizing, valid masks.

Conventions (shared by every flow user: `wavecast.flow`, `wavecast.data.flow_pairs`, `temporal`):

- A flow is [B, 2, H, W] in **pixels of the grid it lives on**; channel 0 = dx (right),
  channel 1 = dy (down).
- A flow "from t-1 to t" says where the content at pixel p of frame t-1 goes in frame t.
- `warp(x_prev, flow)` uses **backward sampling at p - flow(p)**:

      x_warp(p) = x_prev(p - flow(p))

  For a constant flow (a translation) this is exact: if frame t is frame t-1 shifted by
  (dx, dy), `warp(frame_prev, (dx, dy))` equals frame t away from the borders. For a
  non-constant flow it reads the flow at the target pixel p instead of the source pixel,
  which is the usual first-order approximation; for an exact backward warp pass the negated
  backward flow: `warp(x_prev, -flow_t_to_prev)` samples x_prev(p + flow_t_to_prev(p)).
  (Many public snippets sample at p + flow with a t-1 -> t flow, which moves content the
  wrong way.) `forward_splat` is the alternative that reads the flow at the source pixel.
- Pixel index x maps to `grid_sample` coordinates with `align_corners=True`:
  `x_norm = 2 x / (W - 1) - 1` (and H - 1 for y). The `dx / (W / 2)` scale belongs to
  `align_corners=False` and misplaces samples by W / (W - 1) here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PADDING_MODES = ("zeros", "border", "reflection")
_OUTSIDE = 1.0e6  # flow that sends a source pixel far outside the frame (left out of a splat)


def check_flow(flow: torch.Tensor, name: str = "flow", like: torch.Tensor | None = None) -> None:
    """Raise ValueError unless `flow` is a finite [B, 2, H, W] tensor (matching `like`'s B, H, W)."""
    if not isinstance(flow, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(flow).__name__}")
    if flow.ndim != 4:
        raise ValueError(f"{name} must be [B, 2, H, W], got shape {tuple(flow.shape)}")
    if flow.shape[1] != 2:
        raise ValueError(
            f"{name} must have 2 channels (dx, dy), got {flow.shape[1]} in shape {tuple(flow.shape)}"
        )
    if not torch.isfinite(flow).all():
        raise ValueError(f"{name} contains NaN or inf values")
    if like is not None:
        b, _, h, w = like.shape
        if flow.shape[0] != b or flow.shape[2:] != like.shape[2:]:
            raise ValueError(
                f"{name} shape {tuple(flow.shape)} does not match the tensor it warps "
                f"{tuple(like.shape)} (expected [{b}, 2, {h}, {w}])"
            )


def pixel_grid(flow: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates [B, 2, H, W] (x, y) on the flow's grid, in the flow's dtype / device."""
    b, _, h, w = flow.shape
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype)
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy)).unsqueeze(0).expand(b, -1, -1, -1)


def _normalise(pos: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel positions [B, 2, H', W'] in an image of `size` = (H, W) -> grid_sample grid
    [B, H', W', 2] for align_corners=True."""
    h, w = size
    # max(., 1): a size-1 axis has a single sample; grid_sample maps any coordinate onto it.
    x = 2.0 * pos[:, 0] / max(w - 1, 1) - 1.0
    y = 2.0 * pos[:, 1] / max(h - 1, 1) - 1.0
    return torch.stack((x, y), dim=-1)


def sample_at(
    x: torch.Tensor, pos: torch.Tensor, padding_mode: str = "zeros", mode: str = "bilinear"
) -> torch.Tensor:
    """Sample x [B, C, H, W] at pixel positions pos [B, 2, H_out, W_out] (x, y), bilinearly."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    # Sampling positions need sub-pixel precision that fp16 / bf16 lack on wide grids (bf16 steps
    # are 4 px at x = 512): sample in float32 and cast back.
    dtype = x.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    grid = _normalise(pos.to(work), x.shape[-2:])
    out = F.grid_sample(x.to(work), grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    return out.to(dtype)


def valid_mask(flow: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Where backward sampling at p - flow(p) stays inside the frame: [B, 1, H, W] float in {0, 1}.

    Outside this mask the warped value comes from the padding (zeros / border / reflection).
    """
    check_flow(flow)
    h, w = flow.shape[-2:]
    f32 = flow.float()
    src = pixel_grid(f32) - f32
    inside = (
        (src[:, 0] >= -eps)
        & (src[:, 0] <= w - 1 + eps)
        & (src[:, 1] >= -eps)
        & (src[:, 1] <= h - 1 + eps)
    )
    return inside.unsqueeze(1).to(flow.dtype)


def warp(
    x: torch.Tensor,
    flow: torch.Tensor,
    padding_mode: str = "zeros",
    mode: str = "bilinear",
    return_mask: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Backward-warp x [B, C, H, W] by a t-1 -> t flow [B, 2, H, W]: out(p) = x(p - flow(p)).

    padding_mode: "zeros" | "border" | "reflection" (grid_sample's) for samples outside the frame.
    return_mask: also return the valid mask [B, 1, H, W] (1 where p - flow(p) is inside).
    """
    if x.ndim != 4:
        raise ValueError(f"warp: x must be [B, C, H, W], got shape {tuple(x.shape)}")
    check_flow(flow, like=x)
    f32 = flow.float() if flow.dtype in (torch.float16, torch.bfloat16) else flow
    pos = pixel_grid(f32) - f32
    out = sample_at(x, pos, padding_mode=padding_mode, mode=mode)
    if return_mask:
        return out, valid_mask(flow)
    return out


def forward_splat(
    x: torch.Tensor, flow: torch.Tensor, eps: float = 1e-6, return_mask: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Forward-warp x [B, C, H, W] by splatting each source pixel q to q + flow(q), bilinearly.

    Reads the flow at the source pixel (exact for any t-1 -> t flow that maps pixels one to one).
    Overlapping contributions are averaged by their bilinear weights; pixels that receive no
    contribution (disocclusions) are 0 and 0 in the returned mask [B, 1, H, W].
    """
    if x.ndim != 4:
        raise ValueError(f"forward_splat: x must be [B, C, H, W], got shape {tuple(x.shape)}")
    check_flow(flow, like=x)
    dtype = x.dtype
    if dtype in (torch.float16, torch.bfloat16):  # positions and sums need float32 precision
        x, flow = x.float(), flow.float()
    b, c, h, w = x.shape
    dst = pixel_grid(flow.to(x.dtype)) + flow.to(x.dtype)
    x0 = torch.floor(dst[:, 0])
    y0 = torch.floor(dst[:, 1])
    fx = dst[:, 0] - x0
    fy = dst[:, 1] - y0
    src = torch.cat((x, torch.ones_like(x[:, :1])), dim=1).flatten(2)  # weight channel last
    acc = torch.zeros(b, c + 1, h * w, dtype=x.dtype, device=x.device)
    for ox, oy, wgt in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        tx = x0 + ox
        ty = y0 + oy
        inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
        wgt = (wgt * inside).flatten(1).to(x.dtype)
        idx = (ty.clamp(0, h - 1) * w + tx.clamp(0, w - 1)).long().flatten(1)
        acc.scatter_add_(2, idx.unsqueeze(1).expand(-1, c + 1, -1), src * wgt.unsqueeze(1))
    weight = acc[:, c:]
    out = (acc[:, :c] / weight.clamp_min(eps)).view(b, c, h, w)
    mask = (weight > eps).to(x.dtype).view(b, 1, h, w)
    out, mask = (out * mask).to(dtype), mask.to(dtype)
    if return_mask:
        return out, mask
    return out


def resize_flow(flow: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a flow [B, 2, H, W] to `size` = (H_new, W_new) and rescale its values.

    Pixel displacements scale with the grid: dx * W_new / W, dy * H_new / H.
    """
    check_flow(flow)
    h, w = flow.shape[-2:]
    h_new, w_new = int(size[0]), int(size[1])
    if h_new < 1 or w_new < 1:
        raise ValueError(f"resize_flow: size must be positive, got {size}")
    if (h_new, w_new) == (h, w):
        return flow
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(flow, size=(h_new, w_new), mode=mode, **kwargs)
    scale = torch.tensor([w_new / w, h_new / h], dtype=flow.dtype, device=flow.device)
    return out * scale.view(1, 2, 1, 1)


def masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean |a - b| over channels and the pixels where mask [B, 1, H, W] > 0 (all when None)."""
    err = (a - b).abs().mean(dim=1, keepdim=True)
    if mask is None:
        return err.mean()
    m = (mask > 0).to(err.dtype)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def carry_forward(
    x_prev: torch.Tensor, flow: torch.Tensor, valid: torch.Tensor | None, mode: str = "splat"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame t-1 [B, C, H, W] carried to time t by the t-1 -> t flow [B, 2, H, W].

    Returns the carried frame and where it is defined [B, 1, H, W] (float 0 / 1).
    "splat": forward splatting, invalid source pixels (valid [B, 1, H, W] False) left out.
    "backward": x_prev(p - flow(p)), defined where that is inside the frame and valid(p).
    """
    if mode == "splat":
        if valid is not None:
            flow = torch.where(valid, flow, torch.full_like(flow, _OUTSIDE))
        return forward_splat(x_prev, flow, return_mask=True)
    carried, inside = warp(x_prev, flow, padding_mode="zeros", return_mask=True)
    if valid is not None:
        inside = inside * valid.to(inside.dtype)
    return carried, inside
