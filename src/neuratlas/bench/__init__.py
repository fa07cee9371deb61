"""Benchmarks: speed/memory figures and claim checks, each printed as a ratio against a peer measured in
the same run. Every module here registers benchmarks with ``BENCHMARKS.add(name, fn)``; ``fn(options)``
takes a dict of string options (``--quick`` → {"quick": "true"}) and returns report lines."""

import importlib
import pkgutil

from neuratlas.registry import Registry

BENCHMARKS: Registry = Registry("benchmark")

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["BENCHMARKS"]
