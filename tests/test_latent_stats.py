import torch

from wfvae.latent_stats import LatentStats


def test_latent_stats_recover_known_per_channel_moments():
    g = torch.Generator().manual_seed(0)
    mean = torch.tensor([0.5, -2.0, 3.0])
    std = torch.tensor([0.1, 2.0, 0.7])
    stats = LatentStats()
    for _ in range(20):  # streaming over batches of [B, C, T, H, W]
        z = torch.randn(2, 3, 3, 8, 8, generator=g) * std.view(1, 3, 1, 1, 1) + mean.view(
            1, 3, 1, 1, 1
        )
        stats.update(z)
    res = stats.result()
    assert torch.allclose(torch.tensor(res["shift"]), mean, atol=0.05 * std.max())
    assert torch.allclose(torch.tensor(res["std"]), std, rtol=0.05)
    normalised = (z - torch.tensor(res["shift"]).view(1, 3, 1, 1, 1)) * torch.tensor(
        res["scale"]
    ).view(1, 3, 1, 1, 1)
    assert abs(normalised.std().item() - 1.0) < 0.1
