"""Every recipe is valid data: its named specs resolve and validate without loading any data."""

import pytest

from neuratlas.data import DATASETS
from neuratlas.models import MODELS
from neuratlas.recipes import RECIPES, get_recipe
from neuratlas.tasks import TASKS
from neuratlas.tour import tour_recipes


@pytest.mark.parametrize("name", RECIPES.names())
def test_recipe_is_valid(name):
    recipe = get_recipe(name)
    run = recipe.run_config()
    for registry, spec in ((MODELS, run.model), (DATASETS, run.data), (TASKS, run.task)):
        spec = dict(spec)
        registry.get(spec.pop("name")).config(**spec)
    assert recipe.description and recipe.family


def test_each_family_has_one_tour_recipe():
    families = [r.family for r in tour_recipes()]
    assert len(families) == len(set(families))
    assert {"mlp", "convnet", "resnet", "mobilenet", "efficientnet"} <= set(families)
