"""Named recipes: a RunConfig as data, plus what the tour needs to know about it."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from neuratlas.registry import Registry
from neuratlas.tasks.base import task_class
from neuratlas.training.config import RunConfig

RECIPES: Registry = Registry("recipe")


@dataclass
class Recipe:
    name: str
    config: dict[str, Any]
    description: str = ""
    family: str = ""  # the tour runs one recipe per family: the one marked tour=True
    tour: bool = False
    target: str = ""  # what the recipe is expected to reach, e.g. "test accuracy ≥ 0.90"

    def run_config(self, overrides: dict[str, str] | None = None) -> RunConfig:
        cfg = RunConfig.from_dict(copy.deepcopy(self.config))
        return cfg.override(overrides, tuple(task_class(cfg.task).sections)) if overrides else cfg


def register_recipe(
    name: str, config: dict[str, Any], description: str = "", family: str = "", tour: bool = False, target: str = ""
) -> Recipe:
    cfg = copy.deepcopy(config)
    cfg.setdefault("trainer", {}).setdefault("run_name", None)
    recipe = Recipe(name, cfg, description, family, tour, target)
    RECIPES.add(name, lambda: recipe, family=family, description=description)
    return recipe


def get_recipe(name: str) -> Recipe:
    return RECIPES.get(name).builder()
