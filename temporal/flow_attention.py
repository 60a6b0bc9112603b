"""Flow-guided cross-frame attention for autoregressive rollout (e.g. the STDiff UNet).

While frame t is denoised, each hooked self-attention layer attends to the current frame's own
tokens and also to cached keys / values of earlier frames:

- the previous frame's K/V, warped to frame t's token grid by the source flow t-1 -> t
  (backward sampling, `wavecast.warping`), with a bias on their logits from a discrepancy mask;
- a memory bank: a static anchor (the first frame seen) plus dynamic keyframes in a deque;
  anchor + keyframes <= `memory_bank_size` entries (so the deque holds size - 1).

Discrepancy mask m in [0, 1] (1 = the motions agree), built after a frame is generated from
the source motion (e.g. the flow of the conditioning video / LiDAR) and the generated motion
(flow between the generated frames), both t-1 -> t in image pixels:
  local:  m_local(p) = 1 where |F_src(p) - F_gen(p)| < discrepancy_tolerance;
  global: the per-pixel discrepancy accumulated since the last keyframe (carried along the
          source flow), m_global(p) = 1 where it stays < global_tolerance;
  m = m_local * m_global, on the grid of the frame whose K/V are cached. When the next frame
  attends, m is warped with that frame's K/V, resized to the token grid (area averaging) and
  multiplied by the warp's valid mask, and the previous frame's keys get the logit bias

      (mask_scale * m - 1) * large_constant

  (0 where m = 1 with mask_scale = 1; -large_constant where the motions disagree or the warp
  left the frame, which leaves the current frame and the bank to be attended). Only the
  previous frame's cached keys are biased: bank keys are not aligned with the current grid.

Keyframe rule (after each frame): accumulated source motion since the last keyframe (mean
|F_src| in pixels, batch mean) > motion_threshold AND discrepancy score (fraction of pixels
with m_local = 0, batch mean; 0 when no generated flow is given) < quality_threshold ->
store the frame's K/V in the bank, reset the accumulators.

By default one K/V per layer is cached, from the layer's last call of the frame (its final
denoising step); `per_step=True` caches one per call (denoising step) and matches calls by
index, at `num_steps` times the memory.

Off by default: `CrossFrameMemory(enabled=False).attend(...)` is `F.scaled_dot_product_attention`
bit for bit, and the diffusers processor then delegates to the processor it replaced.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from wavecast.warping import check_flow, resize_flow, warp

KV = tuple[torch.Tensor, torch.Tensor]
FrameKV = dict[str, dict[int, KV]]  # layer name -> call index -> (k, v), each [B, heads, N, d]


def flow_guided_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cached_k: torch.Tensor | None = None,
    cached_v: torch.Tensor | None = None,
    cached_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of q over the current keys plus cached keys.

    q [B, heads, Nq, d]; k, v [B, heads, N, d]; cached_k, cached_v [B, heads, M, d];
    cached_bias [B, M] added to the logits of the cached keys only (None = 0).
    Without cached keys (None or M = 0) this is exactly `F.scaled_dot_product_attention(q, k, v)`.
    """
    if cached_k is None or cached_k.shape[2] == 0:
        return F.scaled_dot_product_attention(q, k, v)
    if cached_v is None or cached_v.shape != cached_k.shape:
        raise ValueError(
            "flow_guided_attention: cached_v must match cached_k "
            f"{tuple(cached_k.shape)}, got {None if cached_v is None else tuple(cached_v.shape)}"
        )
    if (
        cached_k.shape[0] != k.shape[0]
        or cached_k.shape[1] != k.shape[1]
        or cached_k.shape[3] != k.shape[3]
    ):
        raise ValueError(
            f"flow_guided_attention: cached keys {tuple(cached_k.shape)} do not match the current "
            f"keys {tuple(k.shape)} in batch, heads or head dim"
        )
    keys = torch.cat((k, cached_k.to(k.dtype)), dim=2)
    values = torch.cat((v, cached_v.to(v.dtype)), dim=2)
    mask = None
    if cached_bias is not None:
        b, m = cached_k.shape[0], cached_k.shape[2]
        if cached_bias.shape != (b, m):
            raise ValueError(
                f"flow_guided_attention: cached_bias must be [B, M] = [{b}, {m}], "
                f"got {tuple(cached_bias.shape)}"
            )
        own = torch.zeros(b, k.shape[2], dtype=q.dtype, device=q.device)
        mask = torch.cat((own, cached_bias.to(q.dtype)), dim=1).view(b, 1, 1, -1)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)


def should_store_keyframe(
    accumulated_motion: float,
    discrepancy_score: float,
    motion_threshold: float,
    quality_threshold: float,
) -> bool:
    """The keyframe rule: enough motion since the last keyframe and a good (low-discrepancy) frame."""
    return accumulated_motion > motion_threshold and discrepancy_score < quality_threshold


def discrepancy_mask(
    source_flow: torch.Tensor, generated_flow: torch.Tensor, tolerance: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local agreement between source and generated motion, both [B, 2, H, W] (pixels).

    Returns (m [B, 1, H, W] in {0, 1}, 1 where |F_src - F_gen| < tolerance; the distance
    [B, 1, H, W] in pixels; the score [B], fraction of pixels that disagree).
    """
    check_flow(source_flow, name="source_flow")
    check_flow(generated_flow, name="generated_flow", like=source_flow)
    dist = (source_flow - generated_flow).norm(dim=1, keepdim=True)
    m = (dist < tolerance).to(source_flow.dtype)
    return m, dist, 1.0 - m.flatten(1).mean(1)


def infer_token_grid(n: int, image_hw: tuple[int, int] | None) -> tuple[int, int]:
    """(h, w) with h * w = n and h / w closest to the image's aspect ratio (square if unknown)."""
    ratio = 1.0 if image_hw is None else image_hw[0] / image_hw[1]
    h = max(1, round(math.sqrt(n * ratio)))
    for cand in sorted(range(1, n + 1), key=lambda c: abs(c - h)):
        if n % cand == 0:
            return cand, n // cand
    raise AssertionError("unreachable: 1 divides n")


class CrossFrameMemory:
    """Shared state of the flow-guided attention processors of one network (see module doc).

    Use during a rollout:
        memory.reset()
        for each frame t:
            memory.begin_frame(source_flow)      # F_src t-1 -> t, [B, 2, H, W] image pixels
            ... denoise frame t (the processors call memory.attend) ...
            memory.end_frame(generated_flow)     # F_gen t-1 -> t, or None
    """

    def __init__(
        self,
        enabled: bool = False,
        use_prev_frame: bool = True,
        warp_prev: bool = True,
        memory_bank_size: int = 4,
        motion_threshold: float = 8.0,
        quality_threshold: float = 0.2,
        mask_scale: float = 1.0,
        large_constant: float = 1e4,
        discrepancy_tolerance: float = 1.0,
        global_tolerance: float = 4.0,
        per_step: bool = False,
    ) -> None:
        if memory_bank_size < 0:
            raise ValueError(
                f"CrossFrameMemory.memory_bank_size must be >= 0, got {memory_bank_size}"
            )
        if large_constant <= 0:
            raise ValueError(f"CrossFrameMemory.large_constant must be > 0, got {large_constant}")
        self.enabled = enabled
        self.use_prev_frame = use_prev_frame
        self.warp_prev = warp_prev
        self.memory_bank_size = memory_bank_size
        self.motion_threshold = motion_threshold
        self.quality_threshold = quality_threshold
        self.mask_scale = mask_scale
        self.large_constant = large_constant
        self.discrepancy_tolerance = discrepancy_tolerance
        self.global_tolerance = global_tolerance
        self.per_step = per_step
        self.reset()

    # ---------------------------------------------------------------- state
    def reset(self) -> None:
        self.prev: FrameKV = {}
        self.prev_mask: torch.Tensor | None = None
        self.anchor: FrameKV | None = None
        self.keyframes: deque[FrameKV] = deque(maxlen=max(self.memory_bank_size - 1, 0))
        self.recording: FrameKV = {}
        self._calls: dict[str, int] = {}
        self.flow: torch.Tensor | None = None
        self.accumulated_motion = 0.0
        self.accumulated_discrepancy: torch.Tensor | None = None
        self.frames_seen = 0

    @property
    def bank_size(self) -> int:
        return int(self.anchor is not None) + len(self.keyframes)

    def bank(self) -> list[FrameKV]:
        return ([self.anchor] if self.anchor is not None else []) + list(self.keyframes)

    # ---------------------------------------------------------------- frame lifecycle
    def begin_frame(self, source_flow: torch.Tensor | None = None) -> None:
        """Start a frame; source_flow [B, 2, H, W] is F_src from the previous frame, image pixels."""
        if source_flow is not None:
            check_flow(source_flow, name="CrossFrameMemory source_flow")
        self.flow = source_flow
        self.recording = {}
        self._calls = {}

    def end_frame(self, generated_flow: torch.Tensor | None = None) -> dict[str, float | bool]:
        """Finish the frame: update the discrepancy mask and motion, apply the keyframe rule.

        generated_flow [B, 2, H, W]: flow between the previous and this generated frame (image
        pixels, same grid as the source flow), or None (no discrepancy information: m = 1).
        Returns the rule's inputs and whether the frame was stored in the bank.
        """
        src = self.flow
        motion = float(src.norm(dim=1).mean()) if src is not None else 0.0
        self.accumulated_motion += motion
        score = 0.0
        if src is not None and generated_flow is not None:
            m_local, dist, scores = discrepancy_mask(
                src, generated_flow, self.discrepancy_tolerance
            )
            score = float(scores.mean())
            acc = self.accumulated_discrepancy
            acc = dist if acc is None else warp(acc, src, padding_mode="border") + dist
            self.accumulated_discrepancy = acc
            self.prev_mask = m_local * (acc < self.global_tolerance).to(m_local.dtype)
        else:
            self.prev_mask = None
        stored = False
        if self.frames_seen == 0:
            if self.memory_bank_size >= 1:
                self.anchor = self.recording
                stored = True
        elif self.memory_bank_size >= 2 and should_store_keyframe(
            self.accumulated_motion, score, self.motion_threshold, self.quality_threshold
        ):
            self.keyframes.append(self.recording)
            stored = True
        info = {
            "motion": motion,
            "accumulated_motion": self.accumulated_motion,
            "discrepancy_score": score,
            "stored_keyframe": stored,
        }
        if stored:
            self.accumulated_motion = 0.0
            self.accumulated_discrepancy = None
        self.prev = self.recording
        self.recording = {}
        self.frames_seen += 1
        return info

    # ---------------------------------------------------------------- attention
    def _lookup(self, frame: FrameKV, layer: str, idx: int) -> KV | None:
        calls = frame.get(layer)
        if not calls:
            return None
        return calls.get(idx, calls[max(calls)])

    def _image_hw(self) -> tuple[int, int] | None:
        for t in (self.flow, self.prev_mask):
            if t is not None:
                return tuple(t.shape[-2:])
        return None

    def gather(
        self, layer: str, idx: int, k: torch.Tensor, token_hw: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Cached (keys, values, bias) for `layer`'s call `idx`: the warped previous frame (biased)
        then the bank (bias 0); ([B, heads, M, d], [B, heads, M, d], [B, M]) or Nones."""
        ks, vs, biases = [], [], []
        b, heads, n, d = k.shape
        prev = self._lookup(self.prev, layer, idx) if self.use_prev_frame else None
        if prev is not None:
            kp, vp = prev
            if kp.shape != k.shape:
                raise ValueError(
                    f"CrossFrameMemory: layer {layer!r} cached K {tuple(kp.shape)} does not match "
                    f"the current K {tuple(k.shape)}"
                )
            h, w = token_hw if token_hw is not None else infer_token_grid(n, self._image_hw())
            if h * w != n:
                raise ValueError(f"CrossFrameMemory: token grid {(h, w)} does not hold {n} tokens")
            m = torch.ones(b, 1, h, w, dtype=kp.dtype, device=kp.device)
            if self.prev_mask is not None:
                m = F.interpolate(self.prev_mask.to(kp.dtype), size=(h, w), mode="area")
            if self.warp_prev and self.flow is not None:
                grid = torch.cat(
                    (
                        kp.permute(0, 1, 3, 2).reshape(b, heads * d, h, w),
                        vp.permute(0, 1, 3, 2).reshape(b, heads * d, h, w),
                        m,
                    ),
                    dim=1,
                )
                flow = resize_flow(self.flow.to(kp.dtype), (h, w))
                warped, valid = warp(grid, flow, padding_mode="border", return_mask=True)
                kp = warped[:, : heads * d].reshape(b, heads, d, n).permute(0, 1, 3, 2)
                vp = (
                    warped[:, heads * d : 2 * heads * d].reshape(b, heads, d, n).permute(0, 1, 3, 2)
                )
                m = warped[:, -1:] * valid
            ks.append(kp)
            vs.append(vp)
            biases.append((self.mask_scale * m.flatten(1) - 1.0) * self.large_constant)
        for entry in self.bank():
            kv = self._lookup(entry, layer, idx)
            if kv is None:
                continue
            ks.append(kv[0])
            vs.append(kv[1])
            biases.append(torch.zeros(b, kv[0].shape[2], dtype=k.dtype, device=k.device))
        if not ks:
            return None, None, None
        return torch.cat(ks, 2), torch.cat(vs, 2), torch.cat(biases, 1)

    def attend(
        self,
        layer: str,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        token_hw: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Self-attention of the current frame, q, k, v [B, heads, N, d], plus the cached frames.

        Records this call's K/V for the frame being generated. Disabled: plain SDPA.
        """
        if not self.enabled:
            return F.scaled_dot_product_attention(q, k, v)
        idx = self._calls.get(layer, 0)
        self._calls[layer] = idx + 1
        ck, cv, bias = self.gather(layer, idx, k, token_hw)
        store = self.recording.setdefault(layer, {})
        if not self.per_step:
            store.clear()
        store[idx] = (k.detach(), v.detach())
        return flow_guided_attention(q, k, v, ck, cv, bias)


class FlowGuidedAttnProcessor:
    """A diffusers attention processor that routes self-attention through a CrossFrameMemory.

    Follows diffusers' `AttnProcessor2_0` step by step; cross-attention, a disabled memory, or an
    attention mask are handed to `base` (the processor it replaced) unchanged.
    """

    def __init__(self, memory: CrossFrameMemory, name: str, base: Callable | None = None) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.memory = memory
        self.name = name
        self.base = base if base is not None else AttnProcessor2_0()

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        if (
            not self.memory.enabled
            or encoder_hidden_states is not None
            or attention_mask is not None
            or getattr(attn, "is_cross_attention", False)
        ):
            return self.base(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        token_hw = None
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            token_hw = (height, width)
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = self.memory.attend(self.name, query, key, value, token_hw)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(
                batch_size, channel, height, width
            )
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_flow_attention(
    model: nn.Module,
    memory: CrossFrameMemory,
    name_filter: Callable[[str], bool] | None = None,
) -> dict[str, Callable]:
    """Give every diffusers self-attention `Attention` in `model` (optionally filtered by name) a
    FlowGuidedAttnProcessor; returns the replaced processors for `uninstall_flow_attention`."""
    from diffusers.models.attention_processor import Attention

    originals: dict[str, Callable] = {}
    for name, module in model.named_modules():
        if not isinstance(module, Attention) or module.is_cross_attention:
            continue
        if name_filter is not None and not name_filter(name):
            continue
        originals[name] = module.processor
        module.set_processor(FlowGuidedAttnProcessor(memory, name, base=module.processor))
    return originals


def uninstall_flow_attention(model: nn.Module, originals: dict[str, Callable]) -> None:
    """Put back the processors returned by `install_flow_attention`."""
    modules = dict(model.named_modules())
    for name, proc in originals.items():
        modules[name].set_processor(proc)
