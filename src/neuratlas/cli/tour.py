"""tour: the main job — every family's quick recipe on real data, one table."""

from __future__ import annotations

import argparse
from pathlib import Path

from neuratlas.config import parse_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tour", help="train every family's quick recipe and print a table of held-out metrics",
                       description="Runs the tour recipe of every registered family. Extra --section.key value "
                       "overrides apply to every recipe (e.g. --trainer.max_steps 20 for a smoke run).")
    p.add_argument("--families", nargs="*", help="only these families")
    p.add_argument("--out", default="runs/tour", help="folder for tour.md, tour.json and the runs")
    p.set_defaults(func=cmd_tour, accepts_overrides=True)


def cmd_tour(args: argparse.Namespace, extra: list[str]) -> int:
    from neuratlas.tour import format_table, run_recipe, tour_recipes, write_report

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = {"trainer.out_dir": str(out), **parse_overrides(extra)}
    recipes = tour_recipes(args.families)
    rows = []
    for i, recipe in enumerate(recipes, 1):
        print(f"[{i}/{len(recipes)}] {recipe.family}: {recipe.name} — {recipe.description}", flush=True)
        rows.append(run_recipe(recipe, {**overrides, "trainer.run_name": recipe.name}))
        print(f"    {rows[-1].metric} {rows[-1].value:.4f} in {rows[-1].seconds:.0f} s", flush=True)
    print()
    print(format_table(rows))
    print(f"\nreport: {write_report(rows, out)}")
    return 0
