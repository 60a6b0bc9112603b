"""The published STDiff training step of the reduced configuration, timed in the same run as
ours (``--reference-stdiff DIR``), so that the speed-up does not rest on a figure timed on
another day (the spec's 3.3 s) or under other OpenMP settings.

``DIR``: a checkout of the published code (anirudhp3010/STDiffproject, the fork the parity
fixtures come from; not shipped here) with its ``CustomDiffusers/src`` (diffusers 0.15 fork).
That diffusers needs ``huggingface_hub < 0.26`` and the model imports ``torchdiffeq``: give a
folder holding both with ``--reference-stdiff-path`` (e.g. ``pip install --target F
huggingface_hub==0.25.2 torchdiffeq==0.2.5``); it goes in front of ``sys.path`` in the
reference's own process only. ``torchvision.transforms`` (used only by the super-resolution
path, off here) is an empty module in that process.

The configuration is the published kitti_range one (shared/reference/stdiff) scaled as
``stdiff_config("reduced")`` is; :func:`reference_reduced_config` checks that it translates to
exactly our preset. The step: batch 1, 3 -> 3 frames, the published training loop's order
(noise, random timestep, ``add_noise``, forward, L1 on the noise, backward, clipping at 1.0,
AdamW with its betas and weight decay, torch's default implementation), one warm-up step,
best of ``repeats``.
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

from scripts.bench.harness import set_threads, timeit
from scripts.bench.stdiff import benchmark_clip, train_step

REFERENCE_CONFIG = (
    Path(__file__).resolve().parents[3] / "shared/reference/stdiff/stdiff_kitti_range_keys.json"
)


_SHADOWED = ("stdiff", "diffusers", "huggingface_hub")


def reference_reduced_config() -> dict:
    """The published config at the reduced size, in the published format; raises when it does
    not translate to our ``reduced`` preset."""
    from stdiff.configs import stdiff_config
    from stdiff.reference import translate_config

    cfg = copy.deepcopy(json.loads(REFERENCE_CONFIG.read_text())["config"])
    ours = stdiff_config("reduced")
    unet = cfg["unet_full"]
    for key in ("sample_size", "m_channels", "block_out_channels", "attention_head_dim"):
        unet[key] = ours["unet"][key]
    cfg["tde"]["MotionEncoder"]["image_size"] = ours["unet"]["sample_size"]
    cfg["tde"]["MotionEncoder"]["model_channels"] = ours["tde"]["model_channels"]
    translated = translate_config({"unet": unet, "tde": cfg["tde"]})
    for part in ("unet", "tde"):
        for key, value in translated[part].items():
            if key in ours[part] and ours[part][key] != value:
                raise ValueError(f"reference reduced config: {part}.{key} {value!r} != ours")
    return {"unet": unet, "tde": cfg["tde"]}


def reference_step_case(ref_dir: str, extra_paths: list[str], threads: int, repeats: int) -> dict:
    """Time the published step in this (fresh) process; see the module docstring."""
    config = reference_reduced_config()
    src = Path(ref_dir) / "CustomDiffusers" / "src"
    if not (src / "diffusers").is_dir() or not (Path(ref_dir) / "stdiff" / "models").is_dir():
        raise FileNotFoundError(
            f"--reference-stdiff {ref_dir}: expected a checkout of the published STDiff code "
            "(stdiff/models and CustomDiffusers/src/diffusers)"
        )
    # Our stdiff (imported for the config), diffusers and huggingface_hub share names with
    # the published stdiff package, its diffusers fork and the hub it needs: drop them first.
    for name in [m for m in sys.modules if m.split(".")[0] in _SHADOWED]:
        del sys.modules[name]
    # The published stdiff is a namespace package, which loses to our regular one wherever
    # ours sits on the path: take this checkout off it too.
    repo = Path(__file__).resolve().parents[2]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != repo]
    sys.path[:0] = [*extra_paths, str(src), str(ref_dir)]
    transforms = types.ModuleType("torchvision.transforms")
    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
    sys.modules.setdefault("torchvision.transforms", transforms)

    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from omegaconf import OmegaConf

    from stdiff.models.stdiff_diffusers import STDiffDiffusers

    set_threads(threads)
    torch.manual_seed(0)
    # The published DiffModel appends its parameter counts to ./debug.txt when built: this
    # process works in a scratch folder so that nothing lands in the caller's.
    scratch = tempfile.mkdtemp(prefix="stdiff_reference_")
    atexit.register(shutil.rmtree, scratch, True)
    os.chdir(scratch)
    model = STDiffDiffusers(config["unet"], OmegaConf.create(config["tde"]))
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
    vo, vp, idx_o, idx_p = benchmark_clip(*config["unet"]["sample_size"])

    def loss_fn():
        clean = vp.flatten(0, 1)
        noise = torch.randn(clean.shape)
        t = torch.randint(0, 1000, (clean.shape[0],)).long()
        out = model(vo, idx_o, idx_p, sched.add_noise(clean, noise, t), t, vp, vo[:, -1:])
        return F.l1_loss(out.sample, noise)

    # Then zero_grad, backward, clipping at 1.0 and AdamW, as our step and the published loop.
    seconds = timeit(train_step(model, opt, loss_fn), repeats, warmup=1)
    return {
        "what": "published STDiff training step, reduced 64 x 128 (same run)",
        "threads": threads,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "time_s": seconds,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "loadavg": os.getloadavg(),
    }
