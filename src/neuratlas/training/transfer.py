"""Transfer learning: start from trained weights, replace the head, choose what trains and how fast.

- :func:`~neuratlas.weights.load_pretrained` (in :mod:`neuratlas.weights`) copies every tensor of a Neuratlas
  checkpoint (or any state dict) whose name and shape fit; a different head or input-channel count is handled.
- :func:`freeze` / :func:`unfreeze` by parameter-name globs (``"stages.0.*"``, ``"*.bias"``).
- :func:`layer_groups` + :func:`discriminative_lr_mults`: the lr shrinks by ``lr_decay`` per group from
  the head down (ULMFiT's discriminative fine-tuning), as ordinary ``--optimizer.lr_mults`` parameter groups,
  so every optimizer option applies; :class:`GradualUnfreezer` thaws one group from the top every ``every``
  steps.
- :func:`~neuratlas.weights.lite0_state`: the real ImageNet EfficientNet-Lite0 weights (in
  :mod:`neuratlas.weights`) for ``--transfer.checkpoint imagenet-lite0``.
- :func:`setup_transfer`: all of the above from a run's ``transfer`` section; the one Trainer calls it.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, replace

from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.layers.lora import apply_lora
from neuratlas.optim import OptimizerConfig
from neuratlas.training.config import RunConfig
from neuratlas.weights import lite0_state, load_pretrained

# --- loading weights ---------------------------------------------------------------------------------


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """A fresh linear classifier for ``num_classes`` (image classifiers' ``classifier``); the config follows,
    so checkpoints of the fine-tuned model rebuild with the new head."""
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise NeuratlasError(f"{type(model).__name__} has no linear `classifier` head to replace")
    new = nn.Linear(head.in_features, num_classes, device=head.weight.device, dtype=head.weight.dtype)
    nn.init.normal_(new.weight, 0, 0.01)
    nn.init.zeros_(new.bias)
    model.classifier = new
    if hasattr(getattr(model, "config", None), "num_classes"):
        model.config.num_classes = num_classes
    return model


# --- what trains --------------------------------------------------------------------------------------


def _match(model: nn.Module, patterns: list[str] | str) -> list[tuple[str, nn.Parameter]]:
    pats = [p.strip() for p in ([patterns] if isinstance(patterns, str) else patterns) if p.strip()]
    hits = [(n, p) for n, p in model.named_parameters() if any(fnmatch.fnmatchcase(n, pat) for pat in pats)]
    if pats and not hits:
        names = [n for n, _ in model.named_parameters()]
        raise NeuratlasError(
            f"patterns {pats} match no parameter; names look like {', '.join(names[:4])}, ..., {names[-1]}"
        )
    return hits


def freeze(model: nn.Module, patterns: list[str] | str) -> int:
    """Stop gradients for parameters whose names match any glob; returns how many tensors were frozen."""
    hits = _match(model, patterns)
    for _, p in hits:
        p.requires_grad_(False)
    return len(hits)


def unfreeze(model: nn.Module, patterns: list[str] | str) -> int:
    hits = _match(model, patterns)
    for _, p in hits:
        p.requires_grad_(True)
    return len(hits)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def layer_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names grouped by depth, input first: stem, each stage, head conv, classifier for image
    classifiers; otherwise one group per top-level child (``blocks.N`` / ``layers.N`` split per block)."""
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        m = re.match(r"(.*?\b(?:stages|blocks|layers|h)\.\d+)\.", name)
        key = m.group(1) if m else name.split(".")[0]
        groups.setdefault(key, []).append(name)
    return list(groups.values())


class GradualUnfreezer:
    """ULMFiT's gradual unfreezing: start with the top ``start`` groups trainable; every ``every`` steps
    thaw the next group down."""

    def __init__(self, model: nn.Module, groups: list[list[str]], every: int, start: int = 1) -> None:
        if every < 1:
            raise NeuratlasError(f"unfreeze_every must be ≥ 1 step, got {every}")
        self.model, self.groups, self.every, self.start = model, groups, every, start
        params = dict(model.named_parameters())
        for i, names in enumerate(groups):
            for n in names:
                params[n].requires_grad_(i >= len(groups) - start)

    def thawed(self, step: int) -> int:
        return min(len(self.groups), self.start + step // self.every)

    def update(self, step: int) -> None:
        params = dict(self.model.named_parameters())
        k = self.thawed(step)
        for names in self.groups[len(self.groups) - k :]:
            for n in names:
                params[n].requires_grad_(True)


# --- the fine-tuning set-up ------------------------------------------------------------------------------


def discriminative_lr_mults(
    model: nn.Module, lr_decay: float, groups: list[list[str]] | None = None, include_frozen: bool = False
) -> str:
    """``--optimizer.lr_mults`` rules giving layer group i of n the multiplier ``lr_decay ** (n - 1 - i)`` (the
    head keeps 1): ULMFiT's discriminative fine-tuning as ordinary optimizer parameter groups."""
    groups = groups or layer_groups(model)
    params = dict(model.named_parameters())
    return ",".join(
        f"{name}={lr_decay ** (len(groups) - 1 - i):.6g}"
        for i, names in enumerate(groups)
        for name in names
        if include_frozen or params[name].requires_grad
    )


@dataclass
class TransferSetup:
    """What a run's ``transfer`` section did to the model, and what the optimizer and loop must know."""

    optimizer: OptimizerConfig  # the run's optimizer with the discriminative lr multipliers filled in
    unfreezer: GradualUnfreezer | None
    lora: bool  # the model carries LoRA adapters: checkpoints hold the merged weights


def setup_transfer(model: nn.Module, run: RunConfig) -> TransferSetup:
    """Start ``model`` from the ``transfer`` section's weights, then add LoRA adapters, freeze, and derive the
    optimizer's parameter groups; a run without a transfer section passes through unchanged."""
    tc, oc = run.transfer, run.optimizer
    if not tc.active:
        return TransferSetup(oc, None, False)
    if tc.checkpoint:
        load_pretrained(model, lite0_state(model) if tc.checkpoint == "imagenet-lite0" else tc.checkpoint)
    head = ["classifier.*"] if tc.train_head and hasattr(model, "classifier") else []
    if tc.lora_rank:
        apply_lora(model, tc.lora_targets.split(","), tc.lora_rank, tc.lora_alpha)
    if tc.freeze:
        freeze(model, tc.freeze.split(","))
    if head and (tc.lora_rank or tc.freeze):
        unfreeze(model, head)
    groups = layer_groups(model)
    unfreezer = GradualUnfreezer(model, groups, tc.unfreeze_every) if tc.unfreeze_every else None
    if tc.lr_decay != 1:
        if oc.lr_mults:
            raise NeuratlasError(
                "a transfer run sets its lrs with --transfer.lr_decay; leave --optimizer.lr_mults "
                "empty (or set --transfer.lr_decay 1)"
            )
        if oc.name == "muon":
            raise NeuratlasError("--transfer.lr_decay needs per-group lrs, which muon does not take; use adamw")
        oc = replace(oc, lr_mults=discriminative_lr_mults(model, tc.lr_decay, groups, unfreezer is not None))
    if unfreezer:  # frozen groups stay in the optimizer so that thawing them later trains them
        oc = replace(oc, include_frozen=True)
    if not any(p.requires_grad for p in model.parameters()):
        raise NeuratlasError("every parameter is frozen; unfreeze something (--transfer.freeze '')")
    return TransferSetup(oc, unfreezer, bool(tc.lora_rank))
