"""``create_model`` / ``list_models``: the one way every family's models are built by name."""

from __future__ import annotations

from typing import Any

from torch import nn

from neuratlas.config import to_dict
from neuratlas.registry import Entry, Registry

MODELS: Registry = Registry("model")


def register_model(name: str, model_class: type[nn.Module], description: str = "", **defaults: Any) -> Entry:
    """Register ``name`` as ``model_class(model_class.Config(**defaults))``.

    Every model class carries its config dataclass as ``Config``; the family is the defining module's name.
    """
    family = model_class.__module__.rsplit(".", 1)[-1]
    if "save_pretrained" not in vars(model_class):  # one implementation for every family
        from neuratlas.models.pretrained import save_pretrained

        model_class.save_pretrained = save_pretrained
    return MODELS.add(name, model_class, model_class.Config, family=family, description=description, **defaults)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model("resnet50", num_classes=10)``.

    Unknown options raise a NeuratlasError listing the valid ones. The model remembers its name and
    config (``model.model_name``, ``model.config``) so checkpoints can rebuild it exactly.
    """
    entry = MODELS.get(name)
    cfg = entry.config(**overrides)
    model = entry.builder(cfg)
    model.model_name = name
    model.config = cfg
    return model


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob, e.g. ``list_models("resnet*")``."""
    return MODELS.names(pattern)


def model_config_dict(model: nn.Module) -> dict[str, Any]:
    return to_dict(model.config)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
