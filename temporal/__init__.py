"""Temporal latent fusion: TemporalModule, flow-guided cross-frame attention, alpha warmup,
continuity analysis; flow warping and estimation re-exported from `wavecast.warping` /
`wavecast.flow` (where the data pipeline can use them too).

Names are imported lazily, so `import temporal` pulls in neither Lightning (callbacks) nor
OpenCV (flow) until they are used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "warp": "wavecast.warping",
    "forward_splat": "wavecast.warping",
    "resize_flow": "wavecast.warping",
    "valid_mask": "wavecast.warping",
    "TemporalModule": "temporal.temporal_module",
    "MultiScaleTemporalFusion": "temporal.temporal_module",
    "WarpRefiner": "temporal.temporal_module",
    "LatentFlowPredictor": "temporal.temporal_module",
    "EdgePreservingLoss": "temporal.edge_loss",
    "edge_preserving_loss": "temporal.edge_loss",
    "sobel_gradients": "temporal.edge_loss",
    "estimate_flow": "wavecast.flow",
    "compose_flow": "wavecast.flow",
    "accumulate_flow": "wavecast.flow",
    "forward_backward_consistency": "wavecast.flow",
    "end_point_error": "wavecast.flow",
    "AlphaWarmup": "temporal.callbacks",
    "CrossFrameMemory": "temporal.flow_attention",
    "FlowGuidedAttnProcessor": "temporal.flow_attention",
    "flow_guided_attention": "temporal.flow_attention",
    "install_flow_attention": "temporal.flow_attention",
    "uninstall_flow_attention": "temporal.flow_attention",
    "ContinuityRecorder": "temporal.continuity",
    "adjacent_frame_metrics": "temporal.continuity",
    "predict_x0": "temporal.continuity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'temporal' has no attribute {name!r}")
