"""LoRA (Hu et al. 2021): a frozen linear layer plus a trainable low-rank update ``(alpha / r) · B A``.

``B`` starts at zero, so a freshly adapted model computes exactly what the base model computed. ``merge``
folds the update into the base weight (no extra cost at inference) and ``unmerge`` takes it out again;
both are exact up to float rounding. Only ``lora_A``/``lora_B`` need saving after fine-tuning.
"""

from __future__ import annotations

import copy
import fnmatch
import math

import torch
from torch import nn

from neuratlas.errors import NeuratlasError


class LoRALinear(nn.Module):
    """Wraps an ``nn.Linear``; the base weight and bias are frozen, ``lora_A`` (r, in) and ``lora_B`` (out, r)
    train."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if rank < 1:
            raise NeuratlasError(f"LoRA rank must be ≥ 1, got {rank}")
        self.base, self.rank, self.alpha = base, rank, alpha
        self.scaling = alpha / rank
        for p in base.parameters():
            p.requires_grad_(False)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and the LoRA reference code)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, in)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
            self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        # x @ A^T @ B^T: two thin matmuls, never the full (out, in) update
        return out + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def apply_lora(
    model: nn.Module,
    targets: list[str] | str = "*",
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    freeze_rest: bool = True,
) -> list[str]:
    """Replace every ``nn.Linear`` whose qualified name matches one of the ``targets`` globs by a LoRALinear.

    With ``freeze_rest`` every other parameter is frozen too, so only the adapters train (add the head back
    with :func:`neuratlas.training.transfer.unfreeze`). Returns the adapted module names.
    """
    patterns = [targets] if isinstance(targets, str) else list(targets)
    if freeze_rest:
        for p in model.parameters():
            p.requires_grad_(False)
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and any(fnmatch.fnmatchcase(n, pat) for pat in patterns)
    ]
    if not names:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise NeuratlasError(
            f"LoRA targets {patterns} match no linear layer; linear layers are: "
            f"{', '.join(linears[:12]) or 'none'}{' ...' if len(linears) > 12 else ''}"
        )
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout))
    return names


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (inference at the base model's cost)."""
    for m in lora_layers(model):
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Take every merged adapter back out of its base weight (to continue training it)."""
    for m in lora_layers(model):
        m.unmerge()


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors: what a LoRA fine-tune needs to save."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A" in k or ".lora_B" in k}


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every adapter merged and unwrapped: plain ``nn.Linear`` layers under their
    original names, so it saves and loads like the base model."""
    out = copy.deepcopy(model)
    for name, m in list(out.named_modules()):
        if isinstance(m, LoRALinear):
            m.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent_name) if parent_name else out, child, m.base)
    for p in out.parameters():
        p.requires_grad_(True)
    return out
