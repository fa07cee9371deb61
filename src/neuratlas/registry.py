"""Registries of names, not logic: models, data sets, tasks and recipes are all looked up the same way.

Each entry pairs a builder with a config dataclass and the defaults of that name, so a named spec such as
``{"name": "resnet50", "num_classes": 10}`` is validated field by field before anything is built.
Names are spelled with hyphens; an entry may keep older spellings as aliases (``aliases=("masked_lm",)``),
because saved checkpoints and run configs store the name they were trained under.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from neuratlas.config import build_config
from neuratlas.errors import NeuratlasError

T = TypeVar("T")


@dataclass
class Entry:
    name: str
    builder: Callable[..., Any]
    config_class: type | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    family: str = ""
    description: str = ""
    aliases: tuple[str, ...] = ()  # older names that still find this entry (checkpoints store them)

    def config(self, **overrides: Any) -> Any:
        """The validated config of this entry with ``overrides`` applied (strings are coerced)."""
        if self.config_class is None:
            if overrides:
                raise NeuratlasError(f"{self.name!r} takes no options, got {sorted(overrides)}")
            return None
        return build_config(self.config_class, {**self.defaults, **overrides}, where=self.name)


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}  # old name -> registered name

    def add(
        self,
        name: str,
        builder: Callable[..., Any],
        config_class: type | None = None,
        *,
        family: str = "",
        description: str = "",
        aliases: tuple[str, ...] = (),
        **defaults: Any,
    ) -> Entry:
        for n in (name, *aliases):
            if n in self._entries or n in self._aliases:
                raise ValueError(f"{self.kind} {n!r} is registered twice")
        entry = Entry(name, builder, config_class, defaults, family, description, tuple(aliases))
        self._entries[name] = entry
        self._aliases.update(dict.fromkeys(aliases, name))
        return entry

    def register(self, name: str | None = None, config_class: type | None = None, **kw: Any):
        """Decorator form of :meth:`add`; the function's name is the default entry name."""

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add(name or fn.__name__.replace("_", "-"), fn, config_class, **kw)
            return fn

        return deco

    def get(self, name: str) -> Entry:
        try:
            return self._entries[self._aliases.get(name, name)]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise NeuratlasError(
                f"unknown {self.kind} {name!r}.{hint} Run `neuratlas list` to see all {len(self)} {self.kind}s."
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
