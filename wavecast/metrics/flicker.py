"""Temporal flicker of a reconstructed / predicted video against its original, over time.

The reference validation subtracts neighbouring *channels* (its tensors are ``[(B T), C, H, W]``
when it indexes ``[:, 1:]``) and mixes reconstruction and input in one difference; these metrics
difference neighbouring *frames* instead.

- :func:`temporal_flicker` -- temporal-difference error: for consecutive frames t, t+1,
  ``mean_{C,H,W} |(y_{t+1} - y_t) - (x_{t+1} - x_t)|`` with ``y`` the prediction and ``x`` the
  original. Zero when the prediction changes exactly as the original does (a constant per-video
  error does not count); any frame-to-frame change the original does not have counts.
- :func:`brightness_flicker` -- the same on per-frame mean intensities only
  ``|(m_y(t+1) - m_y(t)) - (m_x(t+1) - m_x(t))|``: global brightness pumping.

Both are in [0, 1] units (inputs mapped from ``value_range`` like PSNR) and returned per frame
pair, ``[B, T - 1]``; ``.mean()`` gives the usual scalar.
"""

from __future__ import annotations

from torch import Tensor

from wavecast.metrics.image import to_unit_frames


def _frames(
    pred: Tensor, target: Tensor, layout: str, value_range: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    if pred.dim() != 5:
        raise ValueError(f"flicker needs videos (5-D), got {tuple(pred.shape)}")
    fy, fx, lead = to_unit_frames(pred, target, layout, value_range)
    b, t = lead
    if t < 2:
        raise ValueError(f"flicker needs at least 2 frames, got T={t}")
    return fy.view(b, t, *fy.shape[1:]), fx.view(b, t, *fx.shape[1:])


def temporal_flicker(
    pred: Tensor,
    target: Tensor,
    layout: str = "bcthw",
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> Tensor:
    """Temporal-difference error per consecutive frame pair: ``[B, T - 1]``."""
    y, x = _frames(pred, target, layout, value_range)
    dy = y[:, 1:] - y[:, :-1]
    dx = x[:, 1:] - x[:, :-1]
    return (dy - dx).abs().mean(dim=(2, 3, 4))


def brightness_flicker(
    pred: Tensor,
    target: Tensor,
    layout: str = "bcthw",
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> Tensor:
    """Error of the change in mean frame intensity per consecutive pair: ``[B, T - 1]``."""
    y, x = _frames(pred, target, layout, value_range)
    my, mx = y.mean(dim=(2, 3, 4)), x.mean(dim=(2, 3, 4))
    return ((my[:, 1:] - my[:, :-1]) - (mx[:, 1:] - mx[:, :-1])).abs()
