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
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from neuratlas.data.registry import register_dataset
from neuratlas.data.tables import existing, read_table
from neuratlas.errors import NeuratlasError
from neuratlas.sources import DataSource, package_dir

_SM = "https://raw.githubusercontent.com/statsmodels/statsmodels/main/statsmodels/datasets"
# The upstream CSVs are not versioned releases, so no fixed checksum is pinned ("").
CO2 = DataSource(
    "co2",
    {"co2.csv": ""},
    "Install statsmodels: pip install 'neuratlas[series]'",
    offline=[lambda: package_dir("statsmodels", "datasets", "co2")],
    base_url=f"{_SM}/co2",
)
SUNSPOTS = DataSource(
    "sunspots",
    {"sunspots.csv": ""},
    "Install statsmodels: pip install 'neuratlas[series]'",
    offline=[lambda: package_dir("statsmodels", "datasets", "sunspots")],
    base_url=f"{_SM}/sunspots",
)
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
    seasons: tuple[int, ...] = ()  # every seasonal period (e.g. 48 and 336 half-hours); () -> (season,)
    freq: str = ""  # pandas offset alias of the time step when read from timestamps ("30min", "MS", ...)
    filled: int = 0  # values that were missing (empty cells or absent timestamps) and were filled

    @property
    def train(self) -> np.ndarray:
        return self.values[: self.n_train]

    @property
    def test(self) -> np.ndarray:
        return self.values[self.n_train :]

    @property
    def positive(self) -> bool:
        return bool((self.values > 0).all())

    def next_periods(self, n: int) -> list[str]:
        """The labels of the ``n`` periods after the end of the series."""
        last = self.periods[-1]
        if self.freq:
            import pandas as pd

            return period_labels(pd.date_range(pd.Timestamp(last), periods=n + 1, freq=self.freq)[1:], self.freq)
        if "-" in last:
            y, m = map(int, last.split("-"))
            return [f"{y + (m - 1 + k) // 12}-{(m - 1 + k) % 12 + 1:02d}" for k in range(1, n + 1)]
        return [str(int(last) + k) for k in range(1, n + 1)]


def _split(
    name: str,
    values: np.ndarray,
    periods: list[str],
    season: int,
    default_test: int,
    cfg: SeriesConfig,
    source: str,
    unit: str,
) -> Series:
    if cfg.test_start is not None:
        if cfg.test_start not in periods:
            raise NeuratlasError(
                f"{name}: test_start {cfg.test_start!r} is not a period of the series ({periods[0]} .. {periods[-1]})"
            )
        n_train = periods.index(cfg.test_start)
    else:
        n_train = len(values) - (cfg.test_len or default_test)
    if not 2 * season < n_train < len(values):
        raise NeuratlasError(
            f"{name}: the split leaves {n_train} training and {len(values) - n_train} test "
            f"values; keep at least {2 * season + 1} for training and one for testing"
        )
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


# --- a user's own series: a CSV of timestamps and values ------------------------------------------------------
def label_format(freq: str) -> str:
    """How a period is labelled at the series' resolution: 2000-06-05 00:30, 2024-03-01, 1958-01, 1700."""
    import pandas as pd

    step = _step(freq)
    if step is not None and step < pd.Timedelta(days=1):
        return "%Y-%m-%d %H:%M:%S" if step.seconds % 60 else "%Y-%m-%d %H:%M"
    base = freq.lstrip("0123456789").split("-")[0].upper()
    if base in ("YS", "Y", "YE", "AS", "A", "BYS", "BY"):
        return "%Y"
    if base in ("MS", "M", "ME", "BMS", "BM", "BME", "QS", "Q", "QE"):
        return "%Y-%m"
    return "%Y-%m-%d"


def period_labels(stamps, freq: str) -> list[str]:
    import pandas as pd

    return list(pd.DatetimeIndex(stamps).strftime(label_format(freq)))


def _step(freq: str):
    """The fixed length of one step (None for calendar steps such as months)."""
    import pandas as pd

    try:
        return pd.Timedelta(pd.tseries.frequencies.to_offset(freq))
    except (ValueError, TypeError):
        return None


def seasons_for(freq: str, n: int) -> tuple[int, ...]:
    """Seasonal periods implied by the time step, kept when the series holds at least two full cycles:
    sub-daily -> daily and weekly; daily -> weekly and yearly (365); weekly -> 52; monthly -> 12; quarterly
    -> 4; yearly -> none."""
    import pandas as pd

    step = _step(freq)
    out: list[int] = []
    if step is not None and step < pd.Timedelta(days=1) and pd.Timedelta(days=1) % step == pd.Timedelta(0):
        day = int(pd.Timedelta(days=1) / step)
        out = [day, 7 * day]
    elif step == pd.Timedelta(days=1):
        out = [7, 365]
    else:
        base = freq.lstrip("0123456789").split("-")[0].upper()
        if step == pd.Timedelta(weeks=1) or freq.upper() == "W" or freq.upper().startswith("W-"):
            out = [52]  # 52.18 weeks a year: seasonal naive drifts by a day or two a year
        elif base in ("MS", "M", "ME", "BMS", "BM", "BME"):
            out = [12]
        elif base in ("QS", "Q", "QE"):
            out = [4]
    return tuple(m for m in out if 2 * m < n)


@dataclass
class CsvSeriesConfig(SeriesConfig):
    """One column of a CSV (or JSON lines) file with a timestamp column, at any regular frequency."""

    path: str | None = None
    target: str = ""  # the value column; "" -> the only numeric column besides the time column
    time_column: str = ""  # "" -> the first column
    freq: str = ""  # pandas alias of the step ("30min", "h", "D", "W-SUN", "MS", "YS"); "" -> inferred
    seasons: tuple[int, ...] = ()  # seasonal periods in steps; () -> from the step (half-hourly: 48 and 336)
    # Missing values (empty cells, timestamps absent from the regular grid): filled and reported.
    # interpolate: linear in time; ffill: repeat the last value; zero: 0 (counts); error: refuse the file.
    fill: Literal["interpolate", "ffill", "zero", "error"] = "interpolate"
    unit: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(m < 1 for m in self.seasons):
            raise ValueError("seasons must be positive numbers of steps")


def _infer_freq(stamps, path: Path) -> str:
    """The step of sorted unique timestamps: pandas' inference, else the most common difference."""
    import pandas as pd

    if len(stamps) < 3:
        raise NeuratlasError(f"{path}: {len(stamps)} timestamps; a series needs at least 3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas' chatter about ambiguous anchors
        freq = pd.infer_freq(stamps[: min(len(stamps), 500)])
    if freq is None:  # gaps break pandas' inference: calendar months/years, else the commonest step
        if all(t.day == 1 and t.hour == 0 for t in stamps):
            months = {(b.year - a.year) * 12 + b.month - a.month for a, b in zip(stamps[:-1], stamps[1:])}
            step = min(months)
            if all(m % step == 0 for m in months):
                return "YS" if step == 12 else ("QS" if step == 3 else f"{step}MS" if step > 1 else "MS")
        diffs = pd.Series(stamps[1:] - stamps[:-1])
        freq = pd.tseries.frequencies.to_offset(diffs.mode().iloc[0]).freqstr
    return freq


def read_series_csv(cfg: CsvSeriesConfig) -> tuple[np.ndarray, list, str, int, str]:
    """(values on a regular grid, timestamps, freq, number filled, value column) from a user's file.

    Duplicated timestamps, unparseable times, non-numeric values and timestamps off the grid are refused with
    the file and line; missing values are filled by ``cfg.fill`` and counted."""
    import pandas as pd

    table = read_table(existing(cfg.path, "series"), "series")
    time_col = cfg.time_column or (table.columns[0] if table.columns else "")
    table.require(time_col, option="--data.time_column")
    target = cfg.target
    if not target:
        others = [c for c in table.columns if c != time_col]
        numeric = []
        for c in others:
            try:
                table.floats(c, allow_empty=True)
                numeric.append(c)
            except NeuratlasError:
                pass
        if len(numeric) != 1:
            raise NeuratlasError(
                f"{table.path}: {len(numeric)} numeric columns ({', '.join(map(repr, numeric))}); "
                "name the one to forecast with --data.target"
            )
        target = numeric[0]
    table.require(target, option="--data.target")
    raw = table.column(time_col)
    # utc=True: offsets such as +01:00/+02:00 across a DST change become one time line; naive times stay as written
    stamps = pd.to_datetime(pd.Series([str(v) for v in raw]), errors="coerce", format="mixed", utc=True)
    bad = np.flatnonzero(stamps.isna().to_numpy())
    if len(bad):
        raise NeuratlasError(
            f"{table.where(int(bad[0]))}: {str(raw[bad[0]])[:40]!r} in column {time_col!r} is not a date/time"
        )
    stamps = stamps.dt.tz_localize(None)
    values = np.array(table.floats(target, allow_empty=True), np.float64)
    dup = stamps.duplicated(keep=False).to_numpy()
    if dup.any():
        first = np.flatnonzero(dup)[:2]
        raise NeuratlasError(
            f"{table.path}: timestamp {stamps.iloc[first[0]]} appears twice (lines "
            f"{table.lines[first[0]]} and {table.lines[first[1]]}); aggregate or remove duplicates"
        )
    order = np.argsort(stamps.to_numpy(), kind="stable")
    stamps, values = pd.DatetimeIndex(stamps.to_numpy()[order]), values[order]
    freq = cfg.freq or _infer_freq(stamps, table.path)
    try:
        grid = pd.date_range(stamps[0], stamps[-1], freq=freq)
    except ValueError as e:
        raise NeuratlasError(f"{table.path}: cannot use frequency {freq!r} ({e}); set --data.freq") from None
    pos = grid.get_indexer(stamps)
    if (pos < 0).any():
        i = int(order[np.flatnonzero(pos < 0)[0]])
        raise NeuratlasError(
            f"{table.where(i)}: timestamp {stamps[np.flatnonzero(pos < 0)[0]]} is not on the "
            f"regular {freq!r} grid from {stamps[0]}; set --data.freq or resample the file"
        )
    full = np.full(len(grid), np.nan)
    full[pos] = values
    missing = np.isnan(full)
    n_missing = int(missing.sum())
    if n_missing:
        absent, empty = len(grid) - len(stamps), n_missing - (len(grid) - len(stamps))
        what = f"{absent} absent timestamps and {empty} empty values"
        if cfg.fill == "error":
            raise NeuratlasError(f"{table.path}: {what} in {target!r} (--data.fill interpolate|ffill|zero fills them)")
        if missing.all():
            raise NeuratlasError(f"{table.path}: column {target!r} has no values")
        idx = np.arange(len(full))
        if cfg.fill == "interpolate":
            full[missing] = np.interp(idx[missing], idx[~missing], full[~missing])
        elif cfg.fill == "ffill":
            full = pd.Series(full).ffill().bfill().to_numpy()
        else:
            full[missing] = 0.0
        print(f"warning: {table.path}: {what} filled ({cfg.fill}, --data.fill)", file=sys.stderr)
    return full, list(grid), freq, n_missing, target


def load_csv_series(cfg: CsvSeriesConfig) -> Series:
    values, stamps, freq, filled, target = read_series_csv(cfg)
    seasons = tuple(cfg.seasons) or seasons_for(freq, len(values))
    periods = period_labels(stamps, freq)
    test_len = cfg.test_len
    if cfg.test_start is not None:
        import pandas as pd

        try:
            start = pd.Timestamp(cfg.test_start)
        except ValueError:
            raise NeuratlasError(f"--data.test_start {cfg.test_start!r} is not a date/time") from None
        test_len = len(stamps) - int(np.searchsorted(np.array(stamps, dtype="datetime64[ns]"), np.datetime64(start)))
    # default test block: a tenth of the series, at least two cycles of the longest season, at most a third
    default = min(len(values) // 3, max(round(0.1 * len(values)), 2 * max(seasons, default=1)))
    name = Path(str(cfg.path)).stem
    season = max((m for m in seasons if 2 * m < len(values) - (test_len or default)), default=1)
    series = _split(
        name, values, periods, season, default, SeriesConfig(test_len=test_len), f"file {cfg.path}", cfg.unit or target
    )
    series.seasons, series.freq, series.filled = seasons or (1,), freq, filled
    return series


# Half-hourly electricity demand of England and Wales, 5 June - 27 August 2000 (12 weeks, 4,032 values in MW;
# Taylor 2003, as redistributed by pmdarima, MIT): a real series sampled many times a day, with daily and weekly
# seasons. Bundled (10 KB gzipped) so the forecasting check needs no package.
TAYLOR_FILE = Path(__file__).resolve().parent / "bundled" / "taylor" / "taylor.txt.gz"


def load_taylor(cfg: SeriesConfig) -> Series:
    import gzip

    import pandas as pd

    values = np.loadtxt(gzip.open(TAYLOR_FILE, "rt"), dtype=np.float64)
    stamps = pd.date_range("2000-06-05", periods=len(values), freq="30min")
    periods = period_labels(stamps, "30min")
    series = _split("taylor", values, periods, 336, 672, cfg, "bundled with Neuratlas", "MW")
    series.seasons, series.freq = (48, 336), "30min"
    return series


def describe_series(series: Series) -> dict[str, object]:
    """The facts ``data inspect`` prints about a series: length, span, step, seasons, gaps filled, split."""
    v = series.values
    return {
        "name": series.name,
        "length": len(v),
        "first": series.periods[0],
        "last": series.periods[-1],
        "freq": series.freq or ("monthly" if "-" in series.periods[0] else "yearly"),
        "seasons": list(series.seasons or (series.season,)),
        "season_used": series.season,
        "filled_values": series.filled,
        "train": series.n_train,
        "test": len(v) - series.n_train,
        "min": float(v.min()),
        "mean": float(v.mean()),
        "max": float(v.max()),
        "source": series.source,
    }


register_dataset(
    "airpassengers",
    load_airpassengers,
    SeriesConfig,
    "monthly airline passengers 1949-1960 (Box & Jenkins); darts split: 108 train / 36 test months",
)
register_dataset(
    "co2", load_co2, SeriesConfig, "Mauna Loa CO2, monthly means 1958-2001 (statsmodels); last 60 months held out"
)
register_dataset(
    "sunspots", load_sunspots, SeriesConfig, "yearly sunspot numbers 1700-2008 (statsmodels); last 50 years held out"
)
register_dataset(
    "taylor",
    load_taylor,
    SeriesConfig,
    "half-hourly electricity demand, England and Wales, June-August 2000 (bundled; daily and weekly "
    "seasons); last 2 weeks held out",
)
register_dataset(
    "csv-series",
    load_csv_series,
    CsvSeriesConfig,
    "your series: a CSV with a time column and value columns (--data.path, --data.target); frequency "
    "and seasons inferred, gaps filled (--data.fill)",
    user_files=True,
)
