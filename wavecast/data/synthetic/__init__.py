"""Deterministic synthetic KITTI raw: a procedural street seen by a 64-beam LiDAR and 4 cameras.

`generate_synthetic_kitti(root, size, seed)` writes drives in the exact KITTI raw layout (images,
velodyne scans, oxts, timestamps, calibration) plus ground truth beside them (poses, camera
optical flow with occlusion masks, clean range images) and a SYNTHETIC.json manifest.
`SYNTHETIC_DRIVES` maps split -> drive folder names.
"""

from wavecast.data.synthetic.writer import SYNTHETIC_DRIVES, generate_synthetic_kitti

__all__ = ["SYNTHETIC_DRIVES", "generate_synthetic_kitti"]
