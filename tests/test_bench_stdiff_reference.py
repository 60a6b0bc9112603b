"""scripts/bench/stdiff_reference.py: the published step is timed at our reduced preset."""

import pytest

from scripts.bench.stdiff_reference import reference_reduced_config, reference_step_case
from stdiff import STDiff, stdiff_config
from stdiff.reference import translate_config


def test_reference_config_is_the_reduced_preset():
    """The published kitti_range config scaled to 64 x 128 builds, through the checkpoint
    translation, the same network as stdiff_config("reduced"): same parameter shapes."""
    cfg = reference_reduced_config()
    assert cfg["unet"]["sample_size"] == [64, 128]
    assert cfg["tde"]["MotionEncoder"]["image_size"] == [64, 128]
    ours = STDiff(**stdiff_config("reduced"))
    theirs = STDiff(**translate_config(cfg))
    shapes = {k: tuple(v.shape) for k, v in ours.named_parameters()}
    assert shapes == {k: tuple(v.shape) for k, v in theirs.named_parameters()}
    # The spec's figure for the reduced configuration.
    assert round(sum(p.numel() for p in ours.parameters()) / 1e6, 1) == 12.8


def test_reference_step_names_a_wrong_checkout(tmp_path):
    with pytest.raises(FileNotFoundError, match="--reference-stdiff"):
        reference_step_case(str(tmp_path), [], 1, 1)
