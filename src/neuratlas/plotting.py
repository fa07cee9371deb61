"""PNG pictures: matplotlib on its file-only backend, a grid of panels, and an atomic save.

Every picture Neuratlas writes (training curves, sample grids, overlays, forecasts, filters) goes through
these three helpers, so pictures work on machines without a display and an interrupted run never leaves a
half-written PNG. matplotlib is imported only when a picture is drawn.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only: no display needed, safe in worker threads)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panel_grid(
    n: int, panel: tuple[float, float], max_cols: int = 4, extra_height: float = 0.0, **subplots: Any
) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels of ``panel`` inches (width, height), at most ``max_cols`` a row, so many
    panels stay readable at page width instead of becoming one long strip. Returns (figure, the ``n`` axes in
    reading order); grid cells beyond ``n`` are hidden. ``extra_height`` adds inches for a title."""
    n = max(1, n)
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig, axes = pyplot().subplots(
        rows, cols, figsize=(panel[0] * cols, panel[1] * rows + extra_height), squeeze=False, **subplots
    )
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def save_png(fig: Any, path: str | Path, dpi: int = 110, **savefig: Any) -> Path:
    """Write ``fig`` to ``path`` atomically (temp file in the same folder, then rename) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, format="png", **savefig)
        os.replace(tmp, path)
    finally:
        pyplot().close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
