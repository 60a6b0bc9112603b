"""STDiff networks and training objective on the tiny configuration (no reference needed)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stdiff import STDiff, random_future_subset, stdiff_config
from stdiff.configs import DEFAULT_SCHEDULER_CONFIG

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(seed: int = 0, **overrides) -> STDiff:
    torch.manual_seed(seed)
    return STDiff(**stdiff_config("tiny", **overrides))


def clip(n: int = 2, t: int = 3, h: int = 16, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, t, 1, h, w, generator=g) * 2 - 1


def perturb(module: torch.nn.Module, std: float = 0.05, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))


IDX_O = torch.tensor([0.0, 1.0, 2.0])


# ---------------------------------------------------------------------------- TDE
@torch.no_grad()
def test_zero_init_sde_keeps_the_context():
    """Zero-initialised last convs: drift 0 and diffusion tanh(0) = 0, so every prediction
    equals the context."""
    model = tiny()
    vo = clip()
    context = model.tde.context_encode(vo, IDX_O)
    m = model.tde(
        vo, IDX_O, torch.tensor([3.0, 3.5, 5.0]), generator=torch.Generator().manual_seed(0)
    )
    assert m.shape == (3, 2, 16, 4, 8)
    # (exact up to the rounding of the linear interpolation to the output times)
    assert torch.allclose(m, context.expand_as(m), rtol=1e-6, atol=0)


def _constant_diffusion(model: STDiff, value: float) -> None:
    last = model.tde.motion_sde.diffusion.convs[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(math.atanh(value))


@pytest.mark.parametrize("method", ["euler_heun", "reversible_heun", "milstein"])
@torch.no_grad()
def test_brownian_increments_have_the_right_law(method):
    """dX = s dW (zero drift, constant diffusion s): X(t) - X(t0) = s (W(t) - W(t0)), so the
    scaled increments between output times are independent N(0, dt)."""
    s = 0.5
    model = tiny(tde={"method": method, "adjoint": False, "dt": 0.25})
    _constant_diffusion(model, s)
    vo = clip(n=8)
    ts = torch.tensor([2.0, 3.0, 5.0])
    context = model.tde.context_encode(vo, IDX_O)
    m = model.tde.future_predict(context, ts, generator=torch.Generator().manual_seed(3))
    inc = torch.diff(torch.cat([context[None], m]), dim=0).flatten(1) / s  # [2, 8*512]
    for k, dt in enumerate([1.0, 2.0]):
        assert abs(inc[k].mean().item()) < 4 * math.sqrt(dt / inc.shape[1])
        assert abs(inc[k].std().item() / math.sqrt(dt) - 1) < 0.06
    corr = torch.corrcoef(inc)[0, 1].item()
    assert abs(corr) < 0.06


@torch.no_grad()
def test_brownian_path_seeding():
    model = tiny()
    _constant_diffusion(model, 0.3)
    vo, idx_p = clip(), torch.tensor([3.0, 4.0])

    def run(gen=None):
        return model.tde(vo, IDX_O, idx_p, generator=gen)

    a = run(torch.Generator().manual_seed(5))
    assert torch.equal(a, run(torch.Generator().manual_seed(5)))
    assert (a - run(torch.Generator().manual_seed(6))).abs().max() > 1e-2
    # A fresh path on every call; torch's global seed makes it reproducible.
    assert (run() - run()).abs().max() > 1e-2
    torch.manual_seed(11)
    b = run()
    torch.manual_seed(11)
    assert torch.equal(b, run())
    # Drift only: deterministic whatever the seed.
    d1 = model.tde(vo, IDX_O, idx_p, generator=torch.Generator().manual_seed(1), drift_only=True)
    d2 = model.tde(vo, IDX_O, idx_p, generator=torch.Generator().manual_seed(2), drift_only=True)
    assert torch.equal(d1, d2)


@pytest.mark.parametrize("drift_only", [False, True])
def test_reversible_heun_exact_adjoint_gradients(drift_only):
    """adjoint_reversible_heun is the exact adjoint of reversible_heun: gradients equal those
    of backpropagating through the solver (up to float error), drift-only included (the
    adjoint's backward pass must also see zero diffusion)."""
    grads = []
    for adjoint in (False, True):
        model = tiny(tde={"method": "reversible_heun", "adjoint": adjoint, "dt": 0.25})
        perturb(model.tde.motion_sde, 0.1)
        vo = clip().requires_grad_(True)
        m = model.tde(
            vo,
            IDX_O,
            torch.tensor([3.0, 4.0]),
            generator=torch.Generator().manual_seed(7),
            drift_only=drift_only,
        )
        (m * torch.linspace(-1, 1, m.numel()).view_as(m)).sum().backward()
        diffusion = list(model.tde.motion_sde.diffusion.parameters())
        assert all(p.grad is None for p in diffusion) == drift_only
        params = [p.grad.flatten() for p in model.tde.parameters() if p.grad is not None]
        grads.append(torch.cat(params + [vo.grad.flatten()]))
    assert model.tde.adjoint_method == "adjoint_reversible_heun"
    assert grads[0].norm() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6 * grads[0].abs().max().item())


@torch.no_grad()
def test_ode_mode_is_the_drift_of_the_sde():
    sde_model = tiny()
    perturb(sde_model.tde, 0.05)
    ode_model = tiny(tde={"sde": False})
    assert ode_model.tde.motion_sde.diffusion is None
    ode_model.load_state_dict(
        {k: v for k, v in sde_model.state_dict().items() if ".diffusion." not in k}
    )
    vo, idx_p = clip(), torch.tensor([3.0, 3.5, 5.0])
    a = ode_model.tde(vo, IDX_O, idx_p, generator=torch.Generator().manual_seed(1))
    b = sde_model.tde(vo, IDX_O, idx_p, drift_only=True)
    c = sde_model.tde(vo, IDX_O, idx_p, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-4  # the SDE adds noise


@torch.no_grad()
def test_ode_between_observations():
    vo = clip()
    plain, between = tiny(), tiny(tde={"ode_between_observations": True})
    # Zero drift: nothing happens between observations.
    assert torch.equal(plain.tde.context_encode(vo, IDX_O), between.tde.context_encode(vo, IDX_O))
    perturb(between.tde.motion_sde.drift, 0.1)
    irregular = torch.tensor([0.0, 0.5, 2.0])
    a = between.tde.context_encode(vo, IDX_O)
    b = between.tde.context_encode(vo, irregular)
    assert (a - b).abs().max() > 1e-5  # the observation times now matter


# ---------------------------------------------------------------------------- objective
def _capture_unet(model: STDiff) -> dict:
    seen: dict = {}
    model.unet.register_forward_hook(
        lambda mod, args, out: seen.update(x=args[0], t=args[1], m=args[2], out=out)
    )
    return seen


def test_training_loss_epsilon_objective_and_teacher_forcing():
    model = tiny(tde={"dt": 0.5})
    sched = model.make_scheduler()
    seen = _capture_unet(model)
    vo, vp = clip(seed=1), clip(seed=2)
    idx_p = torch.tensor([3.0, 4.0, 5.0])
    g = torch.Generator().manual_seed(0)
    loss, info = model.training_loss(vo, vp, IDX_O, idx_p, sched, generator=g)
    # The draws are the generator's: one noise image per frame, one timestep per frame.
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(6, 1, 16, 32, generator=g)
    t = torch.randint(0, 1000, (6,), generator=g)
    assert torch.equal(info["target"], noise) and torch.equal(info["timesteps"], t)
    x = seen["x"]
    assert x.shape == (6, 2, 16, 32)
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * vp.flatten(0, 1) + (1 - abar).sqrt() * noise
    assert torch.allclose(x[:, :1], noisy, atol=1e-6)
    previous = torch.cat([vo[:, -1:], vp[:, :-1]], dim=1).flatten(0, 1)  # index n * Tp + tp
    assert torch.equal(x[:, 1:], previous)
    assert torch.equal(seen["t"], t)
    assert torch.allclose(loss, (seen["out"] - noise).abs().mean())
    loss2, _ = model.training_loss(vo, vp, IDX_O, idx_p, sched, loss="l2", noise=noise, timesteps=t)
    assert torch.allclose(loss2, (seen["out"] - noise).square().mean(), atol=1e-7)


def test_training_loss_v_prediction_target():
    model = tiny(tde={"dt": 0.5})
    cfg = {**DEFAULT_SCHEDULER_CONFIG, "prediction_type": "v_prediction"}
    model.scheduler_config = cfg
    sched = model.make_scheduler()
    vo, vp = clip(seed=1), clip(seed=2)
    noise = torch.randn(6, 1, 16, 32)
    t = torch.tensor([0, 10, 200, 500, 800, 999])
    _, info = model.training_loss(
        vo, vp, IDX_O, torch.tensor([3.0, 4.0, 5.0]), sched, noise=noise, timesteps=t
    )
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = abar.sqrt() * noise - (1 - abar).sqrt() * vp.flatten(0, 1)
    assert torch.allclose(info["target"], v, atol=1e-6)


def test_one_backward_reaches_every_part():
    model = tiny(tde={"dt": 0.5})
    perturb(model, 0.02)  # make the zero-initialised SDE convs non-zero
    sched = model.make_scheduler()
    loss, _ = model.training_loss(
        clip(seed=1),
        clip(seed=2)[:, :2],
        IDX_O,
        torch.tensor([3.0, 4.5]),
        sched,
        generator=torch.Generator().manual_seed(0),
    )
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for part in (
        model.tde.motion_encoder,
        model.tde.context_gru,
        model.tde.motion_sde.drift,
        model.tde.motion_sde.diffusion,
        model.unet,
    ):
        assert sum(p.grad.abs().sum() for p in part.parameters()) > 0


def test_random_future_subset():
    idx, times = random_future_subset(10, 4, torch.Generator().manual_seed(0), start=3)
    assert idx.dtype == torch.int64 and idx.shape == (4,)
    assert torch.equal(idx, idx.sort().values) and len(set(idx.tolist())) == 4
    assert idx.min() >= 0 and idx.max() < 10
    assert torch.equal(times, idx.float() + 3)
    same, _ = random_future_subset(10, 4, torch.Generator().manual_seed(0), start=3)
    assert torch.equal(idx, same)
    draws = {
        tuple(random_future_subset(10, 4, torch.Generator().manual_seed(s))[0].tolist())
        for s in range(20)
    }
    assert len(draws) > 10
    _, half = random_future_subset(6, 6, start=3, time_step=0.5)
    assert torch.equal(half, torch.tensor([3.0, 3.5, 4.0, 4.5, 5.0, 5.5]))
    with pytest.raises(ValueError):
        random_future_subset(3, 4)


# ---------------------------------------------------------------------------- modes and sizes
def test_super_resolution_previous_frames():
    model = tiny(super_res_training=True, tde={"dt": 0.5})
    vo = clip(h=8, w=16, seed=1)
    vp = clip(h=16, w=32, seed=2)
    prev = model.teacher_forced_previous(vo, vp)

    def bicubic(x, size):
        return F.interpolate(x, size=size, mode="bicubic", antialias=True)

    assert torch.allclose(prev[:, 0], bicubic(vo[:, -1], (16, 32)))
    down_up = bicubic(bicubic(vp[:, 0], (8, 16)), (16, 32))
    assert torch.allclose(prev[:, 1], down_up)
    assert (prev[:, 1] - vp[:, 0]).abs().max() > 1e-2  # really degraded
    sched = model.make_scheduler()
    loss, info = model.training_loss(vo, vp, IDX_O, torch.tensor([3.0, 4.0, 5.0]), sched)
    assert info["pred"].shape == (6, 1, 16, 32) and torch.isfinite(loss)


def test_non_autoregressive_variants():
    plain = tiny(autoregressive=False, tde={"dt": 0.5}, unet={"in_channels": 1})
    seen = _capture_unet(plain)
    vo, vp = clip(seed=1), clip(seed=2)
    idx_p = torch.tensor([3.0, 4.0, 5.0])
    plain.training_loss(vo, vp, IDX_O, idx_p, plain.make_scheduler())
    assert seen["x"].shape == (6, 1, 16, 32)
    fork = tiny(
        autoregressive=False, concat_observed=True, unet={"in_channels": 4}, tde={"dt": 0.5}
    )
    seen = _capture_unet(fork)
    fork.training_loss(vo, vp, IDX_O, idx_p, fork.make_scheduler())
    obs = vo.flatten(1, 2).repeat_interleave(3, dim=0)  # the To frames as channels, per frame
    assert torch.equal(seen["x"][:, 1:], obs)
    with pytest.raises(ValueError, match="in_channels"):
        tiny(autoregressive=False)  # in_channels 2 fits neither variant
    with pytest.raises(ValueError, match="To=2"):
        fork.training_loss(vo[:, :2], vp, IDX_O[:2], idx_p, fork.make_scheduler())


@torch.no_grad()
def test_non_square_and_odd_sizes():
    model = tiny(tde={"dt": 0.5}).eval()
    # 20 x 36 is not a multiple of 2**4: the upsamplers take the skip sizes.
    out = model.unet(torch.randn(2, 2, 20, 36), torch.tensor([1, 500]), torch.randn(2, 16, 5, 9))
    assert out.shape == (2, 1, 20, 36)
    vo, vp = clip(h=16, w=48, seed=1), clip(h=16, w=48, seed=2)
    m = model.tde(vo, IDX_O, torch.tensor([3.0]))
    assert m.shape == (1, 2, 16, 4, 12)
    noisy = torch.randn(2, 1, 16, 48)
    assert model(
        vo, IDX_O, torch.tensor([3.0]), noisy, torch.tensor([3, 4]), Vp=vp[:, :1]
    ).shape == (2, 1, 16, 48)
    with pytest.raises(ValueError, match="divisible"):
        model.tde(clip(h=18, w=32), IDX_O, torch.tensor([3.0]))


def test_gradient_checkpointing_and_channels_last_are_exact():
    model = tiny(tde={"dt": 0.5})
    perturb(model.unet, 0.02)
    x, t, m = torch.randn(3, 2, 16, 32), torch.tensor([1, 400, 999]), torch.randn(3, 16, 4, 8)

    def grads(mod):
        mod.zero_grad()
        out = mod(x, t, m)
        out.square().mean().backward()
        return out.detach(), torch.cat([p.grad.flatten() for p in mod.parameters()])

    o1, g1 = grads(model.unet)
    model.unet.set_gradient_checkpointing(True)
    o2, g2 = grads(model.unet)
    assert torch.equal(o1, o2) and torch.allclose(g1, g2, atol=1e-6)
    model.unet.set_gradient_checkpointing(False)
    cl = model.unet.to(memory_format=torch.channels_last)
    with torch.no_grad():
        o3 = cl(x.to(memory_format=torch.channels_last), t, m.to(memory_format=torch.channels_last))
    assert torch.allclose(o1, o3, atol=1e-4)


@torch.no_grad()
def test_attention_matches_explicit_softmax():
    model = tiny()
    attn = model.unet.down_blocks[1].attentions[0]  # 16 channels, head_dim 8: 2 heads
    perturb(attn, 0.2)
    x = torch.randn(2, 16, 8, 16)
    b, c, h, w = x.shape
    tokens = attn.group_norm(x).flatten(2).transpose(1, 2)
    heads = []
    for i in range(2):
        sl = slice(8 * i, 8 * i + 8)
        q, k, v = (lin(tokens)[..., sl] for lin in (attn.query, attn.key, attn.value))
        heads.append(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(8), dim=-1) @ v)
    want = attn.proj_attn(torch.cat(heads, -1)).transpose(1, 2).reshape(b, c, h, w) + x
    assert torch.allclose(attn(x), want, atol=1e-5)


# ---------------------------------------------------------------------------- scheduler, errors
def test_scheduler_config_travels_with_the_state_dict():
    linear = {**DEFAULT_SCHEDULER_CONFIG, "beta_schedule": "linear"}
    trained = tiny(scheduler_config=linear)
    sd = trained.state_dict()
    assert sd["_extra_state"]["scheduler_config"]["beta_schedule"] == "linear"
    fresh = tiny()
    assert fresh.make_scheduler().config.beta_schedule == "squaredcos_cap_v2"
    fresh.load_state_dict(sd)
    sched = fresh.make_scheduler()
    assert sched.config.beta_schedule == "linear"
    assert torch.allclose(sched.betas, torch.linspace(1e-4, 0.02, 1000))
    assert type(fresh.make_scheduler("dpm")).__name__ == "DPMSolverMultistepScheduler"
    with pytest.raises(ValueError, match="differs from the one stored"):
        fresh.check_scheduler(tiny().make_scheduler())


def test_bad_inputs_are_named():
    model = tiny(tde={"dt": 0.5})
    sched = model.make_scheduler()
    vo, vp = clip(), clip()
    with pytest.raises(ValueError, match="strictly increasing"):
        model.tde(vo, IDX_O, torch.tensor([4.0, 3.0]))
    with pytest.raises(ValueError, match="strictly increasing"):
        model.tde(vo, IDX_O, torch.tensor([2.0]))  # not after the last observation
    with pytest.raises(ValueError, match="To >= 2"):
        model.tde(vo[:, :1], IDX_O[:1], torch.tensor([3.0]))
    with pytest.raises(ValueError, match="Vp must be"):
        model.training_loss(vo, vp, IDX_O, torch.tensor([3.0, 4.0]), sched)
    with pytest.raises(ValueError, match="MotionEncoder"):
        model.tde(torch.zeros(2, 3, 3, 16, 32), IDX_O, torch.tensor([3.0]))
    with pytest.raises(ValueError, match="m_channels"):
        STDiff(**stdiff_config("tiny", unet={"m_channels": 8}))
    with pytest.raises(ValueError, match="sde_type"):
        tiny(tde={"method": "euler"})  # Ito-only method with a Stratonovich SDE


def test_bf16_autocast_training_step_is_finite():
    model = tiny(tde={"dt": 0.5})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model.training_loss(
            clip(seed=1), clip(seed=2), IDX_O, torch.tensor([3.0, 4.0, 5.0]), model.make_scheduler()
        )
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_channels_last_model_keeps_the_sde_nets_contiguous_and_the_loss():
    model = tiny(tde={"dt": 0.5})
    perturb(model, 0.02)
    args = (
        clip(seed=1),
        clip(seed=2),
        IDX_O,
        torch.tensor([3.0, 4.0, 5.0]),
        model.make_scheduler(),
    )

    def loss_of(m):
        return m.training_loss(*args, generator=torch.Generator().manual_seed(3))[0]

    with torch.no_grad():
        ref = loss_of(model)
        model.to_channels_last()
        got = loss_of(model)
    conv_in = next(m for m in model.unet.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert conv_in.weight.shape[-1] > 1 and not conv_in.weight.is_contiguous()
    for p in model.tde.motion_sde.parameters():
        assert p.is_contiguous()
    assert torch.allclose(got, ref, atol=1e-5)


def test_sde_integrates_in_fp32_under_bf16_autocast():
    """The motion SDE ignores autocast: the same path with and without it, to the bit."""
    model = tiny(tde={"dt": 0.5})
    perturb(model.tde, 0.05)
    y0 = torch.randn(2, model.tde.motion_channels, 4, 8)
    ts = torch.tensor([2.0, 3.0, 4.0])

    def path():
        return model.tde.integrate(y0, ts, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        plain = path()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = path()
    assert autocast.dtype == torch.float32
    assert torch.equal(plain, autocast)


class _ConvDtypes(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the input dtype of every convolution (forward and backward) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.convolution_backward):
            self.dtypes.append(args[0].dtype)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("adjoint", [True, False])
def test_sde_compute_dtype_bfloat16_runs_the_nets_in_bf16_around_an_fp32_state(adjoint):
    """sde_compute_dtype="bfloat16": every conv of the drift / diffusion nets runs in bf16, in
    the forward solve and in the backward (the adjoint's own solve included); the path and the
    gradients stay float32 and within bf16 rounding of the published float32 arithmetic."""
    y0 = torch.randn(2, 16, 4, 8, generator=torch.Generator().manual_seed(4))
    ts = torch.tensor([2.0, 3.0, 4.0])
    runs = {}
    for dtype in ("float32", "bfloat16"):
        model = tiny(tde={"dt": 0.25, "adjoint": adjoint, "sde_compute_dtype": dtype})
        assert model.tde.motion_channels == y0.shape[1]
        perturb(model.tde, 0.05)
        seen = _ConvDtypes()
        with seen:
            path = model.tde.integrate(y0, ts, generator=torch.Generator().manual_seed(0))
            path.square().mean().backward()
        grads = torch.cat([p.grad.flatten() for p in model.tde.motion_sde.parameters()])
        runs[dtype] = (path.detach(), grads, set(seen.dtypes))
    (p32, g32, d32), (p16, g16, d16) = runs["float32"], runs["bfloat16"]
    assert d32 == {torch.float32} and d16 == {torch.bfloat16}
    assert p16.dtype == torch.float32 and not torch.equal(p16, p32)
    assert (p16 - p32).norm() / p32.norm() < 2e-2
    assert (g16 - g32).norm() / g32.norm() < 5e-2


def test_sde_compute_dtype_is_checked():
    with pytest.raises(ValueError, match="sde_compute_dtype"):
        tiny(tde={"sde_compute_dtype": "float16"})


class _ConvThreads(torch.utils._python_dispatch.TorchDispatchMode):
    """Records (forward or backward, weight shape, intra-op threads) of every convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[int, ...], int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten.convolution:
            self.calls.append(("fwd", tuple(args[1].shape), torch.get_num_threads()))
        elif func.overloadpacket is torch.ops.aten.convolution_backward:
            self.calls.append(("bwd", tuple(args[2].shape), torch.get_num_threads()))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("adjoint", [True, False])
@pytest.mark.parametrize("input_grad", [True, False])
def test_sde_threads_scope_the_solve_forward_and_backward(adjoint, input_grad):
    """sde_threads=1 in a 2-thread process: every conv of the solve, forward and backward (the
    adjoint's own solve included), runs on 1 thread, every conv around it on 2; the count is 2
    again after backward, also when the SDE's input needs no gradient; the gradients are
    those of the solve on the process's threads."""
    outer = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(5)
        x = torch.randn(1, 3, 4, 8, generator=g)
        w_in = torch.randn(16, 3, 1, 1, generator=g, requires_grad=input_grad)
        w_out = torch.randn(5, 16, 1, 1, generator=g, requires_grad=True)
        ts = torch.tensor([2.0, 2.5, 3.0])
        runs = {}
        for n in (None, 1):
            model = tiny(tde={"dt": 0.25, "adjoint": adjoint, "sde_threads": n})
            seen = _ConvThreads()
            with seen:
                y0 = F.conv2d(x, w_in)
                path = model.tde.integrate(y0, ts, generator=torch.Generator().manual_seed(0))
                F.conv2d(path[-1], w_out).square().sum().backward()
            assert torch.get_num_threads() == 2
            params = [w_out, *model.tde.motion_sde.parameters()] + ([w_in] if input_grad else [])
            runs[n] = ([p.grad.clone() for p in params], seen.calls)
            for p in params:
                p.grad = None
        (g_all, calls_all), (g_one, calls_one) = runs[None], runs[1]
        for a, b in zip(g_all, g_one):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        outside = {tuple(w_in.shape), tuple(w_out.shape)}
        assert {t for _, _, t in calls_all} == {2}
        assert {t for _, s, t in calls_one if s in outside} == {2}
        sde = [(kind, t) for kind, s, t in calls_one if s not in outside]
        assert {kind for kind, _ in sde} == {"fwd", "bwd"}
        assert {t for _, t in sde} == {1}
    finally:
        torch.set_num_threads(outer)


@pytest.mark.parametrize("bad", [0, "2", True])
def test_sde_threads_is_checked(bad):
    with pytest.raises(ValueError, match="sde_threads"):
        tiny(tde={"sde_threads": bad})


@pytest.mark.parametrize(
    ("tokens", "head_dim", "grad", "expected"),
    [
        (128, 32, True, torch.float32),  # narrow heads, few tokens, training: float32
        (1024, 32, True, torch.bfloat16),  # many tokens: bf16's kernel is the faster one
        (128, 64, True, torch.bfloat16),  # wide heads
        (128, 32, False, torch.bfloat16),  # inference
    ],
)
def test_training_attention_precision_under_autocast(tokens, head_dim, grad, expected):
    from stdiff.unet_blocks import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, tokens, head_dim, generator=g).bfloat16() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(grad):
        out = attention(q, k, v)
    assert out.dtype == expected
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
