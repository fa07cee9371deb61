"""Every registered recipe goes through the whole life of a run on its real data, shrunk to a few steps:
train 2 steps (checkpoints written), resume to step 3 exactly where it stopped, `neuratlas eval` the run,
`neuratlas predict` on inputs made from its held-out data. One recipe per task runs in the default suite; the
rest are marked slow and run in full with NEURATLAS_FULL_TESTS=1.

Trainer options are checked per task as well: each either changes what the run computes or is refused with
one line; none is accepted and ignored.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from neuratlas.cli import main
from neuratlas.data import DATASETS
from neuratlas.errors import NeuratlasError
from neuratlas.models.checkpoint import read_checkpoint
from neuratlas.paradigms import PARADIGM_SECTIONS
from neuratlas.recipes import RECIPES, get_recipe
from neuratlas.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

# the smallest slice of each data set that still exercises it: applied where its config has the option
SMALL_DATA = {"limit_train": 256, "val_size": 128, "batch_size": 8, "max_len": 32}


def user_file(data_name: str, tmp_path) -> dict[str, str]:
    """The options pointing a recipe for the user's own file at one the test writes (a real series)."""
    if data_name == "csv-series":
        from neuratlas.bench.forecasting import taylor_csv

        tmp_path.mkdir(parents=True, exist_ok=True)
        return {"data.path": str(taylor_csv(tmp_path)), "data.target": "demand_mw"}
    return {}


def small(recipe_name: str, tmp_path, **trainer: str) -> dict[str, str]:
    recipe = get_recipe(recipe_name)
    run = recipe.run_config()
    fields = {f.name: f for f in dataclasses.fields(DATASETS.get(run.data["name"]).config_class)}
    data = {
        f"data.{k}": str(min(v, run.data.get(k, fields[k].default) or v))
        for k, v in SMALL_DATA.items()
        if k in fields and isinstance(run.data.get(k, fields[k].default), (int, type(None)))
    }
    return {
        "trainer.out_dir": str(tmp_path / "runs"),
        "trainer.run_name": "run",
        "trainer.progress": "false",
        "trainer.loggers": "csv",
        "trainer.time_limit": "none",
        "trainer.budget_schedule": "false",
        "trainer.eval_every": "1000000",
        "trainer.max_steps": "2",
        **data,
        **user_file(run.data["name"], tmp_path),
        **{f"trainer.{k}": v for k, v in trainer.items()},
    }


def first_recipe_of_each_task() -> set[str]:
    """The default suite's share: one recipe per task (a pretrained LLM's, 135M parameters, only in the slow set)."""
    seen: dict[str, str] = {}
    for name in RECIPES.names():
        recipe = get_recipe(name)
        if not set(PARADIGM_SECTIONS) & set(recipe.run_config().sections) and recipe.family != "llm":
            seen.setdefault(recipe.run_config().task["name"], name)
    return set(seen.values())


FAST = first_recipe_of_each_task()
# federated runs are rounds of client training, not one Trainer.fit: test_federated.py covers them
RUNNERS = {n for n in RECIPES.names() if set(PARADIGM_SECTIONS) & set(get_recipe(n).run_config().sections)}


FULL = os.environ.get("NEURATLAS_FULL_TESTS") == "1"
BOUNDED = pytest.mark.skipif(not FULL, reason="bounded form: one recipe per task; NEURATLAS_FULL_TESTS=1 runs all")


# Recipes whose few steps still cost minutes on 2 cores (a full held-out evaluation with beam search, box
# decoding, a 30k-token vocabulary): in the slow set, which CI runs, so the default suite stays short.
HEAVY = {"g2p-transformer-2017", "detection-trees-quick", "bert-rotten-tomatoes", "gpt-shakespeare-bpe", "clip-emoji"}


def _params(names):
    def marks(n):
        if n not in FAST:
            return (pytest.mark.slow, BOUNDED)
        return (pytest.mark.slow,) if n in HEAVY else ()

    return [pytest.param(n, marks=marks(n)) for n in names]


# The pretrained LLM's fine-tune (135M parameters: minutes a step here) is covered by tests/test_llm.py.
LLM = {n for n in RECIPES.names() if get_recipe(n).family == "llm"}


@pytest.mark.parametrize("name", _params(sorted(set(RECIPES.names()) - RUNNERS - LLM)))
def test_recipe_trains_resumes_evaluates_and_predicts(name, tmp_path, capsys):
    recipe = get_recipe(name)
    overrides = small(name, tmp_path, max_steps="3", save_every="1")
    # a run of 3 steps stopped after 2 (its checkpoint written at every step) ...
    with pytest.raises(KeyboardInterrupt):
        Trainer(recipe.run_config(overrides)).fit(crash_at=2)
    run_dir = tmp_path / "runs" / "run"
    assert read_checkpoint(run_dir, prefer="last").step == 2
    # ... and resumed ends bit-identical to the same run trained without stopping
    resumed = Trainer(recipe.run_config(overrides))
    result = resumed.fit(resume=run_dir)
    assert result.steps == 3 and result.metric in result.test and (run_dir / "result.json").is_file()
    straight = Trainer(recipe.run_config({**overrides, "trainer.out_dir": str(tmp_path / "straight")}))
    straight.fit()
    for (k, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.equal(a, b), f"{name}: {k} differs after resume"

    capsys.readouterr()
    assert main(["eval", str(run_dir), "--split", "val"]) == 0
    assert "val" in capsys.readouterr().out

    inputs, options = straight.task.example_inputs(tmp_path)
    flags = [a for k, v in options.items() for a in (f"--{k}", v)]
    assert main(["predict", str(run_dir), *inputs, "--out", str(tmp_path / "pred"), *flags]) == 0
    out = capsys.readouterr().out
    assert out.strip(), f"{name}: predict printed nothing"


# Trainer options that change the computation of a step; each must take effect or be refused.
EFFECTIVE = {"grad_clip": "1e-4", "ema_decay": "0.5", "grad_accum": "2", "seed": "1"}


@pytest.mark.parametrize("name", _params(sorted(FAST)))
def test_every_trainer_option_takes_effect_or_is_refused(name, tmp_path):
    def weights(**option):
        try:
            trainer = Trainer(get_recipe(name).run_config(small(name, tmp_path / str(option), **option)))
        except NeuratlasError as e:
            assert str(e) and "\n" not in str(e)
            return None
        trainer.fit()
        return [t.detach().clone() for t in trainer.eval_model.state_dict().values()]

    base = weights()
    for key, value in EFFECTIVE.items():
        changed = weights(**{key: value})
        if changed is not None:  # accepted: it must have changed the weights
            assert any(not torch.equal(a, b) for a, b in zip(base, changed) if a.is_floating_point()), (
                f"{name}: --trainer.{key} {value} was accepted but changed nothing"
            )
