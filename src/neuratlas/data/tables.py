"""Reading a user's tabular files (CSV, TSV, JSONL) with errors that name the file, the line and the problem.

Every own-data reader (text, series, graphs, molecules) goes through these helpers, so a missing file, a
missing column, a non-numeric cell or a broken JSON line reads the same everywhere: one ``error:`` line
such as ``sales.csv line 14: column 'units' holds 'n/a', not a number``. Files are only ever read.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuratlas.errors import NeuratlasError

csv.field_size_limit(1 << 30)  # long documents in a text column are normal


def existing(path: str | Path | None, what: str, option: str = "--data.path") -> Path:
    """``path`` as a Path when it exists, else one line saying what is missing and which option sets it."""
    if not path:
        raise NeuratlasError(f"{what}: no file given; set {option}")
    p = Path(path).expanduser()
    if not p.exists():
        raise NeuratlasError(f"{p}: no such file or folder ({what}, {option})")
    return p


@dataclass
class Table:
    """Rows of one file as dicts, each with the line number it came from (1-based, the header is line 1)."""

    path: Path
    columns: list[str]
    rows: list[dict[str, Any]]
    lines: list[int]

    def require(self, *names: str, option: str = "") -> None:
        missing = [n for n in names if n not in self.columns]
        if missing:
            hint = f" (set {option})" if option else ""
            raise NeuratlasError(
                f"{self.path}: no column {', '.join(map(repr, missing))}{hint}; its columns are "
                f"{', '.join(map(repr, self.columns)) or 'none'}"
            )

    def column(self, name: str) -> list[Any]:
        return [r.get(name) for r in self.rows]

    def where(self, i: int) -> str:
        return f"{self.path} line {self.lines[i]}"

    def floats(self, name: str, allow_empty: bool = False) -> list[float]:
        """The column as floats; an empty cell is NaN when ``allow_empty``, anything else non-numeric fails."""
        out = []
        for i, v in enumerate(self.column(name)):
            if v is None or (isinstance(v, str) and not v.strip()):
                if allow_empty:
                    out.append(math.nan)
                    continue
                raise NeuratlasError(f"{self.where(i)}: column {name!r} is empty")
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise NeuratlasError(f"{self.where(i)}: column {name!r} holds {str(v)[:40]!r}, not a number") from None
            if math.isnan(f) and not allow_empty:
                raise NeuratlasError(f"{self.where(i)}: column {name!r} is NaN")
            out.append(f)
        return out


def read_table(path: str | Path, what: str = "table", option: str = "--data.path") -> Table:
    """A CSV/TSV (delimiter sniffed among , ; tab |) or JSON-lines file (``.jsonl``/``.ndjson``)."""
    p = existing(path, what, option)
    if p.is_dir():
        raise NeuratlasError(f"{p} is a folder; {what} needs a file ({option})")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise NeuratlasError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if p.suffix.lower() in (".jsonl", ".ndjson"):
        return _read_jsonl(p, text)
    lines = text.splitlines()
    if not lines:
        raise NeuratlasError(f"{p} is empty")
    try:
        dialect = csv.Sniffer().sniff(lines[0], delimiters=",;\t|")
        delimiter = dialect.delimiter
    except csv.Error:
        delimiter = ","
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise NeuratlasError(f"{p} is empty") from None
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise NeuratlasError(f"{p} line 1: column names repeat: {', '.join(map(repr, dup))}")
    rows, nums = [], []
    try:
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise NeuratlasError(f"{p} line {reader.line_num}: {len(row)} fields, the header has {len(header)}")
            rows.append(dict(zip(header, row)))
            nums.append(reader.line_num)
    except csv.Error as e:
        raise NeuratlasError(f"{p} line {reader.line_num}: not valid CSV ({e})") from None
    return Table(p, header, rows, nums)


def _read_jsonl(p: Path, text: str) -> Table:
    rows, nums, columns = [], [], {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise NeuratlasError(f"{p} line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise NeuratlasError(f"{p} line {n}: expected a JSON object per line, got {type(obj).__name__}")
        rows.append(obj)
        nums.append(n)
        columns.update(dict.fromkeys(obj))
    if not rows:
        raise NeuratlasError(f"{p} is empty")
    return Table(p, list(columns), rows, nums)


def require_fields(table: Table, *names: str, option: str = "") -> None:
    """Every row has every field (JSON lines may omit keys): the first row without one is named."""
    table.require(*names, option=option)
    for i, row in enumerate(table.rows):
        for n in names:
            if n not in row or row[n] is None:
                hint = f" (set {option})" if option else ""
                raise NeuratlasError(f"{table.where(i)}: no field {n!r}{hint}")


def stratified_split(labels: list[int], val_frac: float, test_frac: float, seed: int) -> dict[str, list[int]]:
    """Indices for train/val/test carved per class by fraction with ``seed`` (each class keeps ≥ 1 train item)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == c]
        idx = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        n_test = min(round(len(idx) * test_frac), max(0, len(idx) - 1))
        n_val = min(round(len(idx) * val_frac), max(0, len(idx) - 1 - n_test))
        parts["test"] += idx[:n_test]
        parts["val"] += idx[n_test : n_test + n_val]
        parts["train"] += idx[n_test + n_val :]
    return {k: sorted(v) for k, v in parts.items()}
