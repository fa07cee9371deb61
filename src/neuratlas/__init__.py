"""Neuratlas: the modern landscape of neural networks as readable, tested, fast PyTorch code."""

__version__ = "0.1.0"

from typing import Any  # noqa: E402

from torch import nn  # noqa: E402

from neuratlas.api import load_model, predict, train  # noqa: E402
from neuratlas.errors import NeuratlasError  # noqa: E402
from neuratlas.export import export_model  # noqa: E402
from neuratlas.models import create_model as _build  # noqa: E402
from neuratlas.models import list_models  # noqa: E402
from neuratlas.weights import load_llm, load_pretrained_weights  # noqa: E402  (also registers the LLM names)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model, with the real weights its ``pretrained`` option names loaded, e.g.
    ``create_model("minilm-l6")`` or ``create_model("fcos-lite0-imagenet", num_classes=3)``.

    Unknown options raise a NeuratlasError listing the valid ones. :func:`neuratlas.models.create_model`
    builds the same architecture without reading any weights.
    """
    model = _build(name, **overrides)
    load_pretrained_weights(model)
    return model


__all__ = [
    "NeuratlasError",
    "__version__",
    "create_model",
    "export_model",
    "list_models",
    "load_llm",
    "load_model",
    "predict",
    "train",
]
