"""stdiff.lean_norm against torch's own autograd of the unfused ops: the same forward and the
same gradients (bit for bit: the backward rebuilds the normalised values with the same
kernel), and less kept for backward."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stdiff.lean_norm import group_norm_silu, instance_norm_modulate


def _saved_bytes(fn) -> int:
    """Bytes of distinct storages autograd keeps for backward while ``fn()`` runs."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def _input(dtype, channels_last, shape=(2, 64, 16, 24)):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 3 + 1).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_silu_matches_unfused(dtype, channels_last):
    norm = nn.GroupNorm(32, 64)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = _input(dtype, channels_last)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))

    ref, ref_saved = _saved_bytes(lambda: F.silu(norm(x.float())))
    ref_grads = torch.autograd.grad(ref, (x, norm.weight, norm.bias), grad)
    out, saved = _saved_bytes(lambda: group_norm_silu(norm, x))
    grads = torch.autograd.grad(out, (x, norm.weight, norm.bias), grad)

    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == r.dtype
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    # Unfused: float32 x (a copy for bf16) and float32 norm output; lean: x as it came.
    assert saved < ref_saved
    assert saved <= x.numel() * x.element_size() + 4 * 4 * 64


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_instance_norm_modulate_matches_unfused(dtype, channels_last):
    h = _input(dtype, channels_last)
    g = torch.Generator().manual_seed(2)
    scale = (torch.rand(h.shape, generator=g) + 0.5).to(dtype).requires_grad_()
    shift = torch.randn(h.shape, generator=g).to(dtype).requires_grad_()
    grad = torch.randn(h.shape, generator=g)

    def unfused():
        # The published op (instance norm, no affine) with the modulation in float32.
        return torch.addcmul(shift, F.instance_norm(h.float(), eps=1e-5), scale)

    ref, ref_saved = _saved_bytes(unfused)
    ref_grads = torch.autograd.grad(ref, (h, scale, shift), grad)
    out, saved = _saved_bytes(lambda: instance_norm_modulate(h, scale, shift, 1e-5))
    grads = torch.autograd.grad(out, (h, scale, shift), grad)

    # Instance norm's batch-norm kernel and the group-norm kernel round differently.
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g_, r in zip(grads, ref_grads):
        assert g_.dtype == r.dtype
        tol = 1e-2 if g_.dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(g_, r, rtol=tol, atol=tol)
    assert saved < ref_saved


def test_modules_use_lean_norm_with_unchanged_gradients():
    """A ResNet block of the UNet with the lean nodes against the same block's math written
    out with plain ops (conv1 -> SPADE -> + temb -> conv2 -> + skip)."""
    from stdiff.unet_blocks import ResnetBlock2D

    torch.manual_seed(0)
    block = ResnetBlock2D(32, 64, temb_channels=16, m_channels=8)
    x = torch.randn(1, 32, 16, 16, requires_grad=True)
    temb, m = torch.randn(1, 16), torch.randn(1, 8, 4, 4)

    def plain():
        spade = block.motion_cond_layer
        h = block.conv1(F.silu(block.norm1(x)))
        actv = spade.mlp_shared(F.interpolate(m, size=(16, 16), mode="nearest"))
        h = F.instance_norm(h, eps=1e-5) * (1 + spade.mlp_gamma(actv)) + spade.mlp_beta(actv)
        h = h + block.time_emb_proj(temb)[:, :, None, None]
        h = block.conv2(F.silu(block.norm2(h)))
        return block.conv_shortcut(x) + h

    params = [x, *block.parameters()]
    ref = plain()
    ref_grads = torch.autograd.grad(ref.square().sum(), params)
    out = block(x, temb, m)
    grads = torch.autograd.grad(out.square().sum(), params)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_group_norm_silu_without_affine_parameters():
    norm = nn.GroupNorm(4, 64, affine=False)
    x = _input(torch.bfloat16, True)
    out = group_norm_silu(norm, x)
    ref = F.silu(norm(x.float()))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    (g,) = torch.autograd.grad(out.sum(), x)
    (r,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g, r, rtol=0, atol=0)
