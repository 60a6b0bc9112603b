"""STDiff sampling options: frame truncation and flow-guided cross-frame attention; the UNet's
attention-processor hook and the fast normalisation paths they rely on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stdiff import STDiff, STDiffPipeline
from stdiff.spade import GROUP_NORM_MIN_PIXELS, instance_norm
from stdiff.truncation import autoregressive_truncation_schedule, frame_truncation_schedule
from temporal.flow_attention import CrossFrameMemory
from tests.test_stdiff_pipeline import clip, next_frame, tiny
from wavecast.flow import estimate_flow

pytestmark = pytest.mark.usefixtures("one_torch_thread")


IDX_O = torch.tensor([0.0, 1.0, 2.0])
IDX_P = torch.tensor([3.0, 4.0, 5.0, 6.0, 7.0])
STEPS = 6


def nar(seed: int = 0) -> STDiff:
    return tiny(seed, autoregressive=False, concat_observed=True, unet={"in_channels": 4})


def moving_clip(n: int = 1, t: int = 3, shift: int = 2) -> torch.Tensor:
    """A smooth pattern moving right by ``shift`` pixels per frame, [N, T, 1, 16, 32]."""
    x = torch.linspace(0, 6.283, 32)
    y = torch.linspace(0, 3.1416, 16)
    base = (torch.sin(2 * x)[None, :] * torch.cos(y)[:, None]) * 0.8
    frames = [torch.roll(base, i * shift, dims=1) for i in range(t)]
    return torch.stack(frames)[None, :, None].repeat(n, 1, 1, 1, 1)


def sample(pipe: STDiffPipeline, vo: torch.Tensor, seed: int = 0, **kw) -> dict:
    kw.setdefault("scheduler_type", "ddim")
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(vo, IDX_O, IDX_P, generator=torch.Generator().manual_seed(seed), **kw)


def install_ar_oracle(model: STDiff, log: list) -> None:
    """Exact noise of ``x0 = next_frame(cond)``: every sampler then lands on x0 exactly."""
    abar = model.make_scheduler().alphas_cumprod

    def denoise(noisy, t, m, cond):
        a = abar[int(t)]
        log.append(int(t))
        return (noisy - a.sqrt() * next_frame(cond)) / (1 - a).sqrt()

    model.denoise = denoise


def motion_target(m: torch.Tensor) -> torch.Tensor:
    """The non-autoregressive oracle's clean frame of motion ``m [B, M, 4, 8]``: [B, 1, 16, 32]."""
    return F.interpolate(torch.tanh(m.mean(1, keepdim=True)), scale_factor=4, mode="nearest")


def install_nar_oracle(model: STDiff, log: list) -> None:
    abar = model.make_scheduler().alphas_cumprod

    def denoise(noisy, t, m, cond):
        a = abar[int(t)]
        log.append(noisy.shape[0])
        return (noisy - a.sqrt() * motion_target(m)) / (1 - a).sqrt()

    model.denoise = denoise


# ---------------------------------------------------------------------------- frame truncation
def test_trivial_truncation_is_full_sampling():
    model = tiny()
    pipe = STDiffPipeline(model)
    vo = clip()
    full = sample(pipe, vo, num_samples=2)
    for opts in (
        {"key_every": 2, "switch_fraction": 0.0},
        {"key_every": 1, "switch_fraction": 0.5},
    ):
        out = sample(pipe, vo, num_samples=2, frame_truncation=opts)
        assert torch.equal(out["frames"], full["frames"]), opts
        assert out["truncation"]["evaluations"] == out["truncation"]["full_evaluations"]
    # Non-autoregressive: all frames batched through every step == one after another. In
    # float64: in float32 the two batch shapes round differently (~1e-4 after 6 steps).
    model = nar().double()
    pipe = STDiffPipeline(model)
    full = sample(pipe, vo.double())
    batched = sample(pipe, vo.double(), frame_truncation={"key_every": 2, "switch_fraction": 0.0})
    assert batched["frames"].dtype == torch.float64
    assert torch.allclose(batched["frames"], full["frames"], atol=1e-9)


@pytest.mark.parametrize("scheduler_type", ["ddim", "ddpm", "dpm"])
@pytest.mark.parametrize("ar_init", ["key_state", "previous_frame"])
def test_autoregressive_truncation_runs_the_late_steps_of_non_key_frames(scheduler_type, ar_init):
    model = tiny()
    log: list = []
    install_ar_oracle(model, log)
    seen: dict = {}
    vo = clip()
    opts = {"key_every": 2, "switch_fraction": 0.5, "ar_init": ar_init}
    out = sample(
        STDiffPipeline(model),
        vo,
        num_samples=2,
        scheduler_type=scheduler_type,
        frame_truncation=opts,
        step_callback=lambda f, s, t, x, e: seen.setdefault((f, s), x.clone()),
    )
    schedule = autoregressive_truncation_schedule(5, STEPS, 2, 0.5)
    assert schedule.key_frames == [0, 2, 4] and schedule.switch_step == 3
    # UNet evaluations: 3 key frames x 6 steps + 2 non-key frames x 3 steps.
    assert len(log) == out["truncation"]["evaluations"] == schedule.evaluations == 24
    assert sorted(f for f, s in seen if s == 0) == [0, 2, 4]
    assert sorted(f for f, s in seen if s == 3) == [0, 1, 2, 3, 4]
    if ar_init == "key_state":  # a non-key frame starts where its key frame was at the switch
        assert torch.equal(seen[(1, 3)], seen[(0, 3)])
        assert torch.equal(seen[(3, 3)], seen[(2, 3)])
    # The clean-data oracle makes every sampler exact from any start: the chain is unchanged.
    want, prev = [], vo[:, -1]
    for _ in range(5):
        prev = next_frame(prev.clamp(-1, 1))
        want.append(prev)
    want = torch.stack(want, dim=1)
    for k in range(2):
        assert torch.allclose(out["frames"][k], want, atol=2e-4)


def test_autoregressive_schedule_needs_no_last_key_frame():
    schedule = autoregressive_truncation_schedule(6, 10, 2, 0.5)
    assert schedule.key_frames == [0, 2, 4] and schedule.switch_step == 5
    assert schedule.evaluations == 3 * 10 + 3 * 5
    assert schedule.frames_at(4) == [0, 2, 4] and schedule.frames_at(5) == list(range(6))
    assert frame_truncation_schedule(6, 10, 2, 0.5).key_frames == [0, 2, 4, 5]  # interpolation
    full = autoregressive_truncation_schedule(6, 10, 2, 0.0)
    assert full.key_frames == list(range(6)) and full.evaluations == 60


def test_non_autoregressive_truncation_interpolates_the_key_frames():
    model = nar()
    log: list = []
    install_nar_oracle(model, log)
    seen: dict = {}
    vo = clip(n=1)
    out = sample(
        STDiffPipeline(model),
        vo,
        frame_truncation={"key_every": 3, "switch_fraction": 0.5, "renoise": False},
        step_callback=lambda f, s, t, x, e: seen.setdefault((f, s), x.clone()),
    )
    schedule = frame_truncation_schedule(5, STEPS, 3, 0.5)
    assert schedule.key_frames == [0, 3, 4]
    # Batched calls: 3 key frames for 3 steps, then all 5 frames for 3 steps.
    assert log == [3] * 3 + [5] * 3
    assert out["truncation"]["evaluations"] == schedule.evaluations == 24
    # At the switch step, frame 1 = 2/3 frame 0 + 1/3 frame 3 and frame 2 = 1/3 + 2/3.
    s = schedule.switch_step
    assert torch.allclose(seen[(1, s)], (2 * seen[(0, s)] + seen[(3, s)]) / 3, atol=1e-6)
    assert torch.allclose(seen[(2, s)], (seen[(0, s)] + 2 * seen[(3, s)]) / 3, atol=1e-6)
    # With an exact denoiser every frame, key or not, ends on its own clean frame.
    want = torch.stack([motion_target(m) for m in out["motion"][0].unbind(1)], dim=1)
    assert torch.allclose(out["frames"][0], want, atol=2e-4)
    # switch_fraction 1: the non-key frames are interpolated clean key frames, no UNet call.
    log.clear()
    only_keys = sample(
        STDiffPipeline(model), vo, frame_truncation={"key_every": 3, "switch_fraction": 1.0}
    )
    assert log == [3] * STEPS
    f = only_keys["frames"][0, 0]
    assert torch.allclose(f[1], (2 * f[0] + f[3]) / 3, atol=1e-6)


def test_bad_truncation_options_are_named():
    pipe = STDiffPipeline(tiny())
    vo = clip(n=1)
    with pytest.raises(ValueError, match="missing"):
        sample(pipe, vo, frame_truncation={"key_every": 2})
    with pytest.raises(ValueError, match="unknown"):
        sample(pipe, vo, frame_truncation={"key_every": 2, "switch_fraction": 0.5, "x": 1})
    with pytest.raises(ValueError, match="ar_init"):
        sample(pipe, vo, frame_truncation={"key_every": 2, "switch_fraction": 0.5, "ar_init": 1})
    with pytest.raises(ValueError, match="key_every"):
        sample(pipe, vo, frame_truncation={"key_every": 0, "switch_fraction": 0.5})
    with pytest.raises(ValueError, match="cannot"):
        sample(
            STDiffPipeline(nar()),
            vo,
            frame_truncation={"key_every": 2, "switch_fraction": 0.5},
            cross_frame_attention={"memory_bank_size": 2},
        )
    with pytest.raises(ValueError, match="cross_frame_attention"):
        sample(pipe, vo, cross_frame_attention={"bank": 2})


# ---------------------------------------------------------------------------- cross-frame attention
def test_cross_frame_attention_off_is_bit_identical():
    model = tiny()
    pipe = STDiffPipeline(model)
    vo = moving_clip(n=2)
    plain = sample(pipe, vo, num_samples=2)
    assert "cross_frame" not in plain
    for off in (None, CrossFrameMemory(enabled=False), {"enabled": False}):
        assert torch.equal(
            sample(pipe, vo, num_samples=2, cross_frame_attention=off)["frames"], plain["frames"]
        )
    # After a roll-out with it on, the processors are gone: sampling is plain again.
    sample(pipe, vo, num_samples=2, cross_frame_attention={"memory_bank_size": 2})
    assert all(block.processor is None for _, block in model.unet.attention_blocks())
    assert torch.equal(sample(pipe, vo, num_samples=2)["frames"], plain["frames"])


def test_cross_frame_attention_changes_the_roll_out_and_keeps_the_bank_bounded():
    model = tiny()
    pipe = STDiffPipeline(model)
    vo = moving_clip(n=1)
    plain = sample(pipe, vo, num_samples=2)
    # Thresholds that store every frame: the bank fills up and must stay at its size.
    memory = CrossFrameMemory(
        enabled=True, memory_bank_size=2, motion_threshold=-1.0, quality_threshold=2.0
    )
    sizes, flows = [], {}

    def watch(f, s, t, x, e):
        sizes.append(memory.bank_size)
        flows.setdefault(f, memory.flow)

    out = sample(pipe, vo, num_samples=2, cross_frame_attention=memory, step_callback=watch)
    assert (out["frames"] - plain["frames"]).abs().max() > 1e-3
    assert max(sizes) == 2 and len(sizes) == 5 * STEPS
    assert [d["bank_size"] for d in out["cross_frame"]] == [1, 2, 2, 2, 2]
    assert all(d["stored_keyframe"] for d in out["cross_frame"])
    assert len(memory.keyframes) == 1 and memory.anchor is not None
    # Every attention layer cached one K/V pair per frame (the bank holds whole frames).
    names = {name for name, _ in model.unet.attention_blocks()}
    assert set(memory.prev) == names
    # The first frame's source motion is the flow between the last two observed frames.
    want = estimate_flow(vo[:, -2], vo[:, -1], value_range=(-1, 1)).repeat(2, 1, 1, 1)
    assert torch.allclose(flows[0], want)
    assert flows[0][:, 0].mean() > 1.0  # the pattern moves right by 2 pixels per frame


# ---------------------------------------------------------------------------- UNet pieces
@torch.no_grad()
def test_attention_processor_hook():
    model = tiny()
    unet = model.unet
    x, t, m = torch.randn(2, 2, 16, 32), torch.tensor([3, 700]), torch.randn(2, 16, 4, 8)
    plain = unet(x, t, m)
    calls = []

    def sdpa(block, q, k, v, hw):
        calls.append((q.shape, hw))
        return F.scaled_dot_product_attention(q, k, v)

    before = unet.set_attn_processor(sdpa)
    assert set(before) == {n for n, _ in unet.attention_blocks()} and not any(before.values())
    assert torch.equal(unet(x, t, m), plain)
    # Token grids are the blocks' exact (height, width); 2 heads of 8 channels at 8 x 16.
    assert calls[0] == (torch.Size([2, 2, 128, 8]), (8, 16))
    assert all(s[2] == hw[0] * hw[1] for s, hw in calls)
    # A processor returning zeros leaves the block's residual plus proj_attn's bias.
    block = unet.down_blocks[1].attentions[0]
    block.processor = lambda blk, q, k, v, hw: torch.zeros_like(q)
    h = torch.randn(2, 16, 8, 16)
    assert torch.allclose(block(h), h + block.proj_attn.bias[None, :, None, None], atol=1e-6)
    unet.set_attn_processor(before)
    assert torch.equal(unet(x, t, m), plain)
    with pytest.raises(ValueError, match="no attention block"):
        unet.set_attn_processor({"nope": None})


def test_instance_norm_paths_agree():
    g = torch.Generator().manual_seed(0)
    small = torch.randn(2, 3, 4, 8, generator=g)
    assert small.shape[-1] * small.shape[-2] < GROUP_NORM_MIN_PIXELS
    assert torch.equal(instance_norm(small, 1e-5), F.instance_norm(small, eps=1e-5))
    big = torch.randn(2, 3, 16, 32, generator=g) * 3 + 1
    want = (big - big.mean((2, 3), keepdim=True)) / (
        big.var((2, 3), unbiased=False, keepdim=True) + 1e-5
    ).sqrt()
    assert torch.allclose(instance_norm(big, 1e-5), want, atol=1e-5)
    cl = big.contiguous(memory_format=torch.channels_last)
    assert torch.allclose(instance_norm(cl, 1e-5), want, atol=1e-5)
    out = instance_norm(big.bfloat16(), 1e-5)  # statistics in float32
    assert out.dtype == torch.float32
    assert torch.allclose(out, instance_norm(big.bfloat16().float(), 1e-5))
