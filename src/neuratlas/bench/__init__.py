"""Benchmarks: speed/memory figures and claim checks, each printed as a ratio against a peer measured in
the same run. Every module here registers benchmarks with ``BENCHMARKS.add(name, fn, Options)``: ``Options``
is the dataclass of the benchmark's options (``neuratlas bench NAME --help`` lists them; they are typed and
checked like every option), and ``fn(options)`` takes one and returns report lines."""

import importlib
import pkgutil
from typing import Any

from neuratlas.registry import Registry

BENCHMARKS: Registry = Registry("benchmark")


def run_benchmark(name: str, **options: Any) -> list[str]:
    """Run benchmark ``name`` with ``options`` (strings are coerced to the declared types; an unknown one is
    refused with the valid ones listed) and return its report lines."""
    entry = BENCHMARKS.get(name)
    return entry.builder(entry.config(**options)) or []


for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["BENCHMARKS", "run_benchmark"]
