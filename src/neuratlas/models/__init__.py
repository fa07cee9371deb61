"""Model families, one file each. Every module in this package is imported so its models register."""

import importlib
import pkgutil

from neuratlas.models.registry import MODELS, count_parameters, create_model, list_models, register_model

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("registry",) and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["MODELS", "count_parameters", "create_model", "list_models", "register_model"]
