"""Small geometric helpers shared by the simulator's models."""

from __future__ import annotations

import torch


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm (zero rows stay zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def random_unit(n: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """n vectors uniform on the unit sphere of R^dim (normalized Gaussians)."""
    return unit(torch.randn(n, dim, generator=gen))
