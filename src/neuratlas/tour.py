"""The tour: train every family's quick recipe on real data and tabulate held-out metrics.

Each family marks one recipe ``tour=True``; the tour grows as families are added.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from neuratlas.paradigms import fit
from neuratlas.recipes import RECIPES, Recipe, get_recipe
from neuratlas.training.trainer import FitResult


@dataclass
class TourRow:
    family: str
    recipe: str
    model: str
    data: str
    metric: str
    value: float
    parameters: int
    seconds: float
    target: str = ""
    curves: str = ""

    @classmethod
    def from_result(cls, recipe: Recipe, result: FitResult, seconds: float) -> TourRow:
        return cls(
            recipe.family,
            recipe.name,
            result.model,
            result.data,
            f"test {result.metric}",
            result.score,
            result.parameters,
            seconds,
            recipe.target,
            str(result.run_dir / "curves.png"),
        )


def tour_recipes(families: list[str] | None = None) -> list[Recipe]:
    recipes = [get_recipe(n) for n in RECIPES.names() if get_recipe(n).tour]
    if families:
        recipes = [r for r in recipes if r.family in families]
    return sorted(recipes, key=lambda r: r.family)


def run_recipe(recipe: Recipe, overrides: dict[str, str]) -> TourRow:
    t0 = time.perf_counter()
    result = fit(recipe.run_config(overrides), announce=False)
    return TourRow.from_result(recipe, result, time.perf_counter() - t0)


def write_report(rows: list[TourRow], out_dir: Path) -> Path:
    lines = [
        "# Neuratlas tour",
        "",
        f"Run on {time.strftime('%Y-%m-%d %H:%M')}; every metric is on held-out data.",
        "",
        "| family | recipe | model | data (train/val/test) | metric | value | target | parameters | wall time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.family} | {r.recipe} | {r.model} | {r.data} | {r.metric} | {r.value:.4f} | "
            f"{r.target} | {r.parameters:,} | {r.seconds:.0f} s |"
        )
    lines += ["", "## Training curves", ""]
    for r in rows:  # pictures inline, linked relative to the report so the folder can be moved or shared
        if r.curves and Path(r.curves).is_file():
            lines += [f"### {r.recipe}", "", f"![{r.recipe} training curves]({_relative(r.curves, out_dir)})", ""]
    path = out_dir / "tour.md"
    path.write_text("\n".join(lines) + "\n")
    (out_dir / "tour.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return path


def _relative(path: str, base: Path) -> str:
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return Path(path).resolve().as_posix()


def format_table(rows: list[TourRow]) -> str:
    head = f"{'family':13s} {'recipe':28s} {'data':30s} {'metric':18s} {'value':>8s} {'params':>11s} {'time':>7s}"
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(
            f"{r.family:13s} {r.recipe:28s} {r.data[:30]:30s} {r.metric[:18]:18s} {r.value:8.4f} "
            f"{r.parameters:11,d} {r.seconds:6.0f}s"
        )
    return "\n".join(out)
