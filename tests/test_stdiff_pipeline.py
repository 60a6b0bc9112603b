"""STDiffPipeline: sampling loop, scheduler reset, seeding, batched futures, chunked roll-out."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from stdiff import STDiff, STDiffPipeline, stdiff_config
from stdiff.configs import DEFAULT_SCHEDULER_CONFIG
from stdiff.pipeline import STDiffPipelineOutput

pytestmark = pytest.mark.usefixtures("one_torch_thread")


IDX_O = torch.tensor([0.0, 1.0, 2.0])


def tiny(seed: int = 0, **overrides) -> STDiff:
    torch.manual_seed(seed)
    model = STDiff(**stdiff_config("tiny", **{"tde": {"dt": 0.5}, **overrides})).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-zero SDE nets and a less trivial UNet
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def clip(n: int = 2, t: int = 3, h: int = 16, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, t, 1, h, w, generator=g) * 2 - 1


def next_frame(previous: torch.Tensor) -> torch.Tensor:
    """The oracle's 'true' next frame given the previous one."""
    return 0.6 * previous + 0.2


def install_oracle(model: STDiff, log: list) -> None:
    """Replace the denoiser by the exact noise of ``x0 = next_frame(cond)``: every sampler must
    then return x0 exactly (clean-data predictions are exact at every step)."""
    abar = model.make_scheduler().alphas_cumprod

    def denoise(noisy, t, m, cond):
        a = abar[int(t)]
        log.append((int(t), cond.clone(), m))
        return (noisy - a.sqrt() * next_frame(cond)) / (1 - a).sqrt()

    model.denoise = denoise


@pytest.mark.parametrize("scheduler_type", [None, "ddpm", "ddim", "dpm"])
def test_oracle_denoiser_gives_the_true_autoregressive_chain(scheduler_type):
    model = tiny()
    log: list = []
    install_oracle(model, log)
    steps: list = []
    vo = clip()
    out = STDiffPipeline(model)(
        vo,
        IDX_O,
        torch.tensor([3.0, 3.5, 5.0]),
        num_inference_steps=6,
        num_samples=2,
        generator=torch.Generator().manual_seed(0),
        scheduler_type=scheduler_type,
        step_callback=lambda f, s, t, x, e: steps.append((f, s, int(t), x.shape, e.shape)),
    )
    frames = out["frames"]
    assert frames.shape == (2, 2, 3, 1, 16, 32)
    assert out["motion"].shape == (2, 2, 3, 16, 4, 8)
    want = []
    prev = vo[:, -1]
    for _ in range(3):
        prev = next_frame(prev.clamp(-1, 1))
        want.append(prev)
    want = torch.stack(want, dim=1)
    for k in range(2):
        assert torch.allclose(frames[k], want, atol=2e-4), (k, (frames[k] - want).abs().max())
    # The callback sees every step of every frame, in order, with [K, N, C, H, W] tensors.
    assert [(f, s) for f, s, *_ in steps] == [(f, s) for f in range(3) for s in range(6)]
    assert all(xs == es == (2, 2, 1, 16, 32) for *_, xs, es in steps)
    # Every frame's loop starts at the highest timestep again (fresh scheduler per frame).
    assert steps[0][2] == steps[6][2] == steps[12][2]


@torch.no_grad()
def test_scheduler_state_is_reset_for_every_frame():
    """A multistep DPM-Solver frame is the same whether or not another frame ran before it."""
    model = tiny()
    g = torch.Generator().manual_seed(0)
    m_a, m_b = torch.randn(2, 2, 16, 4, 8, generator=g).unbind(0)
    cond_a, cond_b = torch.rand(2, 2, 1, 16, 32, generator=g).unbind(0)
    noise_a, noise_b = torch.randn(2, 2, 1, 16, 32, generator=g).unbind(0)
    first = STDiffPipeline(model)
    first.sample_frame(m_a, cond_a, noise_a, 5, scheduler_type="dpm")
    after_a = first.sample_frame(m_b, cond_b, noise_b, 5, scheduler_type="dpm")
    alone = STDiffPipeline(model).sample_frame(m_b, cond_b, noise_b, 5, scheduler_type="dpm")
    assert torch.equal(after_a, alone)
    # The second-order history matters: a first-order solve of the same frame differs.
    first_order = STDiffPipeline(
        model,
        DDPMScheduler(**{k: v for k, v in DEFAULT_SCHEDULER_CONFIG.items() if k != "_class_name"}),
    )
    ddim = first_order.sample_frame(m_b, cond_b, noise_b, 5, scheduler_type="ddim")
    assert (ddim - alone).abs().max() > 1e-4


def test_seeded_reproducibility_and_independent_futures():
    model = tiny()
    pipe = STDiffPipeline(model)
    vo = clip(n=1)

    def run(seed, **kw):
        return pipe(
            vo,
            IDX_O,
            torch.tensor([3.0, 4.0]),
            num_inference_steps=3,
            num_samples=2,
            generator=torch.Generator().manual_seed(seed),
            **kw,
        )

    a = run(0)
    b = run(0, cache_motion=False)
    assert torch.equal(a["motion"], b["motion"])
    assert torch.allclose(a["frames"], b["frames"], atol=1e-5)  # caching changes nothing
    c = run(0)
    assert torch.equal(a["frames"], c["frames"]) and torch.equal(a["motion"], c["motion"])
    d = run(1)
    assert (a["frames"] - d["frames"]).abs().max() > 1e-2
    # The K futures are independent draws: different motion paths and different frames.
    assert (a["motion"][0] - a["motion"][1]).abs().max() > 1e-4
    assert (a["frames"][0] - a["frames"][1]).abs().max() > 1e-2


def test_chunked_rollout_feeds_back_the_last_predictions():
    model = tiny()
    log: list = []
    install_oracle(model, log)
    seen = []
    encode = model.tde.context_encode
    model.tde.context_encode = lambda v, t: seen.append((v.clone(), t.clone())) or encode(v, t)
    vo = clip(n=1)
    out = STDiffPipeline(model)(
        vo,
        IDX_O,
        torch.tensor([3.0, 4.0, 5.0, 6.0]),
        num_inference_steps=2,
        num_samples=2,
        chunk_horizon=3,
        generator=torch.Generator().manual_seed(0),
    )
    frames = out["frames"]  # [2, 1, 4, 1, 16, 32]
    assert len(seen) == 2
    assert torch.equal(seen[0][0], vo.repeat(2, 1, 1, 1, 1))
    assert torch.equal(seen[0][1], IDX_O)
    # Second chunk: context = the last To = 3 frames, all predictions, at times 3, 4, 5.
    assert torch.equal(seen[1][1], torch.tensor([3.0, 4.0, 5.0]))
    assert torch.equal(seen[1][0], frames[:, 0, :3].clamp(-1, 1))
    assert out["motion"].shape == (2, 1, 4, 16, 4, 8)
    # The previous frame carries over the chunk boundary.
    assert torch.allclose(frames[:, 0, 3], next_frame(frames[:, 0, 2].clamp(-1, 1)), atol=2e-4)


def test_sampler_uses_the_stored_schedule():
    model = tiny()
    pipe = STDiffPipeline(model)
    assert torch.equal(pipe.scheduler.alphas_cumprod, model.make_scheduler().alphas_cumprod)
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    for kind in ("ddpm", "ddim", "dpm"):
        assert torch.allclose(
            pipe.make_scheduler(kind).alphas_cumprod, pipe.scheduler.alphas_cumprod
        )
    linear = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    with pytest.raises(ValueError, match="differs from the one stored"):
        STDiffPipeline(model, linear)
    with pytest.raises(ValueError, match="scheduler_type"):
        pipe.make_scheduler("euler")


def test_super_resolution_and_non_autoregressive_sampling():
    sr = tiny(super_res_training=True)
    log: list = []
    install_oracle(sr, log)
    vo = clip(h=8, w=16)
    out = STDiffPipeline(sr)(vo, IDX_O, torch.tensor([3.0, 4.0]), num_inference_steps=2)
    assert out["frames"].shape == (1, 2, 2, 1, 16, 32)
    assert out["motion"].shape[-2:] == (2, 4)  # motion at the observed resolution
    # The previous frame of frame 2 is frame 1 degraded to the observed size and back.
    cond_frame2 = log[2][1]
    assert torch.allclose(
        cond_frame2, sr.degrade(out["frames"][0, :, 0], (8, 16)).clamp(-1, 1), atol=1e-6
    )

    nar = tiny(autoregressive=False, concat_observed=True, unet={"in_channels": 4})
    out = STDiffPipeline(nar)(clip(), IDX_O, torch.tensor([3.0]), num_inference_steps=2)
    assert out["frames"].shape == (1, 2, 1, 1, 16, 32)
    with pytest.raises(ValueError, match="frame_size"):
        STDiffPipeline(nar)(clip(), IDX_O, torch.tensor([3.0]), frame_size=(32, 64))


def test_conditioning_frames_are_clamped_to_the_data_range():
    """Observed frames may leave [-1, 1] (a sensor's outliers, a badly scaled input): what
    conditions the next frame is clamped to the data range, in both conditioning modes."""
    model = tiny()
    log: list = []
    install_oracle(model, log)
    vo = clip() * 3  # observed values up to +-3
    out = STDiffPipeline(model)(vo, IDX_O, torch.tensor([3.0, 4.0]), num_inference_steps=2)
    # written out: frame 0 from the clamped last observation, frame 1 from the clamped frame 0
    prev = torch.clamp(vo[:, -1], -1, 1)
    assert (
        vo[:, -1].abs().max() > 2 and torch.equal(log[0][1], prev) and torch.equal(log[1][1], prev)
    )
    frame0 = out["frames"][0, :, 0]
    assert torch.allclose(frame0, next_frame(prev), atol=2e-4)
    assert torch.equal(log[2][1], torch.clamp(frame0, -1, 1))
    # Non-autoregressive: the observed frames as extra channels, clamped.
    nar = tiny(autoregressive=False, concat_observed=True, unet={"in_channels": 4})
    seen: list = []
    nar.unet.register_forward_pre_hook(lambda mod, args: seen.append(args[0][:, 1:].clone()))
    STDiffPipeline(nar)(vo, IDX_O, torch.tensor([3.0]), num_inference_steps=1)
    assert torch.equal(seen[0], torch.clamp(vo[:, :, 0], -1, 1))


def test_output_reads_as_fields_and_as_a_mapping_of_what_is_set():
    out = STDiffPipeline(tiny())(clip(n=1), IDX_O, torch.tensor([3.0]), num_inference_steps=1)
    assert isinstance(out, STDiffPipelineOutput)
    assert out.frames is out["frames"] and set(out) == {"frames", "motion", "idx_p"}
    assert "truncation" not in out and out.get("truncation") is None and out.truncation is None
    with pytest.raises(KeyError):
        out["cross_frame"]
