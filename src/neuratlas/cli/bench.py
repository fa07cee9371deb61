"""bench: run a registered benchmark (speed races, claims); figures are ratios against a same-run peer."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark: `neuratlas bench list` shows them",
                       description="Run benchmark NAME. Options are passed as --key value (e.g. --quick).")
    p.add_argument("name", help="benchmark name, or 'list'")
    p.set_defaults(func=cmd_bench, accepts_overrides=True)


def cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    from neuratlas.bench import BENCHMARKS
    from neuratlas.cli.core import _pairs

    if args.name == "list":
        for entry in BENCHMARKS:
            print(f"  {entry.name:24s} {entry.description}")
        return 0
    entry = BENCHMARKS.get(args.name)
    options = {k.lstrip("-").replace("-", "_"): v for k, v in _pairs(extra).items()}
    for line in entry.builder(options) or []:
        print(line)
    return 0
