"""Start-up checks of values torch would refuse only once fitting starts."""

from __future__ import annotations

import pytest

from tests.conftest import compose
from wavecast.config import ConfigError
from wavecast.run import check_optimizers


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.optimizer.lr=-1", r"model\.optimizer\.lr=-1: must be > 0"),
        ("model.optimizer.lr=0", r"model\.optimizer\.lr=0: must be > 0"),
        ("model.optimizer.weight_decay=-0.1", r"model\.optimizer\.weight_decay=-0\.1"),
    ],
)
def test_bad_optimizer_values_are_named_at_start_up(tmp_path, override, message):
    cfg = compose("train.yaml", ["experiment=wfvae_kitti_tiny", override], tmp_path)
    with pytest.raises(ConfigError, match=message):
        check_optimizers(cfg)


def test_discriminator_optimizer_is_checked_too(tmp_path):
    cfg = compose(
        "train.yaml", ["experiment=wfvae_kitti_gan_tiny", "model.disc_optimizer.lr=-2"], tmp_path
    )
    with pytest.raises(ConfigError, match=r"model\.disc_optimizer\.lr=-2"):
        check_optimizers(cfg)
    check_optimizers(compose("train.yaml", ["experiment=stdiff_kitti_range_tiny"], tmp_path))
