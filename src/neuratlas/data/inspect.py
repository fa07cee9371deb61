"""``neuratlas data inspect``: what a data set holds, what could not be used and why, and a contact sheet.

The hook is per data set: a loaded data object with a ``report()`` method returning a :class:`DataReport`
is inspected by it; a data set whose objects cannot carry one registers a function instead with
``register_inspector(name, fn)`` (``fn(data) -> DataReport``). Anything else gets the generic report
(split sizes when the object has ``train``/``val``/``test``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuratlas.data.registry import load_dataset

INSPECTORS: dict[str, Callable[[Any], DataReport]] = {}


@dataclass
class DataReport:
    """What ``data inspect`` prints, and the picture it draws."""

    summary: str  # the one line training prints too
    lines: list[str] = field(default_factory=list)  # details: classes with counts, splits, sizes, modes, ...
    problems: list[str] = field(default_factory=list)  # "PATH: why it was not used", one per file
    sheet: Callable[[Path], Path] | None = None  # writes the contact-sheet PNG to the given path

    def text(self, max_problems: int = 50) -> str:
        out = [self.summary, *("  " + line for line in self.lines)]
        if self.problems:
            out.append(f"  not used ({len(self.problems)}):")
            out += ["    " + p for p in self.problems[:max_problems]]
            if len(self.problems) > max_problems:
                out.append(f"    ... and {len(self.problems) - max_problems} more")
        return "\n".join(out)


def register_inspector(name: str, fn: Callable[[Any], DataReport]) -> None:
    INSPECTORS[name] = fn


def inspect_data(spec: dict[str, Any]) -> DataReport:
    """Load the data set of ``spec`` (validating its options) and report on it."""
    data = load_dataset(spec)
    name = spec["name"]
    if name in INSPECTORS:
        return INSPECTORS[name](data)
    if hasattr(data, "report"):
        return data.report()
    return generic_report(name, data)


def generic_report(name: str, data: Any) -> DataReport:
    parts = []
    for split in ("train", "val", "test"):
        value = getattr(data, split, None)
        if value is None:
            continue
        first = value[0] if isinstance(value, tuple) else value
        try:
            parts.append(f"{split} {len(first):,}")
        except TypeError:
            pass
    classes = getattr(data, "classes", None)
    lines = [f"classes ({len(classes)}): {', '.join(map(str, classes[:20]))}"] if classes else []
    return DataReport(f"{name}: " + (", ".join(parts) or type(data).__name__), lines)


# --- image classification ----------------------------------------------------------------------------------
def classification_report(data: Any) -> DataReport:
    from neuratlas.data.image_files import mode_counts, size_range

    lines = [f"layout: {data.layout}; images decoded to {data.cfg and _policy_text(data)}"]
    table = np.zeros((len(data.classes), 3), dtype=np.int64)
    for j, split in enumerate((data.train, data.val, data.test)):
        table[:, j] = np.bincount(split[1].numpy(), minlength=len(data.classes))[: len(data.classes)]
    width = max(len(c) for c in data.classes)
    lines.append(f"{'class':{width}s}  {'train':>7s} {'val':>6s} {'test':>6s}")
    for c, row in zip(data.classes, table):
        lines.append(f"{c:{width}s}  {row[0]:7,d} {row[1]:6,d} {row[2]:6,d}")
    lines.append(
        f"sizes {size_range(data.headers)}; modes "
        + ", ".join(f"{m} {n:,}" for m, n in mode_counts(data.headers).items())
    )
    lines.append(f"channel mean {_fmt(data.mean)}, std {_fmt(data.std)} (training images)")
    problems = [f"{p}: {why}" for p, why in data.bad]

    def sheet(path: Path) -> Path:
        per_class = [(c, data.train[0][data.train[1] == k][:8]) for k, c in enumerate(data.classes)]
        return contact_sheet(per_class, path, title=data.summary.split(":")[0])

    return DataReport(data.summary, lines, problems, sheet)


def _policy_text(data: Any) -> str:
    c, h, w = data.train[0].shape[1:]
    return f"{h}×{w} {'grey' if c == 1 else 'RGB'} ({data.cfg.resize})"


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def contact_sheet(
    rows: list[tuple[str, Any]], path: Path, title: str = "", per_row: int = 8, max_rows: int = 20
) -> Path:
    """A PNG grid: one row per label, up to ``per_row`` uint8 (C, H, W) images each (rows beyond
    ``max_rows`` are left out and said so)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = rows[:max_rows]
    fig, axes = plt.subplots(len(shown), per_row, figsize=(per_row * 1.1 + 1.6, len(shown) * 1.15 + 0.5), squeeze=False)
    for r, (label, images) in enumerate(shown):
        for k in range(per_row):
            ax = axes[r, k]
            ax.axis("off")
            if k < len(images):
                _show(ax, images[k])
        axes[r, 0].text(-0.1, 0.5, str(label)[:18], transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
    suffix = f" (first {max_rows} of {len(rows)} rows)" if len(rows) > max_rows else ""
    fig.suptitle(title + suffix, fontsize=9)
    fig.subplots_adjust(left=0.16, right=0.99, top=0.93, bottom=0.01, wspace=0.05, hspace=0.1)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _show(ax, image) -> None:
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    ax.imshow(
        a,
        cmap="gray" if a.ndim == 2 else None,
        vmin=0,
        vmax=255 if a.dtype == np.uint8 else None,
        interpolation="nearest",
    )


def _grid(n: int, per_row: int = 4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-n // per_row))
    fig, axes = plt.subplots(rows, per_row, figsize=(per_row * 2.6, rows * 2.6 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return plt, fig, axes.flat


def overlay_sheet(items: list[tuple[Any, Any]], path: Path, title: str, classes: list[str]) -> Path:
    """Images (float or uint8 (C, H, W)) with their class masks as translucent colours (background clear)."""
    from matplotlib.colors import ListedColormap

    plt, fig, axes = _grid(len(items))
    colours = plt.get_cmap("tab10").colors[: max(1, len(classes) - 1)]
    for ax, (image, mask) in zip(axes, items):
        a = np.asarray(image, dtype=np.float32)
        a = a.transpose(1, 2, 0) if a.shape[0] == 3 else a[0]
        lo, hi = np.percentile(a, [0.5, 99.5])
        ax.imshow(np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1), cmap="gray" if a.ndim == 2 else None)
        m = np.asarray(mask)
        ax.imshow(
            np.ma.masked_equal(m, 0) - 1,
            cmap=ListedColormap(colours),
            vmin=0,
            vmax=max(1, len(classes) - 2),
            alpha=0.45,
            interpolation="nearest",
        )
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def boxes_sheet(items: list[tuple[Any, Any, Any]], path: Path, title: str, classes: list[str]) -> Path:
    """uint8 (3, H, W) images with their xyxy boxes drawn, coloured and named by class."""
    from matplotlib.patches import Rectangle

    plt, fig, axes = _grid(len(items))
    colours = plt.get_cmap("tab10").colors
    for ax, (image, boxes, labels) in zip(axes, items):
        ax.imshow(np.asarray(image).transpose(1, 2, 0))
        for (x1, y1, x2, y2), lab in zip(np.asarray(boxes).tolist(), np.asarray(labels).tolist()):
            if lab < 0:
                continue
            c = colours[lab % len(colours)]
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=c, linewidth=1))
            if len(classes) > 1:
                ax.text(x1, y1, classes[lab], color=c, fontsize=5, va="bottom")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
