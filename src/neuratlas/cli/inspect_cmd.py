"""``neuratlas data inspect --data.name NAME --data.KEY VALUE ...``: a look at a data set before training.

Prints what was found (classes with counts, splits, sizes and modes, ...), the files that could not be used
and why, and writes a contact-sheet PNG. ``add_inspect(data_subparsers)`` adds the same command as
``neuratlas data inspect`` under a ``data`` command group.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from neuratlas.config import parse_overrides
from neuratlas.errors import NeuratlasError

DESCRIPTION = (
    "Load a data set as training would (e.g. --data.name image-folder --data.root PATH), print what "
    "was found and what could not be used, and write a contact sheet."
)


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sheet", default=None, metavar="PNG", help="contact-sheet path (default: inspect-NAME.png here; '' for none)"
    )
    p.set_defaults(func=cmd_inspect, accepts_overrides=True)


def add_inspect(data_subparsers: argparse._SubParsersAction) -> None:
    _configure(
        data_subparsers.add_parser("inspect", help="what a data set holds, before training", description=DESCRIPTION)
    )


def cmd_inspect(args: argparse.Namespace, extra: list[str]) -> int:
    from neuratlas.data.inspect import inspect_data

    overrides = parse_overrides(extra)
    other = sorted(k for k in overrides if not k.startswith("data."))
    if other:
        raise NeuratlasError(f"data inspect takes --data.* options only, got {', '.join('--' + k for k in other)}")
    spec = {k[len("data.") :]: v for k, v in overrides.items()}
    if "name" not in spec:
        raise NeuratlasError("data inspect needs --data.name (see `neuratlas list --kind datasets`)")
    report = inspect_data(spec)
    print(report.text())
    sheet = args.sheet if args.sheet is not None else f"inspect-{spec['name']}.png"
    if sheet and report.sheet is not None:
        print(f"contact sheet: {report.sheet(Path(sheet))}")
    return 0
