"""``neuratlas bench all``: every registered claim, one report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from neuratlas.bench import BENCHMARKS
from neuratlas.bench.report import CLAIMS, run_claim, write_report


@dataclass
class AllOptions:
    quick: bool = False  # the short budgets: every claim in about 15 minutes on 2 cores
    out: str = "runs/bench"  # folder for report.md and each claim's tables and plots
    only: list[str] = field(default_factory=list)  # only these claims (comma-separated names)


def run_all(options: AllOptions) -> list[str]:
    quick, out = options.quick, Path(options.out)
    names = sorted(CLAIMS.names(), key=lambda n: int(CLAIMS.get(n).family))
    if options.only:
        names = [n for n in names if n in options.only]
    results = []
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {CLAIMS.get(name).description}", flush=True)
        results.append(run_claim(name, quick, out / name))
        print(f"    {results[-1].verdict} ({results[-1].seconds:.0f} s)", flush=True)
    path = write_report(results, out, "Quick budgets." if quick else "Full budgets.")
    lines = ["", "| # | claim | verdict | time |", "|---|---|---|---|"]
    lines += [f"| {i} | {r.title} | {r.verdict} | {r.seconds:.0f} s |" for i, r in enumerate(results, 1)]
    return lines + ["", f"report: {path}"]


BENCHMARKS.add(
    "all", run_all, AllOptions, description="every claim of the article, measured; --quick fits ~15 min on 2 cores"
)
