"""Section ``lightning``: a training step through Lightning against a raw PyTorch loop on the
same module (tiny WF-VAE) and data."""

from __future__ import annotations

import time

from scripts.bench.harness import Context, in_process, set_threads


def lightning_overhead(threads: int, steps: int = 20) -> dict:
    """Training-step time through Lightning vs a raw PyTorch loop on the same module and data."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from wfvae.losses import WFVAELoss
    from wfvae.model import WFVAE, wfvae_config
    from wfvae.module import WFVAEModule

    set_threads(threads)

    def make():
        torch.manual_seed(0)
        net = WFVAE(**wfvae_config("tiny"))
        loss = WFVAELoss(lpips_weights=None, perceptual_weight=0.0)
        opt = lambda params: torch.optim.AdamW(params, lr=1e-4)  # noqa: E731
        return WFVAEModule(net, loss, opt, grad_clip=1.0)

    data = torch.rand(steps + 2, 3, 9, 64, 64) * 2 - 1

    class Wrap(TensorDataset):
        def __getitem__(self, i):
            return {"video": self.tensors[0][i]}

    loader = DataLoader(Wrap(data), batch_size=1)

    # Raw loop: exactly the work of WFVAEModule.training_step without Lightning.
    module = make()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    batches = [{"video": data[i : i + 1]} for i in range(len(data))]

    def raw_step(b):
        out = module.net(b["video"], sample_posterior=True)
        loss, _ = module.loss.generator_loss(b["video"], out, 0, last_layer=None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()

    for b in batches[:2]:
        raw_step(b)
    t0 = time.perf_counter()
    for b in batches[2:]:
        raw_step(b)
    raw = (time.perf_counter() - t0) / steps

    module = make()
    timer = {}

    class StepTimer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 2:
                timer["t0"] = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            timer["t1"] = time.perf_counter()

    trainer = pl.Trainer(
        max_steps=steps + 2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[StepTimer()],
        log_every_n_steps=1,
    )
    trainer.fit(module, loader)
    lit = (timer["t1"] - timer["t0"]) / steps
    return {
        "raw_step_s": raw,
        "lightning_step_s": lit,
        "ratio": lit / raw,
        "steps": steps,
        "shape": "1x3x9x64x64",
        "model": "tiny",
    }


def run(ctx: Context) -> dict:
    return {"lightning_overhead": in_process(lightning_overhead, ctx.args.threads)}
