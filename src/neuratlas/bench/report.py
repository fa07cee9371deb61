"""Claims of the article, measured: each claim trains its variants side by side on the same real data, seeds
and budget, and returns a table, plots and the verdict it measured — whichever way it goes.

``neuratlas bench all --quick`` runs every registered claim and writes ``report.md`` with the tables and PNGs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuratlas.plotting import pyplot, save_png
from neuratlas.registry import Registry

CLAIMS: Registry = Registry("claim")


@dataclass
class ClaimResult:
    title: str
    rows: list[dict[str, Any]]
    verdict: str
    plots: list[Path] = field(default_factory=list)
    command: str = ""
    notes: str = ""
    seconds: float = 0.0


def register_claim(name: str, title: str, fn: Callable[[bool, Path], ClaimResult], order: int) -> None:
    """``fn(quick, out_dir) -> ClaimResult``; also exposed as ``neuratlas bench NAME``."""
    from neuratlas.bench import BENCHMARKS

    CLAIMS.add(name, fn, description=title, family=str(order))

    def run_one(options: ClaimOptions) -> list[str]:
        out = Path(options.out or f"runs/bench/{name}")
        result = run_claim(name, options.quick, out)
        return [markdown_section(result, out)]

    BENCHMARKS.add(name, run_one, ClaimOptions, description=title)


@dataclass
class ClaimOptions:
    quick: bool = False  # the short budgets (minutes rather than hours)
    out: str = ""  # folder for the claim's tables and plots (default: runs/bench/NAME)


def run_claim(name: str, quick: bool, out_dir: Path) -> ClaimResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = CLAIMS.get(name).builder(quick, out_dir)
    result.seconds = time.perf_counter() - t0
    result.command = result.command or f"neuratlas bench {name}" + (" --quick" if quick else "")
    return result


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def markdown_section(r: ClaimResult, rel_to: Path | None = None) -> str:
    parts = [f"## {r.title}", "", markdown_table(r.rows), "", f"**Verdict (measured):** {r.verdict}", ""]
    if r.notes:
        parts += [r.notes, ""]
    for p in r.plots:
        shown = p.relative_to(rel_to) if rel_to and p.is_relative_to(rel_to) else p
        parts.append(f"![{p.stem}]({shown})")
    parts += ["", f"Reproduce: `{r.command}` ({r.seconds:.0f} s)", ""]
    return "\n".join(parts)


def write_report(results: list[ClaimResult], out_dir: Path, header: str = "") -> Path:
    lines = [
        "# Neuratlas: the article's claims, measured",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, {torch.get_num_threads()} threads. {header}",
        "",
        "| # | claim | verdict |",
        "|---|---|---|",
    ]
    lines += [f"| {i} | {r.title} | {r.verdict} |" for i, r in enumerate(results, 1)]
    lines.append("")
    lines += [markdown_section(r, out_dir) for r in results]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


# --- measuring helpers shared by the claims -----------------------------------------------------------
def budget(quick_steps: int, full_steps: int, quick: bool) -> int:
    """Training steps for a claim; NEURATLAS_BENCH_STEPS overrides both (smoke tests of the machinery)."""
    import os

    forced = os.environ.get("NEURATLAS_BENCH_STEPS")
    return int(forced) if forced else (quick_steps if quick else full_steps)


def count_flops(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Forward FLOPs (2 per multiply-add) of one call, counted by PyTorch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops()


def throughput(fn: Callable[[], Any], items: int, min_seconds: float = 1.0, warmup: int = 2) -> float:
    """Items per second of ``fn`` (repeated until ``min_seconds`` have passed)."""
    for _ in range(warmup):
        fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return items * n / elapsed


def line_plot(
    series: dict[str, tuple[list[float], list[float]]],
    out: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
    logx: bool = False,
) -> Path:
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_png(fig, out)


def train_variant(recipe: str, overrides: dict[str, str], out_dir: Path, name: str):
    """Train one variant of a recipe quietly; returns (Trainer, FitResult)."""
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    run = get_recipe(recipe).run_config(
        {
            "trainer.out_dir": str(out_dir),
            "trainer.run_name": name,
            "trainer.progress": "false",
            "trainer.loggers": "csv",
            "trainer.overwrite": "true",  # a benchmark's own folder, re-run
            **overrides,
        }
    )
    trainer = Trainer(run)
    return trainer, trainer.fit()


def train_losses(run_dir: Path) -> tuple[list[float], list[float]]:
    from neuratlas.training.logging import read_metrics

    rows = [r for r in read_metrics(run_dir / "metrics.csv") if r["split"] == "train" and r["name"] == "loss"]
    return [float(r["step"]) for r in rows], [float(r["value"]) for r in rows]
