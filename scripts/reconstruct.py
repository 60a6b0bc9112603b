"""Reconstruct a video of any length with a trained WF-VAE (or TemporalModule-fused decode).

    .venv/bin/python scripts/reconstruct.py IN.mp4 OUT.mp4 \\
        ckpt_path=logs/train/runs/wfvae_kitti/<time>/checkpoints/last.ckpt [--side-by-side]
    .venv/bin/python scripts/reconstruct.py IN.mp4 OUT.mp4 \\
        temporal_ckpt=logs/train/runs/temporal_video/<time>/checkpoints/last.ckpt

WF-VAE (`ckpt_path=`): the video is read, encoded and decoded chunk by chunk with the VAE's chunk
cache (`wfvae.streaming.stream_reconstruct`; `--chunk` frames per encoder chunk), so memory does
not grow with its length. TemporalModule (`temporal_ckpt=`, a temporal run's checkpoint with its
config_tree.yaml beside the checkpoints folder): every frame is encoded alone, fused online with
the previous fused latent warped by the OpenCV flow between the input frames (`--flow`), and
decoded (what `temporal.streaming.stream_decode` does, streamed); the VAE is the temporal run's
(its model.vae_ckpt) unless `ckpt_path=` names another.

Frames are scaled and cropped as the checkpoint's run saw them (its data.short_side / max_size /
image_size; else the native size cropped to multiples of 8; `--short-side` / `--max-size`
override). OUT is written with PyAV (codec by suffix: .mp4 H.264, .webm VP9, .avi MPEG-4) at the
input's frame rate; `--side-by-side` puts the (scaled) input left of the reconstruction.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wavecast.data.datasets import frame_geometry, resize_crop  # noqa: E402
from wavecast.data.video import VideoReader  # noqa: E402
from wavecast.media import VideoWriter  # noqa: E402

SETTINGS = ("ckpt_path", "temporal_ckpt")


def run_config(ckpt: Path) -> dict:
    """The resolved config of the run a checkpoint belongs to ({} when it has none)."""
    from omegaconf import OmegaConf

    tree = ckpt.resolve().parent.parent / "config_tree.yaml"
    return OmegaConf.to_container(OmegaConf.load(tree)) if tree.is_file() else {}


def load_vae(ckpt: Path) -> torch.nn.Module:
    """The WF-VAE of a WF-VAE run's checkpoint (its network config is stored in it)."""
    from temporal.module import load_vae_weights
    from wfvae.model import WFVAE

    obj = torch.load(ckpt, map_location="cpu", weights_only=False)
    meta = obj.get("wavecast") or {} if isinstance(obj, dict) else {}
    if meta.get("model") != "wfvae":
        raise SystemExit(
            f"ckpt_path={ckpt}: not a WF-VAE run's checkpoint (it says model "
            f"{meta.get('model')!r}); a TemporalModule run goes in temporal_ckpt="
        )
    config = {k: v for k, v in meta["net_config"].items() if k != "gradient_checkpointing"}
    vae = WFVAE(**config)
    load_vae_weights(vae, ckpt)
    return vae.eval()


def load_temporal(ckpt: Path) -> torch.nn.Module:
    """A temporal run's TemporalFusionModule: VAE from its model.vae_ckpt, TemporalModule from
    the checkpoint."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    tree = ckpt.resolve().parent.parent / "config_tree.yaml"
    if not tree.is_file():
        raise SystemExit(f"temporal_ckpt={ckpt}: no {tree} (is it a train.py temporal run?)")
    cfg = OmegaConf.load(tree)
    if "temporal" not in str(cfg.model.get("_target_", "")):
        raise SystemExit(f"temporal_ckpt={ckpt}: its run trained {cfg.model._target_}")
    module = instantiate(cfg.model)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    prefix = "temporal."
    module.temporal.load_state_dict(
        {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    )
    return module.eval()


def to_tensor(frame: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [3, h, w] in [-1, 1], scaled to cover `size` and centre-cropped."""
    frame = resize_crop(frame[None], size)[0]
    return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> uint8 [H, W, 3]."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round()
    return x.to(torch.uint8).permute(1, 2, 0).numpy()


@torch.no_grad()
def stream_fused(
    module: torch.nn.Module, frames: Iterable[torch.Tensor], flow_method: str = "dis"
) -> Iterator[torch.Tensor]:
    """TemporalModule-fused decode, frame by frame: frames [3, H, W] in, frames [3, H, W] out.

    z_fused[0] = z[0]; z_fused[t] = temporal(z_fused[t-1], z[t], flow(x[t-1] -> x[t]) on the
    latent grid), each z the posterior mode of the frame encoded alone.
    """
    from wavecast.flow import estimate_flow

    prev_x = prev_z = None
    for x in frames:
        z = module.vae.encode(x[None, :, None]).posterior.mode()[:, :, 0]
        if prev_z is None:
            fused = z
        else:
            flow_lat = None
            if getattr(module, "flow_input", "given") != "predicted":
                flow = estimate_flow(prev_x[None], x[None], method=flow_method, value_range=(-1, 1))
                flow_lat, _ = module.latent_flow(flow.to(z), None, tuple(z.shape[-2:]))
            fused, _, _ = module.temporal(prev_z, z, flow=flow_lat)
        yield module.decode(fused)[0]
        prev_x, prev_z = x, fused


def geometry(args: argparse.Namespace, cfg: dict, size: tuple[int, int]) -> tuple[int, int]:
    """Output (H, W): the flags, else the run's data geometry, else native cut to multiples of 8."""
    data = cfg.get("data") or {}
    if args.short_side is None and args.max_size is None and data.get("image_size"):
        return tuple(int(s) for s in data["image_size"])
    short = args.short_side if args.short_side is not None else data.get("short_side")
    longest = args.max_size if args.max_size is not None else data.get("max_size")
    return frame_geometry(size, short, longest)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="settings: ckpt_path=<WF-VAE checkpoint>, temporal_ckpt=<TemporalModule checkpoint>",
    )
    parser.add_argument("input", type=Path, help="video to reconstruct (mp4, mkv, avi, webm, ...)")
    parser.add_argument("output", type=Path, help="where to write (.mp4, .webm, .avi, .mkv)")
    parser.add_argument("settings", nargs="*", help="ckpt_path=... and/or temporal_ckpt=...")
    parser.add_argument("--side-by-side", action="store_true", help="input | reconstruction")
    parser.add_argument("--chunk", type=int, default=16, help="frames per encoder chunk (4k)")
    parser.add_argument("--short-side", type=int, default=None)
    parser.add_argument("--max-size", type=int, default=None)
    parser.add_argument("--flow", default="dis", choices=("dis", "farneback"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    for item in args.settings:
        key, eq, value = item.partition("=")
        if not eq or key not in SETTINGS:
            parser.error(f"{item!r}: expected one of {', '.join(s + '=...' for s in SETTINGS)}")
        setattr(args, key, Path(value))
    for key in SETTINGS:
        if not hasattr(args, key):
            setattr(args, key, None)
    if args.ckpt_path is None and args.temporal_ckpt is None:
        parser.error("give ckpt_path=<WF-VAE checkpoint> (and/or temporal_ckpt=...)")
    for key in SETTINGS:
        path = getattr(args, key)
        if path is not None and not path.is_file():
            parser.error(f"{key}={path}: no such file")
    if not args.input.is_file():
        parser.error(f"{args.input}: no such file")
    if args.output.resolve() == args.input.resolve():
        parser.error("the output would overwrite the input")
    return args


def main(argv: list[str] | None = None) -> Path:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    args = parse(argv)
    device = torch.device(args.device)
    if args.temporal_ckpt is not None:
        module = load_temporal(args.temporal_ckpt)
        if args.ckpt_path is not None:
            module.vae = load_vae(args.ckpt_path)
        cfg, model = run_config(args.temporal_ckpt), module.to(device)
    else:
        cfg, model = run_config(args.ckpt_path), load_vae(args.ckpt_path).to(device)
    with VideoReader(args.input) as reader:
        size = geometry(args, cfg, reader.size)
        h, w = size
        print(f"{args.input}: {reader.n_frames} frames {reader.size[0]}x{reader.size[1]} at "
              f"{reader.fps:.3g} fps -> {h}x{w}")  # fmt: skip
        inputs = (to_tensor(f, size).to(device) for f in reader.iter_frames())
        kept: list[torch.Tensor] = []  # inputs awaiting their reconstruction (side by side)

        def remember(frames: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
            for x in frames:
                if args.side_by_side:
                    kept.append(x)
                yield x

        if args.temporal_ckpt is not None:
            outputs = stream_fused(model, remember(inputs), args.flow)
        else:
            from wfvae.streaming import stream_reconstruct

            outputs = stream_reconstruct(model, remember(inputs), chunk=args.chunk)
        out_size = (h, 2 * w) if args.side_by_side else (h, w)
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                   "{task.total} frames"), TimeRemainingColumn())  # fmt: skip
        with (
            VideoWriter(args.output, reader.fps or 25.0, out_size) as writer,
            Progress(*columns) as bar,
        ):
            task = bar.add_task("reconstructing", total=reader.n_frames)
            for y in outputs:
                frame = to_uint8(y)
                if args.side_by_side:
                    frame = np.concatenate([to_uint8(kept.pop(0)), frame], axis=1)
                writer.write(frame)
                bar.advance(task)
    print(f"written {args.output} ({writer.frames} frames {out_size[0]}x{out_size[1]})")
    return args.output


if __name__ == "__main__":
    main()
