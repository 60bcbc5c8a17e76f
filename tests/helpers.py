"""Inputs shared by the test tiers."""

import torch


def residual_inputs(shape, seed=0):
    """Gaussian features at several magnitudes plus exact zeros and grid points (bin edges)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.tensor([0.3, 1.0, 3.0])[torch.randint(0, 3, shape, generator=g)]
    flat = x.view(-1)
    flat[: flat.numel() // 10] = 0.0
    flat[flat.numel() // 10: flat.numel() // 5] = torch.linspace(-1.5, 1.5, flat.numel() // 5 - flat.numel() // 10)
    return x

