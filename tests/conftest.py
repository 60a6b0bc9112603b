"""Shared fixtures: Hydra config composition and the synthetic KITTI (generated once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
# Reference tensors of the published implementations: ../shared/reference beside the checkout.
REFERENCE_DIR = Path(os.environ.get("WAVECAST_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))

os.environ.setdefault("WAVECAST_ROOT", str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))

from wavecast.resolvers import register_resolvers  # noqa: E402

register_resolvers()


def compose(config_name: str, overrides: list[str], output_dir: Path):
    """Compose a config like train.py does, with the run directory pointed at `output_dir`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module of small tensors: on the shared 2-core machine a
    second OpenMP thread mostly waits. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def synthetic_kitti(tmp_path_factory) -> Path:
    """The small synthetic KITTI in the real raw layout, shared by every test of the session."""
    from wavecast.data.synthetic import generate_synthetic_kitti

    root = tmp_path_factory.mktemp("synthetic_kitti")
    return generate_synthetic_kitti(root, size="small", seed=0)


def require_reference(path: Path) -> Path:
    """Skip locally when a reference fixture is absent; in CI (CI=true) that is a failure."""
    if not path.exists():
        msg = f"reference fixture {path} not available (set WAVECAST_REFERENCE_DIR)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path
