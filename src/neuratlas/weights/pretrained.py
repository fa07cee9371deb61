"""The one place where a model's ``pretrained`` option turns into weights.

Models keep ``pretrained`` in their config as data (``minilm-l6``: ``"all-MiniLM-L6-v2"``, the detectors and
U-Nets on Lite0: ``"imagenet-lite0"``) and never read files while being built. :func:`load_pretrained_weights`
is called once after a model is built for training or by a user (:func:`neuratlas.create_model`, the
trainer's model construction); a checkpoint rebuilds the architecture without it, so the weights it holds
are the only ones read and a checkpoint can never send the loader to another location.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.models.bert import BERT
from neuratlas.models.detection import Detector
from neuratlas.models.unet import UNet
from neuratlas.weights.bert import load_bert_weights, resolve_pretrained
from neuratlas.weights.efficientnet import LITE0_FILE, load_efficientnet_lite0


def _bert(model: nn.Module, name: str) -> str:
    folder = resolve_pretrained(name)
    load_bert_weights(model, folder)
    return f"{name} ({folder})"


def _lite0_into(part: str) -> Callable[[nn.Module, str], str]:
    def load(model: nn.Module, name: str) -> str:
        load_efficientnet_lite0(getattr(model, part))
        return f"{name} ({LITE0_FILE}) into the {part}"

    return load


# model class -> loader(model, the name in its config) returning what was loaded
LOADERS: dict[type[nn.Module], Callable[[nn.Module, str], str]] = {
    BERT: _bert,
    Detector: _lite0_into("backbone"),
    UNet: _lite0_into("encoder"),
}


def load_pretrained_weights(model: nn.Module) -> str:
    """Load the real weights that a freshly built model's config names in ``pretrained``; returns a line
    saying what was loaded ("" when the config names none)."""
    cfg = getattr(model, "config", None) or getattr(model, "cfg", None)
    name = getattr(cfg, "pretrained", "")
    if not name:
        return ""
    loader = next((f for cls, f in LOADERS.items() if isinstance(model, cls)), None)
    if loader is None:
        raise NeuratlasError(f"{type(model).__name__} has no importer for pretrained={name!r}")
    return loader(model, name)
