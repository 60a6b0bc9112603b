"""LiDAR range-image and point-cloud metrics (metres), per data.md.

- :func:`range_l1`: mean absolute range error over valid pixels, in metres.
- :func:`chamfer_distance`: symmetric nearest-neighbour distance of two clouds (e.g. the
  re-projected predicted and true range images), chunked ``torch.cdist``.
- :func:`bev_histogram`, :func:`bev_jsd`, :func:`bev_mmd`: generation metrics on bird's-eye-view
  histograms (LiDARGen / R2DM protocol: 160 m square field, 100 x 100 bins, points with
  3 m < ||p|| < 70 m).

Turning range images back into points belongs to the range projection in ``wavecast.data``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def range_l1(
    pred_range_m: Tensor,
    gt_range_m: Tensor,
    valid_mask: Tensor | None = None,
    dims: tuple[int, ...] = (-2, -1),
) -> Tensor:
    """Mean ``|pred - gt|`` in metres over the valid pixels, reduced over ``dims``.

    Args:
        pred_range_m, gt_range_m: range images in metres, same shape ``[..., H, W]``.
        valid_mask: bool, broadcastable to that shape; default ``gt_range_m > 0`` (cells with a
            true return; empty cells are <= 0 by the projection's convention).
        dims: dimensions averaged over (default H, W: one value per image / predicted step).

    A slice without any valid pixel gives NaN (there is nothing to score), never 0.
    """
    if pred_range_m.shape != gt_range_m.shape:
        raise ValueError(
            f"range_l1: shapes differ: {tuple(pred_range_m.shape)} vs {tuple(gt_range_m.shape)}"
        )
    mask = gt_range_m > 0 if valid_mask is None else valid_mask.to(torch.bool)
    try:
        mask = mask.expand_as(gt_range_m)
    except RuntimeError as e:
        raise ValueError(
            f"range_l1: valid_mask {tuple(mask.shape)} does not broadcast to {tuple(gt_range_m.shape)}"
        ) from e
    err = (pred_range_m - gt_range_m).abs() * mask
    count = mask.sum(dim=dims).to(err.dtype)
    return err.sum(dim=dims) / count  # 0 / 0 = NaN where nothing is valid


def _nearest(src: Tensor, dst: Tensor, chunk: int, dst_chunk: int) -> Tensor:
    """Euclidean distance from every ``src`` point to its nearest ``dst`` point: ``[N]``."""
    out = []
    for i in range(0, src.shape[0], chunk):
        s = src[i : i + chunk]
        best = torch.full((s.shape[0],), math.inf, dtype=src.dtype, device=src.device)
        for j in range(0, dst.shape[0], dst_chunk):
            d = torch.cdist(s, dst[j : j + dst_chunk])
            best = torch.minimum(best, d.min(dim=1).values)
        out.append(best)
    return torch.cat(out)


def chamfer_distance(
    points_a: Tensor,
    points_b: Tensor,
    squared: bool = False,
    reduction: str = "mean",
    chunk: int = 2048,
    dst_chunk: int = 16384,
) -> Tensor:
    """Chamfer distance of clouds ``[N, 3]`` and ``[M, 3]`` (metres, or m^2 with ``squared``).

    ``d_ab`` = mean over a of the distance to the nearest b, ``d_ba`` likewise;
    ``reduction="mean"`` returns ``(d_ab + d_ba) / 2`` (default), ``"sum"`` returns
    ``d_ab + d_ba`` (the convention of several LiDAR-forecasting papers, usually with
    ``squared=True``). Computed in float64 so that centimetre distances between points 70 m
    away are not lost to the ``|a|^2 + |b|^2 - 2ab`` cancellation inside ``cdist``; memory
    stays at ``chunk x dst_chunk`` distances.
    """
    for name, p in (("points_a", points_a), ("points_b", points_b)):
        if p.dim() != 2 or p.shape[1] != 3:
            raise ValueError(f"chamfer_distance: {name} must be [N, 3], got {tuple(p.shape)}")
        if p.shape[0] == 0:
            raise ValueError(f"chamfer_distance: {name} is empty")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    a = points_a.to(torch.float64)
    b = points_b.to(device=a.device, dtype=torch.float64)
    d_ab = _nearest(a, b, chunk, dst_chunk)
    d_ba = _nearest(b, a, chunk, dst_chunk)
    if squared:
        d_ab, d_ba = d_ab**2, d_ba**2
    total = d_ab.mean() + d_ba.mean()
    return total / 2 if reduction == "mean" else total


def bev_histogram(
    points: Tensor,
    field_size: float = 160.0,
    bins: int = 100,
    min_range: float = 3.0,
    max_range: float = 70.0,
) -> Tensor:
    """Counts of points per bird's-eye-view cell: ``[bins, bins]`` (x rows, y columns).

    The field is the square ``[-field_size/2, field_size/2)^2`` around the sensor; only points
    with ``min_range < ||p|| < max_range`` (3-D norm) are counted.
    """
    if points.dim() != 2 or points.shape[1] < 2:
        raise ValueError(f"bev_histogram: points must be [N, >=3], got {tuple(points.shape)}")
    r = points[:, :3].norm(dim=1)
    p = points[(r > min_range) & (r < max_range), :2].to(torch.float64)
    half = field_size / 2
    idx = torch.floor((p + half) / (field_size / bins)).long()
    inside = ((idx >= 0) & (idx < bins)).all(dim=1)
    idx = idx[inside]
    flat = idx[:, 0] * bins + idx[:, 1]
    return torch.bincount(flat, minlength=bins * bins).view(bins, bins).to(torch.float64)


def _as_batch(h: Tensor, name: str) -> Tensor:
    if h.dim() == 2:
        h = h[None]
    if h.dim() != 3:
        raise ValueError(f"{name} must be [bins, bins] or [N, bins, bins], got {tuple(h.shape)}")
    return h.to(torch.float64).flatten(1)


def bev_jsd(hists_a: Tensor, hists_b: Tensor, distance: bool = False) -> Tensor:
    """Jensen-Shannon divergence (nats, in [0, ln 2]) of two sets of BEV histograms.

    Each set is summed into one distribution and normalised (dataset level). With
    ``distance=True`` the square root is returned, which is what ``scipy.spatial.distance
    .jensenshannon`` (used by the LiDARGen / R2DM evaluation code) reports as "JSD".
    """
    p = _as_batch(hists_a, "hists_a").sum(0)
    q = _as_batch(hists_b, "hists_b").sum(0)
    if p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("bev_jsd: a histogram set has no points inside the field")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    # 0 log 0 = 0: terms where p (or q) is 0 contribute nothing.
    kl_pm = torch.where(p > 0, p * (p / m).log(), torch.zeros_like(p)).sum()
    kl_qm = torch.where(q > 0, q * (q / m).log(), torch.zeros_like(q)).sum()
    jsd = ((kl_pm + kl_qm) / 2).clamp_min(0.0)
    return jsd.sqrt() if distance else jsd


def bev_mmd(hists_a: Tensor, hists_b: Tensor, sigma: float = 0.5) -> Tensor:
    """Squared MMD between two sets of BEV histograms, Gaussian kernel (sigma 0.5).

    Each histogram is normalised to sum 1; the biased estimator (all pairs, diagonal included)
    ``mean k(a, a') + mean k(b, b') - 2 mean k(a, b)`` as in the LiDARGen / R2DM code.
    """
    a = _as_batch(hists_a, "hists_a")
    b = _as_batch(hists_b, "hists_b")
    if (a.sum(1) <= 0).any() or (b.sum(1) <= 0).any():
        raise ValueError("bev_mmd: a histogram has no points inside the field")
    a = a / a.sum(1, keepdim=True)
    b = b / b.sum(1, keepdim=True)

    def k(x: Tensor, y: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(x, y).pow(2) / (2 * sigma**2)).mean()

    return k(a, a) + k(b, b) - 2 * k(a, b)
