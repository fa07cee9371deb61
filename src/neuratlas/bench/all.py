"""``neuratlas bench all``: every registered claim, one report."""

from __future__ import annotations

from pathlib import Path

from neuratlas.bench import BENCHMARKS
from neuratlas.bench.report import CLAIMS, _truthy, run_claim, write_report


def run_all(options: dict[str, str]) -> list[str]:
    quick = _truthy(options.get("quick", "false"))
    out = Path(options.get("out", "runs/bench"))
    only = options.get("only", "")
    names = sorted(CLAIMS.names(), key=lambda n: int(CLAIMS.get(n).family))
    if only:
        names = [n for n in names if n in only.split(",")]
    results = []
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {CLAIMS.get(name).description}", flush=True)
        results.append(run_claim(name, quick, out / name))
        print(f"    {results[-1].verdict} ({results[-1].seconds:.0f} s)", flush=True)
    path = write_report(results, out, "Quick budgets." if quick else "Full budgets.")
    lines = ["", "| # | claim | verdict | time |", "|---|---|---|---|"]
    lines += [f"| {i} | {r.title} | {r.verdict} | {r.seconds:.0f} s |" for i, r in enumerate(results, 1)]
    return lines + ["", f"report: {path}"]


BENCHMARKS.add("all", run_all, description="every claim of the article, measured; --quick fits ~15 min on 2 cores")
