from dataclasses import dataclass
from typing import Literal

import pytest

from neuratlas.config import build_config, coerce, parse_overrides
from neuratlas.errors import NeuratlasError
from neuratlas.recipes import get_recipe


@dataclass
class Example:
    depth: int = 18
    lr: float = 1e-3
    flag: bool = False
    widths: tuple[int, ...] = (1, 2)
    mode: Literal["a", "b"] = "a"
    limit: int | None = None


def test_coerce_from_strings():
    cfg = build_config(
        Example, {"depth": "50", "lr": "3e-4", "flag": "true", "widths": "8,16,32", "mode": "b", "limit": "none"}
    )
    assert (cfg.depth, cfg.lr, cfg.flag, cfg.widths, cfg.mode, cfg.limit) == (50, 3e-4, True, (8, 16, 32), "b", None)
    assert coerce("[1, 2]", tuple[int, ...], "x") == (1, 2)
    assert coerce("7", int | None, "x") == 7


@pytest.mark.parametrize(
    "values, message",
    [
        ({"dpeth": 3}, "Did you mean depth"),
        ({"depth": "fifty"}, "expected an integer"),
        ({"depth": "2.5"}, "expected an integer"),
        ({"flag": "maybe"}, "expected true/false"),
        ({"mode": "c"}, "not one of a, b"),
    ],
)
def test_bad_values_name_the_problem(values, message):
    with pytest.raises(NeuratlasError, match=message):
        build_config(Example, values)


def test_parse_overrides_forms():
    got = parse_overrides(["--optimizer.lr", "3e-4", "--model.depth=50", "--trainer.compile", "--x.y", "-1"])
    assert got == {"optimizer.lr": "3e-4", "model.depth": "50", "trainer.compile": "true", "x.y": "-1"}
    with pytest.raises(NeuratlasError, match="section.key"):
        parse_overrides(["--lr", "1"])
    with pytest.raises(NeuratlasError, match="unexpected argument"):
        parse_overrides(["lr"])


def test_run_config_override_sections():
    run = get_recipe("convnet-fashion-quick").run_config(
        {"optimizer.lr": "0.01", "model.channels": "16,32", "trainer.epochs": "0.5"}
    )
    assert run.optimizer.lr == 0.01 and run.trainer.epochs == 0.5
    assert run.model["channels"] == "16,32"  # typed when the model is built
    with pytest.raises(NeuratlasError, match="unknown section"):
        get_recipe("convnet-fashion-quick").run_config({"optimiser.lr": "1"})
    with pytest.raises(NeuratlasError, match="Did you mean lr"):
        get_recipe("convnet-fashion-quick").run_config({"optimizer.lrr": "1"})
    with pytest.raises(NeuratlasError, match="not one of"):
        get_recipe("convnet-fashion-quick").run_config({"optimizer.name": "adagrad"})
