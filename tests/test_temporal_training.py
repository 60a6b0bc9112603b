"""TemporalFusionModule: frozen VAE, flow plumbing, VAE weights and checkpoints in process; then
train.py runs as a user starts them: alpha ramp and gradients read back from the offline wandb
file, and a 2-process DDP run ending with the same alpha and weights on both ranks."""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from temporal.module import TemporalFusionModule, carry_forward, tensor_digest
from temporal.temporal_module import TemporalModule
from tests.test_train_run import column, only_run_dir, read_metrics, run_train
from wavecast.config import ConfigError
from wavecast.wandb_reader import find_run_file, histogram_keys, read_history
from wfvae.losses import WFVAELoss
from wfvae.model import WFVAE
from wfvae.module import WFVAEModule

# The temporal_kitti_tiny warmup, 0.1 -> 0.5 over 6 steps (+1/15 per step), by hand.
RAMP_6_STEPS = [0.1, 0.16666667, 0.23333333, 0.3, 0.36666667, 0.43333333, 0.5]

TINY_VAE = dict(
    latent_dim=4,
    base_channels=8,
    encoder_num_resblocks=1,
    decoder_num_resblocks=1,
    encoder_energy_flow_hidden_size=8,
    decoder_energy_flow_hidden_size=8,
)


def _vae(seed: int = 0, **kw) -> WFVAE:
    torch.manual_seed(seed)
    return WFVAE(**{**TINY_VAE, **kw})


def _module(vae: WFVAE | None = None, **kw) -> TemporalFusionModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the vae_ckpt=None smoke-test warning
        return TemporalFusionModule(
            vae if vae is not None else _vae(),
            TemporalModule(4, alpha_init=0.3, refiner_hidden=8),
            optimizer=functools.partial(torch.optim.AdamW, lr=1e-2),
            **kw,
        )


def _batch(b: int = 2, h: int = 16, w: int = 32, dx: float = 0.0, dy: float = 0.0) -> dict:
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(b, 2, 3, h, w, generator=g) * 2 - 1
    flow = torch.zeros(b, 2, h, w)
    flow[:, 0], flow[:, 1] = dx, dy
    return {"frames": frames, "flow": flow, "flow_valid": torch.ones(b, 1, h, w, dtype=torch.bool)}


# ----------------------------------------------------------------------------------------------
# In process


def test_vae_frozen_only_temporal_trained() -> None:
    module = _module()
    module.train()
    assert not module.vae.training and module.temporal.training
    assert not any(p.requires_grad for p in module.vae.parameters())
    opt = module.configure_optimizers()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in module.temporal.parameters()}
    vae_before = tensor_digest(module.vae)
    loss, terms = module.losses(module.fuse(_batch(dx=3.0, dy=-1.0)))
    assert set(terms) == {"rec", "latent", "warp", "temporal"}
    loss.backward()
    assert all(p.grad is None for p in module.vae.parameters())
    for name, p in module.temporal.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    params_before = [p.detach().clone() for p in module.temporal.parameters()]
    opt.step()
    assert tensor_digest(module.vae) == vae_before
    assert any(not torch.equal(a, p) for a, p in zip(params_before, module.temporal.parameters()))
    module.eval()
    module.train()  # Lightning switches back and forth: the VAE stays in eval
    assert not module.vae.training


def test_flow_reaches_the_latent_grid_resized_and_scaled() -> None:
    module = _module()
    b, h, w = 1, 32, 64
    flow = torch.zeros(b, 2, h, w)
    flow[:, 0], flow[:, 1] = 8.0, -16.0  # one and minus two latent pixels
    valid = torch.ones(b, 1, h, w, dtype=torch.bool)
    valid[..., 0, 0] = False  # 1 of the 64 pixels of latent pixel (0, 0)
    valid[..., 8:16, 16:24] = False  # all of latent pixel (1, 2)
    flow_lat, valid_lat = module.latent_flow(flow, valid, (4, 8))
    torch.testing.assert_close(flow_lat[:, 0], torch.full((b, 4, 8), 1.0))
    torch.testing.assert_close(flow_lat[:, 1], torch.full((b, 4, 8), -2.0))
    expected = torch.ones(b, 1, 4, 8, dtype=torch.bool)
    expected[..., 1, 2] = False
    assert torch.equal(valid_lat, expected)
    # through fuse: the warped latent is z_prev moved one latent pixel right
    f = module.fuse(_batch(1, h, w, dx=8.0))
    torch.testing.assert_close(f["aux"]["z_warp"][..., 1:], f["z_prev"][..., :-1])


@pytest.mark.parametrize("mode", ["splat", "backward"])
def test_carry_forward_translation(mode: str) -> None:
    x_prev = torch.rand(1, 3, 8, 10, generator=torch.Generator().manual_seed(2))
    x_cur = torch.roll(x_prev, shifts=(1, 2), dims=(2, 3))  # dx = 2, dy = 1
    flow = torch.zeros(1, 2, 8, 10)
    flow[:, 0], flow[:, 1] = 2.0, 1.0
    valid = torch.ones(1, 1, 8, 10, dtype=torch.bool)
    valid[..., 3, 4] = False  # lands on (4, 6) at time t
    carried, defined = carry_forward(x_prev, flow, valid, mode)
    if mode == "splat":
        expected = torch.zeros(1, 1, 8, 10)
        expected[..., 1:, 2:] = 1
        expected[..., 4, 6] = 0  # nothing else lands there
    else:  # read at the target: valid(p) and p - flow(p) inside
        expected = torch.zeros(1, 1, 8, 10)
        expected[..., 1:, 2:] = 1
        expected[..., 3, 4] = 0
    torch.testing.assert_close(defined, expected)
    m = defined.bool().expand_as(x_cur)
    torch.testing.assert_close(carried[m], x_cur[m])


def _wfvae_run_checkpoint(vae: WFVAE) -> dict:
    """What a WF-VAE training run saves (state_dict under `net.`, `wavecast` metadata)."""
    run = WFVAEModule(vae, WFVAELoss(perceptual_weight=0.0), optimizer=torch.optim.AdamW)
    ckpt = {"state_dict": run.state_dict(), "epoch": 3}
    run.on_save_checkpoint(ckpt)
    return ckpt


def test_vae_weights_from_run_checkpoint_or_state_dict(tmp_path: Path) -> None:
    trained = _vae(seed=5)
    run_ckpt, plain = tmp_path / "wfvae_run.ckpt", tmp_path / "wfvae_state.pt"
    torch.save(_wfvae_run_checkpoint(trained), run_ckpt)
    torch.save(trained.state_dict(), plain)
    for path in (run_ckpt, plain):
        module = _module(_vae(seed=0), vae_ckpt=str(path))
        assert tensor_digest(module.vae) == tensor_digest(trained)
    with pytest.raises(ConfigError, match=r"model\.vae\.base_channels: checkpoint 16 vs config 8"):
        torch.save(_wfvae_run_checkpoint(_vae(base_channels=16)), run_ckpt)
        _module(vae_ckpt=str(run_ckpt))
    with pytest.raises(ConfigError, match=r"model\.vae_ckpt.*missing\.ckpt"):
        _module(vae_ckpt=str(tmp_path / "missing.ckpt"))
    torch.save({"state_dict": {}, "wavecast": {"model": "stdiff"}}, run_ckpt)
    with pytest.raises(ConfigError, match="stdiff"):
        _module(vae_ckpt=str(run_ckpt))
    with pytest.raises(ConfigError, match="channels=4 must equal the VAE's latent_dim"):
        _module(_vae(latent_dim=8))


def test_checkpoint_leaves_out_frozen_vae_and_restores_it() -> None:
    module = _module(_vae(seed=0))
    with torch.no_grad():
        module.temporal.alpha_param.fill_(0.7)
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert ckpt["state_dict"] and not any(k.startswith("vae.") for k in ckpt["state_dict"])
    assert ckpt["wavecast"]["model"] == "temporal"
    assert ckpt["wavecast"]["vae_digest"] == tensor_digest(module.vae)

    same = _module(_vae(seed=0))
    same.on_load_checkpoint(ckpt)
    same.load_state_dict(ckpt["state_dict"], strict=True)
    assert tensor_digest(same.temporal) == tensor_digest(module.temporal)
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("vae.")}
    with pytest.warns(UserWarning, match="other WF-VAE weights"):
        _module(_vae(seed=1)).on_load_checkpoint(ckpt)
    with pytest.raises(ConfigError, match=r"model\.vae\.latent_dim"):
        other = _module(_vae(seed=0))
        other.vae.config["latent_dim"] = 99
        other.on_load_checkpoint(ckpt)


def test_check_data_rejects_bad_sizes_and_clips() -> None:
    module = _module()

    class _DM:
        clip_length, frame_size = 2, (36, 64)

    with pytest.raises(ConfigError, match="divisible by 8"):
        module.check_data(_DM())
    _DM.clip_length, _DM.frame_size = 9, (32, 64)
    with pytest.raises(ConfigError, match="kitti_flow_pairs"):
        module.check_data(_DM())


# ----------------------------------------------------------------------------------------------
# train.py in a subprocess


def _run_config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config_tree.yaml").read_text())


def test_tiny_run_logs_alpha_ramp_and_gradients(tmp_path: Path, synthetic_kitti: Path) -> None:
    run_train(
        [
            "experiment=temporal_kitti_tiny",
            f"data.root={synthetic_kitti}",
            "logger=[csv,wandb]",
            "logger.wandb.offline=true",
        ],
        tmp_path,
    )
    run_dir = only_run_dir(tmp_path)
    warm = _run_config(run_dir)["callbacks"]["alpha_warmup"]
    steps, start, target = warm["steps"], warm["start"], warm["target"]
    assert (steps, start, target) == (6, 0.1, 0.5)

    rows = read_history(find_run_file(run_dir))
    alpha = {
        int(r["trainer/global_step"]): r["alpha/value"]
        for r in rows
        if "alpha/value" in r and "trainer/global_step" in r
    }
    assert sorted(alpha) == list(range(10))
    for s in range(steps + 1):  # the ramp, then the hand-over at the target
        assert alpha[s] == pytest.approx(RAMP_6_STEPS[s], abs=1e-6), s
    # the learned alpha after the warmup: the forward used it, and the optimizer moved it
    used = {
        int(r["trainer/global_step"]): r["train/alpha_used"]
        for r in rows
        if "train/alpha_used" in r
    }
    assert all(alpha[s] == pytest.approx(used[s], abs=1e-6) for s in range(10))
    assert alpha[9] != pytest.approx(target, abs=1e-5)

    names = [
        "temporal.alpha_param",
        "temporal.refiner.net.0.weight",
        "temporal.refiner.net.0.bias",
        "temporal.refiner.net.2.weight",
        "temporal.refiner.net.2.bias",
    ]
    hists = histogram_keys(rows)
    assert {f"grad_hist/{n}" for n in names} <= hists
    assert not any("vae" in k for k in hists)
    for n in names:
        norms = [r[f"grad_norm/{n}"] for r in rows if f"grad_norm/{n}" in r]
        assert len(norms) == 10, n
    # zero gradient for alpha during the warmup, a real one after it
    alpha_norms = [
        r["grad_norm/temporal.alpha_param"] for r in rows if "grad_norm/temporal.alpha_param" in r
    ]
    assert all(v == 0.0 for v in alpha_norms[:steps]) and alpha_norms[-1] > 0

    csv_rows = read_metrics(run_dir)
    assert len(column(csv_rows, "train/loss")) == 10
    assert column(csv_rows, "alpha/value") == pytest.approx([alpha[s] for s in range(10)])
    assert column(csv_rows, "val/psnr") and column(csv_rows, "val/temporal_error")
    assert list((run_dir / "media").glob("val_prev_cur_warp_fused_*.png"))

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 10 and ckpt["wavecast"]["model"] == "temporal"
    assert not any(k.startswith("vae.") for k in ckpt["state_dict"])
    assert "temporal.alpha_param" in ckpt["state_dict"]


def test_ddp_ranks_end_with_same_alpha(tmp_path: Path, synthetic_kitti: Path) -> None:
    """trainer=ddp_sim: 2 CPU processes (gloo); Lightning re-executes train.py for rank 1."""
    run_train(
        [
            "experiment=temporal_kitti_tiny",
            f"data.root={synthetic_kitti}",
            "trainer=ddp_sim",
            "logger=csv",
            "callbacks.media.every_n_epochs=100",
            "model.final_state_dir=${paths.output_dir}",
        ],
        tmp_path,
    )
    run_dir = only_run_dir(tmp_path)  # both ranks in one run directory
    states = [json.loads((run_dir / f"rank{k}_final.json").read_text()) for k in (0, 1)]
    for k, s in enumerate(states):
        assert s["rank"] == k and s["world_size"] == 2 and s["global_step"] == 10
    assert states[0]["alpha"] == states[1]["alpha"]
    assert states[0]["alpha_param"] == states[1]["alpha_param"]
    assert states[0]["temporal_digest"] == states[1]["temporal_digest"]
    # past the 6-step warmup: the learned alpha has moved away from the hand-over value
    assert states[0]["alpha"] != pytest.approx(0.5, abs=1e-5)
    logged = column(read_metrics(run_dir), "alpha/value")
    assert len(logged) == 10
    for s in range(7):
        assert logged[s] == pytest.approx(RAMP_6_STEPS[s], abs=1e-6), s
