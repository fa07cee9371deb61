"""bench: run a registered benchmark (speed races, claims); figures are ratios against a same-run peer."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from neuratlas.cli.options import Parsed, command, positional


@dataclass
class BenchOptions:
    """Run benchmark NAME (`neuratlas bench list` shows them all). Each benchmark has typed options of its
    own, listed below (with NAME given, those of NAME); `speed` also takes a race's options as --RACE.KEY."""

    name: str = positional("a benchmark's name, or list")


def register(sub: argparse._SubParsersAction) -> None:
    command(
        sub,
        "bench",
        BenchOptions,
        cmd_bench,
        help="run a benchmark: `neuratlas bench list` shows them",
        plugin=_options_of,
        plugin_catalogue=_catalogue,
        sections=_race_sections,
    )


def _options_of(opts: BenchOptions) -> type | None:
    from neuratlas.bench import BENCHMARKS

    return None if opts.name == "list" else BENCHMARKS.get(opts.name).config_class


def _catalogue() -> dict[str, type]:
    from neuratlas.bench import BENCHMARKS

    return {entry.name: entry.config_class for entry in BENCHMARKS if entry.config_class is not None}


def _race_sections(opts: BenchOptions | None) -> dict[str, type | None]:
    """`bench speed` takes each race's own options as a section: --mfu.batch 2."""
    from neuratlas.bench import BENCHMARKS
    from neuratlas.bench.races import SPEED_RACES, SpeedOptions

    if opts is None or _options_of(opts) is not SpeedOptions:
        return {}
    return {race: BENCHMARKS.get(race).config_class for race in SPEED_RACES}


def cmd_bench(opts: BenchOptions, parsed: Parsed) -> int:
    from neuratlas.bench import BENCHMARKS

    if opts.name == "list":
        for entry in BENCHMARKS:
            print(f"  {entry.name:24s} {entry.description}")
        return 0
    entry = BENCHMARKS.get(opts.name)
    options = parsed.plugin
    if parsed.sections:  # bench speed: the races' own options
        options = dataclasses.replace(options, races={**options.races, **parsed.sections})
    for line in entry.builder(options) or []:
        print(line)
    return 0
