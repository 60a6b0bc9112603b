"""Temporal latent fusion: TemporalModule, flow warping and estimation, flow-guided cross-frame
attention, alpha warmup, continuity analysis.

Names are imported lazily, so `import temporal` pulls in neither Lightning (callbacks) nor
OpenCV (flow) until they are used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "warp": "temporal.warping",
    "forward_splat": "temporal.warping",
    "resize_flow": "temporal.warping",
    "valid_mask": "temporal.warping",
    "TemporalModule": "temporal.temporal_module",
    "MultiScaleTemporalFusion": "temporal.temporal_module",
    "WarpRefiner": "temporal.temporal_module",
    "LatentFlowPredictor": "temporal.temporal_module",
    "EdgePreservingLoss": "temporal.edge_loss",
    "edge_preserving_loss": "temporal.edge_loss",
    "sobel_gradients": "temporal.edge_loss",
    "estimate_flow": "temporal.flow",
    "compose_flow": "temporal.flow",
    "accumulate_flow": "temporal.flow",
    "forward_backward_consistency": "temporal.flow",
    "end_point_error": "temporal.flow",
    "AlphaWarmup": "temporal.callbacks",
    "CrossFrameMemory": "temporal.flow_attention",
    "FlowGuidedAttnProcessor": "temporal.flow_attention",
    "flow_guided_attention": "temporal.flow_attention",
    "install_flow_attention": "temporal.flow_attention",
    "uninstall_flow_attention": "temporal.flow_attention",
    "ContinuityRecorder": "temporal.continuity",
    "adjacent_frame_metrics": "temporal.continuity",
    "predict_x0": "temporal.continuity",
    "frame_truncation_schedule": "temporal.continuity",
    "interpolate_from_key_frames": "temporal.continuity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'temporal' has no attribute {name!r}")
