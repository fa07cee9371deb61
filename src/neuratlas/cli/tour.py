"""tour: the main job — every family's quick recipe on real data, one table."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from neuratlas.cli.options import Parsed, command


@dataclass
class TourOptions:
    """Run the tour recipe of every registered family and print a table of held-out metrics. --SECTION.KEY
    VALUE options apply to every recipe (e.g. --trainer.max_steps 20 for a smoke run)."""

    families: list[str] = field(default_factory=list)  # only these families (comma-separated; default: all)
    out: str = "runs/tour"  # folder for tour.md, tour.json and the runs


def register(sub: argparse._SubParsersAction) -> None:
    from neuratlas.cli.core import run_sections

    command(
        sub,
        "tour",
        TourOptions,
        cmd_tour,
        help="train every family's quick recipe and print a table of held-out metrics",
        sections=lambda o: run_sections(None),
    )


def cmd_tour(args: TourOptions, parsed: Parsed) -> int:
    from neuratlas.tour import format_table, run_recipe, tour_recipes, write_report

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = {"trainer.out_dir": str(out), **parsed.overrides}
    recipes = tour_recipes(args.families or None)
    rows = []
    for i, recipe in enumerate(recipes, 1):
        print(f"[{i}/{len(recipes)}] {recipe.family}: {recipe.name} — {recipe.description}", flush=True)
        rows.append(run_recipe(recipe, {**overrides, "trainer.run_name": recipe.name}))
        print(f"    {rows[-1].metric} {rows[-1].value:.4f} in {rows[-1].seconds:.0f} s", flush=True)
    print()
    print(format_table(rows))
    print(f"\nreport: {write_report(rows, out)}")
    return 0
