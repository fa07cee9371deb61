"""``neuratlas data inspect --data.name NAME --data.KEY VALUE ...``: a look at a data set before training.

Prints what was found (classes with counts, splits, sizes and modes, ...), the files that could not be used
and why, and writes a contact-sheet PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neuratlas.errors import NeuratlasError


def cmd_inspect(spec: dict[str, Any], sheet: str | None = None) -> int:
    """Inspect the data set of ``spec`` (the ``--data.*`` values) and write its contact sheet to ``sheet``
    (default: ``inspect-NAME.png`` here; ``""``: none)."""
    from neuratlas.data.inspect import inspect_data

    if "name" not in spec:
        raise NeuratlasError("data inspect needs --data.name (see `neuratlas list --kind datasets`)")
    report = inspect_data(dict(spec))
    print(report.text())
    sheet = sheet if sheet is not None else f"inspect-{spec['name']}.png"
    if sheet and report.sheet is not None:
        print(f"contact sheet: {report.sheet(Path(sheet))}")
    return 0
