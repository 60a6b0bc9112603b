"""Optical flow tools: estimation (OpenCV DIS / Farneback, RAFT), composition, consistency masks.

Flows follow the package convention (see `wavecast.warping`): [B, 2, H, W] in pixels, channel 0 =
dx (right), channel 1 = dy (down); a flow a -> b says where the content at pixel p of frame a
is in frame b: a(p) ~ b(p + flow(p)).

Frames given to `estimate_flow` are [B, 3, H, W] (RGB) or [B, 1, H, W] (grey) float tensors with
values in [-1, 1] or in [0, 1]. `value_range=None` infers the range from both frames together
(any value below 0 -> [-1, 1], else [0, 1]); values outside the chosen range by more than 1e-3
raise ValueError (e.g. frames in [0, 255]).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from wavecast.warping import check_flow, pixel_grid, resize_flow, sample_at

FLOW_METHODS = ("dis", "farneback", "raft")
_RAFT_CACHE: dict[tuple, torch.nn.Module] = {}


def _check_frames(frame_a: torch.Tensor, frame_b: torch.Tensor) -> None:
    for name, f in (("frame_a", frame_a), ("frame_b", frame_b)):
        if not isinstance(f, torch.Tensor) or f.ndim != 4 or f.shape[1] not in (1, 3):
            shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise ValueError(
                f"estimate_flow: {name} must be [B, 3, H, W] or [B, 1, H, W], got {shape}"
            )
    if frame_a.shape != frame_b.shape:
        raise ValueError(
            f"estimate_flow: frame_a {tuple(frame_a.shape)} and frame_b {tuple(frame_b.shape)} differ"
        )
    if not (torch.isfinite(frame_a).all() and torch.isfinite(frame_b).all()):
        raise ValueError("estimate_flow: frames contain NaN or inf values")


def _to_unit_range(
    frame_a: torch.Tensor, frame_b: torch.Tensor, value_range: tuple[float, float] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both frames mapped to [0, 1] (float32)."""
    a, b = frame_a.detach().float(), frame_b.detach().float()
    if value_range is None:
        lo = -1.0 if min(a.min().item(), b.min().item()) < 0 else 0.0
        value_range = (lo, 1.0)
    lo, hi = map(float, value_range)
    if hi <= lo:
        raise ValueError(
            f"estimate_flow: value_range must be (low, high) with low < high, got {value_range}"
        )
    tol = 1e-3 * (hi - lo)
    vmin, vmax = min(a.min().item(), b.min().item()), max(a.max().item(), b.max().item())
    if vmin < lo - tol or vmax > hi + tol:
        raise ValueError(
            f"estimate_flow: frame values span [{vmin:.4g}, {vmax:.4g}], outside the value range "
            f"{(lo, hi)}; pass frames in [-1, 1] or [0, 1] (or value_range=)"
        )
    return ((a - lo) / (hi - lo)).clamp(0, 1), ((b - lo) / (hi - lo)).clamp(0, 1)


def _grey_uint8(x: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] in [0, 1] -> [B, H, W] uint8 grey (ITU-R 601 luma for RGB)."""
    if x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x * w).sum(1, keepdim=True)
    return (x[:, 0] * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def _opencv_flow(a: np.ndarray, b: np.ndarray, method: str) -> np.ndarray:
    """Per-image OpenCV flow a -> b, [H, W, 2] float32."""
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return dis.calc(a, b, None)
    # Farneback: 3 pyramid levels (scale 0.5), window 15, 3 iterations, poly_n 5 / sigma 1.2.
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def run_at_multiple(
    flow_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    frame_a: torch.Tensor,
    frame_b: torch.Tensor,
    multiple: int = 8,
) -> torch.Tensor:
    """Run `flow_fn` on frames resized up to sizes divisible by `multiple`, and map its flow back.

    The flow returned by `flow_fn` (pixels of the resized grid) is resized to the original
    size with its values rescaled (dx * W / W_resized, dy * H / H_resized).
    """
    h, w = frame_a.shape[-2:]
    h8, w8 = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    if (h8, w8) == (h, w):
        return flow_fn(frame_a, frame_b)
    size = (h8, w8)
    a = F.interpolate(frame_a, size=size, mode="bilinear", align_corners=False)
    b = F.interpolate(frame_b, size=size, mode="bilinear", align_corners=False)
    return resize_flow(flow_fn(a, b), (h, w))


def _raft_model(weights: str | Path, model: str, device: torch.device) -> torch.nn.Module:
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"estimate_flow: RAFT weights file {str(path)!r} does not exist")
    try:
        from torchvision.models.optical_flow import raft_large, raft_small
    except ImportError as err:
        raise ImportError(
            "estimate_flow(method='raft') needs torchvision (pip install 'wavecast[vision]'); "
            "use method='dis' or 'farneback' without it"
        ) from err
    if model not in ("large", "small"):
        raise ValueError(f"estimate_flow: raft_model must be 'large' or 'small', got {model!r}")
    key = (str(path.resolve()), model, str(device))
    if key not in _RAFT_CACHE:
        net = (raft_large if model == "large" else raft_small)(weights=None, progress=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        _RAFT_CACHE[key] = net.eval().to(device)
    return _RAFT_CACHE[key]


def estimate_flow(
    frame_a: torch.Tensor,
    frame_b: torch.Tensor,
    method: str = "dis",
    raft_weights: str | Path | None = None,
    value_range: tuple[float, float] | None = None,
    raft_model: str = "large",
    raft_iters: int = 12,
) -> torch.Tensor:
    """Optical flow from frame_a to frame_b, [B, 2, H, W] float32 pixels, on frame_a's device.

    method: "dis" (OpenCV DIS, preset MEDIUM; CPU, default), "farneback" (OpenCV), or "raft"
    (torchvision RAFT; needs torchvision and `raft_weights`, a local state-dict file; frames are
    resized to multiples of 8 for it and the flow is mapped back with rescaled values).
    No gradient flows through the estimate.
    """
    if method not in FLOW_METHODS:
        raise ValueError(f"estimate_flow: method must be one of {FLOW_METHODS}, got {method!r}")
    _check_frames(frame_a, frame_b)
    a, b = _to_unit_range(frame_a, frame_b, value_range)
    if method == "raft":
        if raft_weights is None:
            raise ValueError(
                "estimate_flow(method='raft') needs raft_weights= a local RAFT state-dict file "
                "(weights are never downloaded at run time)"
            )
        net = _raft_model(raft_weights, raft_model, frame_a.device)
        if a.shape[1] == 1:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)

        def raft_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # RAFT wants [-1, 1]; it returns one flow per refinement iteration, the last is best
            return net(2 * x - 1, 2 * y - 1, num_flow_updates=raft_iters)[-1]

        with torch.no_grad():
            return run_at_multiple(raft_fn, a, b, 8).float()
    ga, gb = _grey_uint8(a), _grey_uint8(b)
    flows = [_opencv_flow(ga[i], gb[i], method) for i in range(ga.shape[0])]
    out = torch.from_numpy(np.stack(flows)).permute(0, 3, 1, 2).contiguous()
    return out.to(device=frame_a.device, dtype=torch.float32)


def compose_flow(
    flow_prev_to_cur: torch.Tensor, flow_0_to_prev: torch.Tensor, padding_mode: str = "border"
) -> torch.Tensor:
    """Accumulated flow 0 -> t from F_{t-1 -> t} and F_{0 -> t-1}, all [B, 2, H, W]:

        F_{0->t}(p) = F_{0->t-1}(p) + F_{t-1->t}(p + F_{0->t-1}(p))

    i.e. follow pixel p of frame 0 to frame t-1, then read the next step's flow where it landed
    (bilinearly; `padding_mode` where it left the frame).
    """
    check_flow(flow_0_to_prev, name="flow_0_to_prev")
    check_flow(flow_prev_to_cur, name="flow_prev_to_cur", like=flow_0_to_prev)
    pos = pixel_grid(flow_0_to_prev) + flow_0_to_prev
    return flow_0_to_prev + sample_at(flow_prev_to_cur, pos, padding_mode=padding_mode)


def accumulate_flow(flows: torch.Tensor) -> torch.Tensor:
    """Consecutive flows [B, T, 2, H, W] (t -> t+1) -> accumulated flows 0 -> t+1, same shape."""
    if flows.ndim != 5 or flows.shape[2] != 2:
        raise ValueError(
            f"accumulate_flow: flows must be [B, T, 2, H, W], got {tuple(flows.shape)}"
        )
    out = [flows[:, 0]]
    for t in range(1, flows.shape[1]):
        out.append(compose_flow(flows[:, t], out[-1]))
    return torch.stack(out, dim=1)


def forward_backward_consistency(
    flow_fw: torch.Tensor,
    flow_bw: torch.Tensor,
    alpha1: float = 0.01,
    alpha2: float = 0.5,
    check_bounds: bool = False,
) -> torch.Tensor:
    """Valid (non-occluded) mask [B, 1, H, W] in {0, 1} from the forward-backward check (UnFlow).

    With the backward flow read where the forward flow lands, F_bw'(p) = F_bw(p + F_fw(p)),
    a pixel is valid when

        |F_fw(p) + F_bw'(p)|^2 < alpha1 * (|F_fw(p)|^2 + |F_bw'(p)|^2) + alpha2.

    check_bounds: also mark pixels whose forward flow leaves the frame as invalid.
    """
    check_flow(flow_fw, name="flow_fw")
    check_flow(flow_bw, name="flow_bw", like=flow_fw)
    pos = pixel_grid(flow_fw) + flow_fw
    bw = sample_at(flow_bw, pos, padding_mode="border")
    lhs = (flow_fw + bw).square().sum(1, keepdim=True)
    rhs = (
        alpha1 * (flow_fw.square().sum(1, keepdim=True) + bw.square().sum(1, keepdim=True)) + alpha2
    )
    valid = lhs < rhs
    if check_bounds:
        h, w = flow_fw.shape[-2:]
        inside = (pos[:, 0] >= 0) & (pos[:, 0] <= w - 1) & (pos[:, 1] >= 0) & (pos[:, 1] <= h - 1)
        valid = valid & inside.unsqueeze(1)
    return valid.to(flow_fw.dtype)


def end_point_error(
    flow: torch.Tensor, flow_gt: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean end-point error |flow - flow_gt|_2 over pixels (optionally where mask [B, 1, H, W] > 0)."""
    check_flow(flow, name="flow")
    check_flow(flow_gt, name="flow_gt", like=flow)
    epe = (flow - flow_gt).norm(dim=1, keepdim=True)
    if mask is None:
        return epe.mean()
    m = (mask > 0).to(epe.dtype).expand_as(epe)
    return (epe * m).sum() / m.sum().clamp_min(1)
