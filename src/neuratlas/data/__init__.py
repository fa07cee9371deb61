"""Data sets, transforms and loaders. Every module here is imported so its data sets register."""

import importlib
import pkgutil

from neuratlas.data.registry import DATASETS, load_dataset, register_dataset

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("registry", "sources", "loaders", "transforms") and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["DATASETS", "load_dataset", "register_dataset"]
