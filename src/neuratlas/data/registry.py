"""The data-set registry: each entry loads one real data set from a config dataclass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from neuratlas.registry import Entry, Registry

DATASETS: Registry = Registry("data set")


USER_FILES = "your files"  # the family of data sets that read a user's own files (nothing to fetch)


def register_dataset(
    name: str,
    loader: Callable[[Any], Any],
    config_class: type,
    description: str = "",
    user_files: bool = False,
    **defaults: Any,
) -> Entry:
    family = USER_FILES if user_files else ""
    return DATASETS.add(name, loader, config_class, description=description, family=family, **defaults)


def load_dataset(spec: dict[str, Any]) -> Any:
    """``{"name": "fashion-mnist", "batch_size": 256}`` -> the loaded data set (config validated first)."""
    spec = dict(spec)
    entry = DATASETS.get(spec.pop("name"))
    return entry.builder(entry.config(**spec))
