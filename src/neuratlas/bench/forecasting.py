"""The forecasting table: the family's default recipe against naive, seasonal naive, ETS (and ARIMA where
its season is short enough to fit) on the same rolling origins of each held-out block.

Rows: the three bundled series (AirPassengers, CO2, sunspots), the half-hourly electricity demand with daily
and weekly seasons (``taylor``: must not lose to repeating the last week), and two files read the way a
user's CSV is (``forecast-csv``): the Taylor series written as a timestamped CSV, and statsmodels' own weekly
CO2 file with its 59 empty weeks. MASE is scaled by the in-sample seasonal-naive MAE of each series; the
recipe's figure is the mean over ``--seeds`` seeds (each seed also shown).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neuratlas.bench import BENCHMARKS


def taylor_csv(folder: Path) -> Path:
    """The Taylor series as a user would have it: a time column and a value column."""
    from neuratlas.data import load_dataset

    s = load_dataset({"name": "taylor"})
    path = folder / "electricity.csv"
    rows = "".join(f"{p},{v:.0f}\n" for p, v in zip(s.periods, s.values))
    path.write_text("time,demand_mw\n" + rows)
    return path


@dataclass
class ForecastingBenchOptions:
    seeds: int = 3  # seeds of the default recipe per series (its mean and each seed are shown)
    quick: bool = False  # fewer steps and one seed
    only: list[str] = field(default_factory=list)  # only these series (comma-separated names)
    threads: int = 1


def bench_forecasting(options: ForecastingBenchOptions) -> list[str]:
    import torch

    from neuratlas.recipes import get_recipe
    from neuratlas.sources import package_dir
    from neuratlas.training.trainer import Trainer

    seeds, quick = options.seeds, options.quick
    only = set(options.only) or None
    tmp = Path(tempfile.mkdtemp(prefix="neuratlas-forecast-"))
    co2 = package_dir("statsmodels", "datasets", "co2", "co2.csv")
    rows = [
        ("airpassengers", "forecast-airpassengers", {}),
        ("co2", "forecast-co2", {}),
        ("sunspots", "forecast-sunspots", {}),
        ("taylor (half-hourly)", "forecast-taylor", {}),
        ("CSV: electricity.csv", "forecast-csv", {"data.path": str(taylor_csv(tmp)), "data.target": "demand_mw"}),
    ]
    if co2 is not None and co2.is_file():
        rows.append(("CSV: statsmodels co2.csv (weekly)", "forecast-csv", {"data.path": str(co2)}))
    torch.set_num_threads(options.threads)
    lines = [
        "| series | seasons | default recipe MASE (seeds) | naive | seasonal naive | ETS | ARIMA |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, recipe, over in rows:
        if only and not ({label.split()[0], recipe} & only):
            continue
        scores, base = [], {}
        for seed in range(seeds):
            run = get_recipe(recipe).run_config(
                {
                    **over,
                    "trainer.seed": str(seed),
                    "trainer.out_dir": str(tmp / "runs"),
                    "trainer.progress": "false",
                    "trainer.loggers": "csv",
                    "task.baselines": "true" if seed == 0 else "false",
                    **({"trainer.max_steps": "300"} if quick else {}),
                }
            )
            trainer = Trainer(run)
            result = trainer.fit()
            scores.append(result.test["mase"])
            if seed == 0:
                base = result.test
                s = trainer.task.series
                seasons = "/".join(map(str, s.seasons or (s.season,)))
        mean = float(np.mean(scores))
        cells = [
            f"{base[k]:.3f}" if k in base else "n/a"
            for k in ("naive_mase", "seasonal_naive_mase", "ets_mase", "arima_mase")
        ]
        each = ", ".join(f"{v:.3f}" for v in scores)
        lines.append(f"| {label} | {seasons} (m={s.season}) | **{mean:.3f}** ({each}) | {' | '.join(cells)} |")
        print(lines[-1], flush=True)
    return ["", *lines]


BENCHMARKS.add(
    "forecasting",
    bench_forecasting,
    ForecastingBenchOptions,
    description="the default forecaster vs naive / seasonal naive / ETS / ARIMA (MASE, same origins) on "
    "AirPassengers, CO2, sunspots, half-hourly electricity and two CSVs (--seeds N, --quick, "
    "--only a,b)",
)
