"""Flow-guided cross-frame attention in isolation: exactness when off / empty, bias, bank, keyframes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from temporal.flow_attention import (
    CrossFrameMemory,
    discrepancy_mask,
    flow_guided_attention,
    infer_token_grid,
    install_flow_attention,
    should_store_keyframe,
    uninstall_flow_attention,
)

B, HEADS, D = 2, 2, 4
H, W = 4, 6
N = H * W


def _qkv(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, HEADS, N, D, generator=g) for _ in range(3))


def _flow(dx: float, dy: float, h: int = 2 * H, w: int = 2 * W) -> torch.Tensor:
    f = torch.zeros(B, 2, h, w)
    f[:, 0], f[:, 1] = dx, dy
    return f


def _manual_attention(q, keys, values, bias=None):
    logits = q @ keys.transpose(-1, -2) / D**0.5
    if bias is not None:
        logits = logits + bias.view(B, 1, 1, -1)
    return logits.softmax(-1) @ values


def test_disabled_is_plain_sdpa_bit_exact() -> None:
    memory = CrossFrameMemory(enabled=False)
    for frame in range(3):
        q, k, v = _qkv(frame)
        memory.begin_frame(_flow(1.0, 0.0))
        assert torch.equal(memory.attend("mid", q, k, v), F.scaled_dot_product_attention(q, k, v))
        memory.end_frame()


def test_enabled_with_empty_cache_is_plain_sdpa_bit_exact() -> None:
    memory = CrossFrameMemory(enabled=True)
    q, k, v = _qkv(0)
    memory.begin_frame()
    assert torch.equal(memory.attend("mid", q, k, v), F.scaled_dot_product_attention(q, k, v))
    assert torch.equal(flow_guided_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    empty = k[:, :, :0]
    assert torch.equal(
        flow_guided_attention(q, k, v, empty, empty), F.scaled_dot_product_attention(q, k, v)
    )


def test_cached_keys_join_the_softmax() -> None:
    q, k, v = _qkv(0)
    _, ck, cv = _qkv(1)
    bias = torch.randn(B, N, generator=torch.Generator().manual_seed(2))
    out = flow_guided_attention(q, k, v, ck, cv, bias)
    keys, values = torch.cat((k, ck), 2), torch.cat((v, cv), 2)
    full_bias = torch.cat((torch.zeros(B, N), bias), 1)
    torch.testing.assert_close(
        out, _manual_attention(q, keys, values, full_bias), atol=1e-5, rtol=1e-5
    )
    # duplicating every key / value leaves attention unchanged
    torch.testing.assert_close(
        flow_guided_attention(q, k, v, k, v), F.scaled_dot_product_attention(q, k, v)
    )


def test_large_negative_bias_on_cached_keys_gives_plain_attention() -> None:
    q, k, v = _qkv(0)
    _, ck, cv = _qkv(1)
    out = flow_guided_attention(q, k, v, ck, cv, torch.full((B, N), -1e4))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-6, rtol=0)


def test_disagreeing_motion_suppresses_the_previous_frame() -> None:
    memory = CrossFrameMemory(enabled=True, memory_bank_size=0, discrepancy_tolerance=1.0)
    q0, k0, v0 = _qkv(0)
    memory.begin_frame()
    memory.attend("mid", q0, k0, v0, (H, W))
    memory.end_frame()
    # frame 1: the generated motion disagrees with the source everywhere -> m = 0
    memory.begin_frame(_flow(0.0, 0.0))
    q1, k1, v1 = _qkv(1)
    memory.attend("mid", q1, k1, v1, (H, W))
    info = memory.end_frame(generated_flow=_flow(3.0, 0.0))
    assert info["discrepancy_score"] == pytest.approx(1.0)
    assert memory.prev_mask.max() == 0
    memory.begin_frame(_flow(0.0, 0.0))
    q2, k2, v2 = _qkv(2)
    out = memory.attend("mid", q2, k2, v2, (H, W))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q2, k2, v2), atol=1e-6, rtol=0)


def test_previous_frame_kv_are_warped_and_masked_on_the_token_grid() -> None:
    memory = CrossFrameMemory(enabled=True, memory_bank_size=0)
    q, k, v = _qkv(0)
    memory.begin_frame()
    memory.attend("mid", q, k, v, (H, W))
    memory.end_frame()
    # 2 px right at the 8x12 image grid = 1 token right at the 4x6 token grid
    memory.begin_frame(_flow(2.0, 0.0))
    ck, cv, bias = memory.gather("mid", 0, k, (H, W))
    grid_k = k.view(B, HEADS, H, W, D)
    shifted = torch.roll(grid_k, shifts=1, dims=3)
    torch.testing.assert_close(ck.view(B, HEADS, H, W, D)[:, :, :, 1:], shifted[:, :, :, 1:])
    torch.testing.assert_close(
        cv.view(B, HEADS, H, W, D)[:, :, :, 1:],
        torch.roll(v.view(B, HEADS, H, W, D), 1, 3)[:, :, :, 1:],
    )
    bias = bias.view(B, H, W)
    assert torch.all(bias[:, :, 0] == -1e4)  # warped in from outside the frame
    assert torch.all(bias[:, :, 1:] == 0)


def test_discrepancy_mask_is_resized_to_tokens_and_biases_only_the_previous_frame() -> None:
    memory = CrossFrameMemory(enabled=True, memory_bank_size=1, warp_prev=False, mask_scale=1.0)
    q, k, v = _qkv(0)
    memory.begin_frame(_flow(0.0, 0.0))
    memory.attend("mid", q, k, v, (H, W))
    gen = _flow(0.0, 0.0)
    gen[:, 0, :, :W] = 5.0  # left half of the 8x12 image disagrees
    memory.end_frame(generated_flow=gen)
    memory.begin_frame(_flow(0.0, 0.0))
    ck, _, bias = memory.gather("mid", 0, k, (H, W))
    assert ck.shape[2] == 2 * N  # previous frame + anchor
    prev_bias = bias[:, :N].view(B, H, W)
    assert torch.all(prev_bias[:, :, : W // 2] == -1e4)
    assert torch.all(prev_bias[:, :, W // 2 :] == 0)
    assert torch.all(bias[:, N:] == 0)  # the bank is never biased


def test_global_discrepancy_accumulates_until_a_keyframe() -> None:
    memory = CrossFrameMemory(
        enabled=True, memory_bank_size=0, discrepancy_tolerance=1.0, global_tolerance=1.0
    )
    src, gen = _flow(0.0, 0.0), _flow(0.6, 0.0)  # 0.6 px per frame: locally fine
    for frame in range(3):
        memory.begin_frame(src if frame else None)
        memory.attend("mid", *_qkv(frame), (H, W))
        memory.end_frame(generated_flow=gen if frame else None)
        if frame == 1:
            assert memory.prev_mask.min() == 1  # 0.6 < 1
    assert memory.prev_mask.max() == 0  # 0.6 + 0.6 accumulated >= 1


def test_keyframe_rule_truth_table() -> None:
    assert should_store_keyframe(5.0, 0.1, motion_threshold=4.0, quality_threshold=0.2)
    assert not should_store_keyframe(4.0, 0.1, motion_threshold=4.0, quality_threshold=0.2)
    assert not should_store_keyframe(5.0, 0.2, motion_threshold=4.0, quality_threshold=0.2)
    assert not should_store_keyframe(3.0, 0.5, motion_threshold=4.0, quality_threshold=0.2)


def test_keyframe_rule_in_the_rollout_and_bounded_bank() -> None:
    size = 3
    memory = CrossFrameMemory(
        enabled=True, memory_bank_size=size, motion_threshold=5.0, quality_threshold=0.5
    )
    stored_at, bank_sizes = [], []
    for frame in range(12):
        memory.begin_frame(_flow(2.0, 0.0) if frame else None)  # |motion| = 2 px per frame
        memory.attend("mid", *_qkv(frame), (H, W))
        # frame 6 is generated badly (all pixels disagree): the rule must skip it
        gen = _flow(9.0, 0.0) if frame == 6 else _flow(2.0, 0.0)
        info = memory.end_frame(generated_flow=gen if frame else None)
        if info["stored_keyframe"]:
            stored_at.append(frame)
        bank_sizes.append(memory.bank_size)
    # anchor at 0; 2+2+2 = 6 > 5 at frame 3; frame 6 qualifies by motion but not by quality, so
    # the motion keeps accumulating and frame 7 is stored; then frame 10
    assert stored_at == [0, 3, 7, 10]
    assert max(bank_sizes) == size and bank_sizes[-1] == size
    first = memory.anchor["mid"]
    assert torch.equal(next(iter(first.values()))[0], _qkv(0)[1])  # the anchor stays frame 0
    # quality blocks a frame whose motion qualifies
    m2 = CrossFrameMemory(
        enabled=True, memory_bank_size=4, motion_threshold=1.0, quality_threshold=0.5
    )
    m2.begin_frame()
    m2.end_frame()
    m2.begin_frame(_flow(2.0, 0.0))
    assert not m2.end_frame(generated_flow=_flow(9.0, 0.0))["stored_keyframe"]
    assert m2.accumulated_motion == pytest.approx(2.0)  # not reset
    m2.begin_frame(_flow(2.0, 0.0))
    assert m2.end_frame(generated_flow=_flow(2.0, 0.0))["stored_keyframe"]
    assert m2.accumulated_motion == 0.0


def test_discrepancy_mask_and_token_grid_helpers() -> None:
    src = _flow(1.0, 0.0)
    gen = src.clone()
    gen[:, 0, 0, :] = 3.0
    m, dist, score = discrepancy_mask(src, gen, tolerance=1.0)
    assert torch.all(m[:, 0, 0] == 0) and torch.all(m[:, 0, 1:] == 1)
    torch.testing.assert_close(dist[:, 0, 0], torch.full((B, 2 * W), 2.0))
    torch.testing.assert_close(score, torch.full((B,), 1 / (2 * H)))
    assert infer_token_grid(24, (8, 12)) == (4, 6)
    assert infer_token_grid(16, None) == (4, 4)
    assert infer_token_grid(64 * 8, (64, 512)) == (8, 64)


def test_diffusers_processor_off_and_empty_are_exact() -> None:
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(8, heads=2, dim_head=4, norm_num_groups=2, residual_connection=True)
    host = torch.nn.ModuleDict({"block": attn})
    x = torch.randn(2, 8, 3, 5)
    reference = attn(x)
    memory = CrossFrameMemory(enabled=False)
    originals = install_flow_attention(host, memory)
    assert list(originals) == ["block"]
    assert torch.equal(attn(x), reference)
    memory.enabled = True
    memory.begin_frame()
    assert torch.equal(attn(x), reference)  # empty cache
    memory.end_frame()
    memory.begin_frame()
    with_cache = attn(x)  # the same frame again: duplicated keys, same attention
    torch.testing.assert_close(with_cache, reference, atol=1e-5, rtol=1e-5)
    assert memory.recording["block"][0][0].shape == (2, 2, 15, 4)
    uninstall_flow_attention(host, originals)
    assert type(attn.processor).__name__ == "AttnProcessor2_0"
