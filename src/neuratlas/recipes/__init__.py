"""Recipes, one module per family. Every module here is imported so its recipes register."""

import importlib
import pkgutil

from neuratlas.recipes.registry import RECIPES, Recipe, get_recipe, register_recipe

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "registry" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["RECIPES", "Recipe", "get_recipe", "register_recipe"]
