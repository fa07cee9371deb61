"""Normalisation layers by name; RMSNorm lives here once for every transformer-style family."""

from __future__ import annotations

import torch
from torch import nn

from neuratlas.errors import NeuratlasError


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) * weight — LayerNorm without centring or bias (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def get_norm(name: str, dim: int, **kw) -> nn.Module:
    """``batchnorm``/``bn`` (2d), ``batchnorm1d``, ``layernorm``, ``rmsnorm``, ``groupnorm``, ``none``."""
    name = name.lower()
    if name in ("batchnorm", "bn", "batchnorm2d"):
        return nn.BatchNorm2d(dim, **kw)
    if name == "batchnorm1d":
        return nn.BatchNorm1d(dim, **kw)
    if name in ("layernorm", "ln"):
        return nn.LayerNorm(dim, **kw)
    if name == "rmsnorm":
        return RMSNorm(dim, **kw)
    if name in ("groupnorm", "gn"):
        return nn.GroupNorm(kw.pop("groups", 32 if dim % 32 == 0 else 1), dim, **kw)
    if name in ("none", "identity"):
        return nn.Identity()
    raise NeuratlasError(
        f"unknown norm {name!r}; choose from batchnorm, batchnorm1d, layernorm, rmsnorm, groupnorm, none"
    )
