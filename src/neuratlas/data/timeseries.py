"""Real univariate time series for forecasting, with a fixed chronological train/test split.

- ``airpassengers``: monthly international airline passengers 1949-1960 (Box & Jenkins), 144 values, shipped
  in this file. Split as in darts' quickstart: train before 1958-01, the last 36 months held out.
- ``co2``: Mauna Loa CO2 (ppm), weekly 1958-2001 from statsmodels, averaged to 526 months (the few empty
  months are linearly interpolated); the last 60 months held out.
- ``sunspots``: yearly sunspot numbers 1700-2008 from statsmodels, 309 values; the last 50 years held out.

The split is by time only. Anything fitted on data (scalers, models, baselines) must use ``train`` and
nothing after it: the forecasting task and its tests enforce that.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neuratlas.data.registry import register_dataset
from neuratlas.errors import NeuratlasError
from neuratlas.sources import DataSource, package_dir

_SM = "https://raw.githubusercontent.com/statsmodels/statsmodels/main/statsmodels/datasets"
# The upstream CSVs are not versioned releases, so no fixed checksum is pinned ("").
CO2 = DataSource("co2", {"co2.csv": ""}, "Install statsmodels: pip install 'neuratlas[series]'",
                 offline=[lambda: package_dir("statsmodels", "datasets", "co2")], base_url=f"{_SM}/co2")
SUNSPOTS = DataSource("sunspots", {"sunspots.csv": ""},
                      "Install statsmodels: pip install 'neuratlas[series]'",
                      offline=[lambda: package_dir("statsmodels", "datasets", "sunspots")],
                      base_url=f"{_SM}/sunspots")
# AirPassengers is 144 numbers (Box, Jenkins & Reinsel, "Time Series Analysis", series G, thousands of
# passengers per month, January 1949 to December 1960): shipped here rather than through a dependency. A
# darts-format CSV ("Month,#Passengers" / "1949-01,112") in the cache folder takes precedence.
AIRPASSENGERS_1949_1960 = (
    112, 118, 132, 129, 121, 135, 148, 148, 136, 119, 104, 118,  # 1949
    115, 126, 141, 135, 125, 149, 170, 170, 158, 133, 114, 140,  # 1950
    145, 150, 178, 163, 172, 178, 199, 199, 184, 162, 146, 166,  # 1951
    171, 180, 193, 181, 183, 218, 230, 242, 209, 191, 172, 194,  # 1952
    196, 196, 236, 235, 229, 243, 264, 272, 237, 211, 180, 201,  # 1953
    204, 188, 235, 227, 234, 264, 302, 293, 259, 229, 203, 229,  # 1954
    242, 233, 267, 269, 270, 315, 364, 347, 312, 274, 237, 278,  # 1955
    284, 277, 317, 313, 318, 374, 413, 405, 355, 306, 271, 306,  # 1956
    315, 301, 356, 348, 355, 422, 465, 467, 404, 347, 305, 336,  # 1957
    340, 318, 362, 348, 363, 435, 491, 505, 404, 359, 310, 337,  # 1958
    360, 342, 406, 396, 420, 472, 548, 559, 463, 407, 362, 405,  # 1959
    417, 391, 419, 461, 472, 535, 622, 606, 508, 461, 390, 432,  # 1960
)  # fmt: skip
AIRPASSENGERS = DataSource("airpassengers", {"AirPassengers.csv": ""}, "(shipped with Neuratlas)")


@dataclass
class SeriesConfig:
    test_len: int | None = None  # held-out steps at the end; None -> the data set's standard split
    test_start: str | None = None  # or the first held-out period, e.g. "1958-01" (overrides test_len)

    def __post_init__(self) -> None:
        if self.test_len is not None and self.test_len < 1:
            raise ValueError("test_len must be positive")


@dataclass
class Series:
    """One univariate series and its split: ``values[:n_train]`` is all that may be fitted on."""

    name: str
    values: np.ndarray  # float64, (N,)
    periods: list[str]  # "1949-01" (monthly) or "1700" (yearly), one per value
    season: int  # seasonal period used by seasonal naive, MASE and the classical baselines
    n_train: int
    source: str
    unit: str = ""

    @property
    def train(self) -> np.ndarray:
        return self.values[: self.n_train]

    @property
    def test(self) -> np.ndarray:
        return self.values[self.n_train:]

    @property
    def positive(self) -> bool:
        return bool((self.values > 0).all())

    def next_periods(self, n: int) -> list[str]:
        """The labels of the ``n`` periods after the end of the series."""
        last = self.periods[-1]
        if "-" in last:
            y, m = map(int, last.split("-"))
            return [f"{y + (m - 1 + k) // 12}-{(m - 1 + k) % 12 + 1:02d}" for k in range(1, n + 1)]
        return [str(int(last) + k) for k in range(1, n + 1)]


def _split(name: str, values: np.ndarray, periods: list[str], season: int, default_test: int,
           cfg: SeriesConfig, source: str, unit: str) -> Series:
    if cfg.test_start is not None:
        if cfg.test_start not in periods:
            raise NeuratlasError(f"{name}: test_start {cfg.test_start!r} is not a period of the series "
                                 f"({periods[0]} .. {periods[-1]})")
        n_train = periods.index(cfg.test_start)
    else:
        n_train = len(values) - (cfg.test_len or default_test)
    if not 2 * season < n_train < len(values):
        raise NeuratlasError(f"{name}: the split leaves {n_train} training and {len(values) - n_train} test "
                             f"values; keep at least {2 * season + 1} for training and one for testing")
    return Series(name, values, periods, season, n_train, source, unit)


# --- readers (also used on files the tests write) ------------------------------------------------------------
def read_airpassengers_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    """darts' AirPassengers.csv: a header, then ``YYYY-MM,count`` rows."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    try:
        periods = [r[0] for r in rows[1:] if r]
        values = np.array([float(r[1]) for r in rows[1:] if r])
    except (IndexError, ValueError) as e:
        raise NeuratlasError(f"{path}: expected 'Month,#Passengers' rows like '1949-01,112' ({e})") from None
    return values, periods


def read_co2_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    """statsmodels' co2.csv (``YYYYMMDD,ppm`` weekly, some empty) -> monthly means, gaps interpolated."""
    sums: dict[str, list[float]] = {}
    with open(path, newline="") as f:
        for row in list(csv.reader(f))[1:]:
            if not row:
                continue
            month = f"{row[0][:4]}-{row[0][4:6]}"
            bucket = sums.setdefault(month, [])
            if row[1].strip():
                bucket.append(float(row[1]))
    first, last = min(sums), max(sums)
    periods, y, m = [], int(first[:4]), int(first[5:])
    while f"{y}-{m:02d}" <= last:
        periods.append(f"{y}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    values = np.array([np.mean(sums[p]) if sums.get(p) else math.nan for p in periods])
    gaps = np.isnan(values)
    idx = np.arange(len(values))
    values[gaps] = np.interp(idx[gaps], idx[~gaps], values[~gaps])
    return values, periods


def read_sunspots_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    with open(path, newline="") as f:
        rows = [r for r in list(csv.reader(f))[1:] if r]
    return np.array([float(r[1]) for r in rows]), [str(int(float(r[0]))) for r in rows]


# --- loaders -------------------------------------------------------------------------------------------------
def _airpassengers_values() -> tuple[np.ndarray, list[str], str]:
    try:
        folder, source = AIRPASSENGERS.locate(download=False)  # a cached copy, if the user has one
        return (*read_airpassengers_csv(folder / "AirPassengers.csv"), source)
    except NeuratlasError:
        pass
    values = np.asarray(AIRPASSENGERS_1949_1960, dtype=np.float64)
    periods = [f"{1949 + k // 12}-{k % 12 + 1:02d}" for k in range(len(values))]
    return values, periods, "shipped with Neuratlas (Box & Jenkins series G)"


def load_airpassengers(cfg: SeriesConfig) -> Series:
    values, periods, source = _airpassengers_values()
    if cfg.test_len is None and cfg.test_start is None:
        cfg = SeriesConfig(test_start="1958-01")  # darts' split: 108 train / 36 test months
    return _split("airpassengers", values, periods, 12, 36, cfg, source, "thousands of passengers")


def load_co2(cfg: SeriesConfig) -> Series:
    folder, source = CO2.locate()
    values, periods = read_co2_csv(folder / "co2.csv")
    return _split("co2", values, periods, 12, 60, cfg, source, "ppm")


def load_sunspots(cfg: SeriesConfig) -> Series:
    folder, source = SUNSPOTS.locate()
    values, periods = read_sunspots_csv(folder / "sunspots.csv")
    # The solar cycle is ~11 years (not a calendar season, and not exact): it is the period seasonal naive
    # and MASE use here.
    return _split("sunspots", values, periods, 11, 50, cfg, source, "sunspot number")


register_dataset("airpassengers", load_airpassengers, SeriesConfig,
                 "monthly airline passengers 1949-1960 (Box & Jenkins); darts split: 108 train / 36 test months")
register_dataset("co2", load_co2, SeriesConfig,
                 "Mauna Loa CO2, monthly means 1958-2001 (statsmodels); last 60 months held out")
register_dataset("sunspots", load_sunspots, SeriesConfig,
                 "yearly sunspot numbers 1700-2008 (statsmodels); last 50 years held out")
