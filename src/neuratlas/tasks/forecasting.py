"""Time-series forecasting: sliding windows in, ``horizon`` future values out, judged by rolling origin.

The series is split by time (``data/timeseries.py``). From the training part only:
- the scale (std of the, optionally log-transformed, training values) is fitted;
- training windows are cut so that every target lies before the validation block, which holds the last
  ``val_len`` training steps; nothing at or after the test start is ever fitted on.

Each window is expressed relative to its last observed value (inputs and targets minus the level at the
forecast origin), so a model trained on 1949-1956 passenger counts can forecast the higher 1958-1960 level.

Evaluation is rolling-origin (walk-forward): a forecast of ``horizon`` steps from every origin whose whole
horizon lies in the evaluated block, each one seeing only the history before its origin. The model is fitted
once; so are the classical baselines (ARIMA and ETS from statsmodels), which then forecast from each origin
with their fitted parameters, filtering the history up to that origin — the same protocol for everyone.
Metrics (original units): MAE, RMSE, sMAPE, MAPE, MASE (scaled by the in-sample seasonal-naive MAE) and the
coverage of the outer quantile interval.
"""

from __future__ import annotations

import math
import sys
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neuratlas.data import load_dataset
from neuratlas.data.loaders import TensorBatches
from neuratlas.data.timeseries import Series
from neuratlas.errors import NeuratlasError
from neuratlas.extras import require
from neuratlas.plotting import pyplot, save_png
from neuratlas.tasks.base import TASKS, Task, model_device


# --- metrics -------------------------------------------------------------------------------------------------
def mase_scale(history: np.ndarray, season: int) -> float:
    """In-sample MAE of the seasonal-naive forecast y_t = y_{t-m} on ``history`` (Hyndman & Koehler 2006)."""
    m = season if len(history) > season else 1
    return float(np.mean(np.abs(history[m:] - history[:-m])))


def forecast_metrics(y: np.ndarray, pred: np.ndarray, scale: float) -> dict[str, float]:
    """MAE, RMSE, sMAPE (%), MAPE (%, only where y != 0) and MASE of forecasts ``pred`` against actuals ``y``."""
    y, pred = np.asarray(y, np.float64).ravel(), np.asarray(pred, np.float64).ravel()
    err = np.abs(y - pred)
    denom = np.abs(y) + np.abs(pred)
    smape = np.where(denom > 0, 2 * err / np.where(denom > 0, denom, 1), 0.0)
    nz = y != 0
    return {
        "mae": float(err.mean()),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "smape": float(100 * smape.mean()),
        "mape": float(100 * np.mean(err[nz] / np.abs(y[nz]))) if nz.any() else math.nan,
        "mase": float(err.mean() / scale),
    }


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Quantile (pinball) loss of (B, H, Q) predictions against (B, H) targets, averaged."""
    diff = target.unsqueeze(-1) - pred
    return torch.maximum(quantiles * diff, (quantiles - 1) * diff).mean()


# --- windows and the classical baselines ------------------------------------------------------------------------
def origins(start: int, end: int, horizon: int) -> list[int]:
    """Forecast origins t (first predicted index) whose horizon t..t+horizon-1 lies inside [start, end)."""
    return list(range(start, end - horizon + 1))


def windows(z: np.ndarray, starts: list[int], lookback: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs z[t-L:t] and targets z[t:t+H] for each origin t, both minus the level z[t-1] at the origin."""
    x = np.stack([z[t - lookback : t] for t in starts])
    level = x[:, -1:]
    y = np.stack([z[t : t + horizon] for t in starts]) if horizon else np.zeros((len(starts), 0))
    return x - level, y - level


def naive_forecasts(y: np.ndarray, starts: list[int], horizon: int, season: int = 1) -> np.ndarray:
    """Seasonal naive: y[t+h] is forecast by the last observed value of the same season (season=1: naive)."""
    return np.stack([[y[t - season + (h % season)] for h in range(horizon)] for t in starts])


def classical_forecasts(
    kind: str, y: np.ndarray, n_fit: int, starts: list[int], horizon: int, season: int, cfg: ForecastConfig
) -> np.ndarray:
    """ARIMA or ETS fitted on ``y[:n_fit]`` only, then run with those parameters over the whole series: the
    forecast from origin t is the dynamic prediction that conditions on ``y[:t]`` and nothing later."""
    feature = "the ARIMA/ETS baselines (or set --task.baselines false)"
    ETSModel = require("statsmodels.tsa.exponential_smoothing.ets", feature).ETSModel
    SARIMAX = require("statsmodels.tsa.statespace.sarimax", feature).SARIMAX
    seasonal = season > 1 and len(y[:n_fit]) > 2 * season
    if kind == "arima" and seasonal and season > MAX_ARIMA_SEASON:
        raise NeuratlasError(
            f"seasonal ARIMA at period {season} has a state of {season}+ values: too slow to "
            f"fit; it is skipped above period {MAX_ARIMA_SEASON}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter from statsmodels' optimisers
        if kind == "arima":
            P, D, Q = cfg.arima_seasonal_order if seasonal else (0, 0, 0)
            spec = dict(
                order=tuple(cfg.arima_order),
                seasonal_order=(P, D, Q, season if seasonal else 0),
                trend="c" if cfg.arima_order[1] == 0 and D == 0 else "n",
            )
            params = SARIMAX(y[:n_fit], **spec).fit(disp=False).params
            full = SARIMAX(y, **spec).filter(params)
            return np.stack([full.predict(start=t, end=t + horizon - 1, dynamic=True) for t in starts])
        spec = dict(
            error="add",
            trend=None if cfg.ets_trend == "none" else cfg.ets_trend,
            damped_trend=cfg.ets_damped and cfg.ets_trend != "none",
            seasonal=cfg.ets_seasonal if seasonal and cfg.ets_seasonal != "none" else None,
            seasonal_periods=season if seasonal and cfg.ets_seasonal != "none" else None,
        )
        if seasonal and season > MAX_ESTIMATED_SEASON:
            # long seasons (336 half-hours): estimating every initial seasonal state is hundreds of free
            # parameters; the heuristic start (a decomposition of the first cycles) leaves only the smoothing ones
            spec["initialization_method"] = "heuristic"
        params = ETSModel(y[:n_fit], **spec).fit(disp=False).params
        full = ETSModel(y, **spec).smooth(params)
        return np.stack([full.predict(start=t, end=t + horizon - 1, dynamic=0) for t in starts])


MAX_ARIMA_SEASON = 52  # seasonal ARIMA above this period is skipped (its state grows with the period)
MAX_ESTIMATED_SEASON = 24  # ETS above this period starts from heuristic seasonal states


def auto_horizon(seasons: tuple[int, ...]) -> int:
    """One cycle of the shortest season (a day of half-hours, a year of months), or 10 steps without one."""
    cycles = [m for m in seasons if m > 1]
    return min(cycles) if cycles else 10


def auto_lookback(season: int, horizon: int, n_fit: int, min_windows: int = 16) -> int:
    """Three cycles of the season the model repeats (two, one, when the fitting part is short), so each
    window shows how the season changes from cycle to cycle; without a season, four horizons."""
    unit = season if season > 1 else horizon
    for k in (3, 2, 1) if season > 1 else (4, 3, 2, 1):
        if n_fit - k * unit - horizon + 1 >= min_windows:
            return k * unit
    return unit


# --- the task ----------------------------------------------------------------------------------------------------
@dataclass
class ForecastConfig:
    lookback: int | None = 24  # input window length; None -> from the series' season (auto_lookback)
    horizon: int | None = 12  # steps forecast from each origin; None -> the shortest season (auto_horizon)
    val_len: int | None = None  # last training steps held out for validation; None -> horizon
    log: bool = True  # model log(y) for positive series (multiplicative seasonality becomes additive)
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)  # pinball loss; () -> point forecast with MSE
    batch_size: int = 16
    eval_stride: int | None = 1  # step between rolling origins; None -> spaced to at most 200 origins
    baselines: bool = True  # naive / seasonal naive / ARIMA / ETS on the test split, same origins
    arima_order: tuple[int, int, int] = (0, 1, 1)
    arima_seasonal_order: tuple[int, int, int] = (0, 1, 1)  # (P, D, Q) at the series' season
    ets_trend: Literal["add", "mul", "none"] = "add"
    ets_damped: bool = False
    ets_seasonal: Literal["add", "mul", "none"] = "add"

    def __post_init__(self) -> None:
        if min(self.lookback or 1, self.horizon or 1, self.batch_size, self.eval_stride or 1) < 1:
            raise ValueError("lookback, horizon, batch_size and eval_stride must be positive")
        if self.val_len is not None and self.horizon is not None and self.val_len < self.horizon:
            raise ValueError(f"val_len ({self.val_len}) must hold at least one horizon ({self.horizon})")
        for name in ("ets_trend", "ets_seasonal"):
            if getattr(self, name) not in ("add", "mul", "none"):
                raise ValueError(f"{name} must be add, mul or none")


class Forecasting(Task):
    Config = ForecastConfig
    metric = "mase"
    higher_is_better = False

    def __init__(self, cfg: ForecastConfig, data_spec: dict[str, Any], seed: int = 0) -> None:
        super().__init__(cfg, data_spec, seed)
        self.series: Series = load_dataset(data_spec)
        s = self.series
        if not isinstance(s, Series):
            raise NeuratlasError(
                f"forecasting needs a series data set (csv-series, airpassengers, ...), not {data_spec['name']!r}"
            )
        horizon = cfg.horizon or auto_horizon(s.seasons or (s.season,))
        val_len = cfg.val_len or horizon
        if val_len < horizon:
            raise NeuratlasError(f"val_len ({val_len}) must hold at least one horizon ({horizon})")
        lookback = cfg.lookback or auto_lookback(s.season, horizon, s.n_train - val_len)
        self.cfg = cfg = replace(cfg, horizon=horizon, lookback=lookback)
        self.val_len = val_len
        self.n_fit = s.n_train - self.val_len  # what the model and its scaler are fitted on
        self.log = cfg.log and s.positive
        if self.n_fit - cfg.lookback - cfg.horizon + 1 < 1:
            raise NeuratlasError(
                f"{s.name}: {self.n_fit} fitting steps cannot hold one window of lookback "
                f"{cfg.lookback} + horizon {cfg.horizon}; lower --task.lookback or --task.horizon"
            )
        if len(s.test) < cfg.horizon:
            raise NeuratlasError(
                f"{s.name}: the test block has {len(s.test)} steps, less than the horizon {cfg.horizon}"
            )
        z = self.transform(s.values)
        self.scale = float(z[: self.n_fit].std()) or 1.0  # fitted on the training part only
        self.z = z / self.scale
        starts = origins(cfg.lookback, self.n_fit, cfg.horizon)
        x, y = windows(self.z, starts, cfg.lookback, cfg.horizon)
        self.train_x = torch.tensor(x, dtype=torch.float32).unsqueeze(-1)
        self.train_y = torch.tensor(y, dtype=torch.float32)
        self.batch_size = min(cfg.batch_size, len(starts))
        self.train_batches = TensorBatches((self.train_x, self.train_y), self.batch_size, seed=seed)
        self.quantiles = torch.tensor(cfg.quantiles, dtype=torch.float32)
        self._baselines: dict[str, float] | None = None

    # --- transforms ------------------------------------------------------------------------------------------
    def transform(self, values: np.ndarray) -> np.ndarray:
        return np.log(values) if self.log else np.asarray(values, np.float64)

    def split_origins(self, split: str) -> tuple[list[int], int]:
        """(origins, length of the history whose seasonal-naive MAE scales MASE) for a split."""
        s, h = self.series, self.cfg.horizon
        # unset: every origin up to 200, else evenly spaced ones (the ETS baseline forecasts from each)
        stride = self.cfg.eval_stride or max(1, -(-(len(s.values) - s.n_train - h + 1) // 200))
        if split == "val":
            return origins(self.n_fit, s.n_train, h)[::stride], self.n_fit
        if split == "test":
            return origins(s.n_train, len(s.values), h)[::stride], s.n_train
        if split == "train":
            return origins(self.cfg.lookback, self.n_fit, h)[::stride], self.n_fit
        raise NeuratlasError(f"unknown split {split!r}; use train, val or test")

    # --- Task contract ---------------------------------------------------------------------------------------
    def model_defaults(self) -> dict[str, Any]:
        return {
            "in_features": 1,
            "horizon": self.cfg.horizon,
            "lookback": self.cfg.lookback,
            "quantiles": tuple(self.cfg.quantiles),
            "season": self.series.season,
        }

    def _check_model(self, model: nn.Module) -> None:
        cfg = getattr(model, "config", None)
        if cfg is not None and (
            getattr(cfg, "horizon", None) != self.cfg.horizon
            or tuple(getattr(cfg, "quantiles", ())) != tuple(self.cfg.quantiles)
        ):
            raise NeuratlasError(
                f"model {getattr(model, 'model_name', '')} forecasts horizon "
                f"{getattr(cfg, 'horizon', '?')} with quantiles {getattr(cfg, 'quantiles', '?')}, "
                f"the task wants {self.cfg.horizon} and {self.cfg.quantiles}"
            )

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = (t.to(self.device) for t in batch)
        pred = model(x).float()
        if len(self.cfg.quantiles):
            return pinball_loss(pred, y, self.quantiles.to(self.device)), {}
        return F.mse_loss(pred[..., 0], y), {}

    @torch.no_grad()
    def model_forecasts(
        self, model: nn.Module, starts: list[int], autocast: AbstractContextManager | None = None
    ) -> np.ndarray:
        """(n_origins, H, Q) forecasts in original units; each uses only z[t-L:t] before its origin t."""
        x, _ = windows(self.z, starts, self.cfg.lookback, 0)
        level = self.z[np.array(starts) - 1][:, None, None]
        was_training = model.training
        model.eval()
        xt = torch.tensor(x, dtype=torch.float32, device=self.device).unsqueeze(-1)
        if autocast is not None:
            with autocast:
                out = model(xt)
        else:
            out = model(xt)
        model.train(was_training)
        # sorting the quantiles removes crossings (monotone rearrangement, Chernozhukov et al. 2010)
        z = (np.sort(out.float().cpu().numpy(), axis=-1) + level) * self.scale
        return np.exp(z) if self.log else z

    def median_index(self) -> int:
        q = list(self.cfg.quantiles)
        return int(np.argmin([abs(v - 0.5) for v in q])) if q else 0

    def evaluate(self, model: nn.Module, split: str, autocast: AbstractContextManager) -> dict[str, float]:
        self._check_model(model)
        starts, n_hist = self.split_origins(split)
        y = self.series.values
        actual = np.stack([y[t : t + self.cfg.horizon] for t in starts])
        fc = self.model_forecasts(model, starts, autocast)
        scale = mase_scale(y[:n_hist], self.series.season)
        out = forecast_metrics(actual, fc[..., self.median_index()], scale)
        if fc.shape[-1] > 1:
            out["coverage"] = float(np.mean((actual >= fc[..., 0]) & (actual <= fc[..., -1])))
        out["origins"] = float(len(starts))
        if split == "test" and self.cfg.baselines:
            out.update(self.baselines())
        return out

    def baseline_forecasts(self, split: str = "test") -> dict[str, np.ndarray]:
        """Point forecasts of the four baselines from the same origins (fitted before the split)."""
        starts, n_hist = self.split_origins(split)
        y, h, m = self.series.values, self.cfg.horizon, self.series.season
        out = {"naive": naive_forecasts(y, starts, h, 1)}
        if m > 1:
            out["seasonal_naive"] = naive_forecasts(y, starts, h, m)
        for kind in ("arima", "ets"):
            if kind == "arima" and m > MAX_ARIMA_SEASON:
                continue  # see MAX_ARIMA_SEASON
            out[kind] = classical_forecasts(kind, y, n_hist, starts, h, m, self.cfg)
        return out

    def baselines(self) -> dict[str, float]:
        """Baseline metrics on the test split, prefixed by the baseline name (computed once)."""
        if self._baselines is None:
            starts, n_hist = self.split_origins("test")
            y = self.series.values
            actual = np.stack([y[t : t + self.cfg.horizon] for t in starts])
            scale = mase_scale(y[:n_hist], self.series.season)
            self._baselines = {}
            for name, fc in self.baseline_forecasts("test").items():
                for k, v in forecast_metrics(actual, fc, scale).items():
                    self._baselines[f"{name}_{k}"] = v
        return self._baselines

    def checkpoint_extra(self) -> dict[str, Any]:
        s = self.series
        return {
            "dataset": s.name,
            "periods": s.periods,
            "values": s.values.tolist(),
            "n_train": s.n_train,
            "season": s.season,
            "log": self.log,
            "scale": self.scale,
            "lookback": self.cfg.lookback,
            "horizon": self.cfg.horizon,
            "quantiles": list(self.cfg.quantiles),
            "unit": s.unit,
            "freq": s.freq,
            "seasons": list(s.seasons or (s.season,)),
            "log_asked": self.cfg.log,
        }

    def describe_data(self) -> str:
        s = self.series
        seasons = "/".join(map(str, s.seasons or (s.season,)))
        return (
            f"{s.name} ({self.n_fit}/{self.val_len}/{len(s.test)}{f', step {s.freq}' if s.freq else ''}, "
            f"seasons {seasons}, lookback {self.cfg.lookback}, horizon {self.cfg.horizon})"
        )

    def example_inputs(self, folder: Path) -> tuple[list[str], dict[str, str]]:
        return ["end"], {}

    predicts_without_inputs = True  # no origin: forecast the future, from the end of the series

    @dataclass
    class PredictOptions:
        horizon: int | None = None  # steps to forecast (default: the model's; longer ones feed the median back)

    @classmethod
    def predict_on_data(cls, extra: dict[str, Any], trained_on: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """A series the model never saw, from ``--data.path new.csv`` (and ``--data.target``, ``--data.time_column``,
        ... as for the csv-series data set; a model trained on a CSV reads a file laid out like its own)."""
        spec = dict(trained_on) if trained_on.get("name") == "csv-series" else {"name": "csv-series"}
        spec.pop("test_len", None), spec.pop("test_start", None)
        spec.update(data)
        spec["test_len"] = 1  # nothing is held out: the forecast starts after the last value
        return with_new_series(extra, load_dataset(spec))

    @classmethod
    def predict(
        cls, model: nn.Module, extra: dict[str, Any], inputs: list[str], out_dir: str, options: PredictOptions
    ) -> list[str]:
        """Forecast from each input origin ("end" = after the last value, the default, or a period such as
        1958-01, which shows the actual values too). Writes one PNG per origin to ``out_dir``."""
        horizon = options.horizon or int(extra["horizon"])
        lines = []
        for origin in inputs or ["end"]:
            fc = forecast_checkpoint(model, extra, horizon, None if origin == "end" else origin)
            path = plot_forecast(fc, Path(out_dir) / forecast_png_name(fc))
            lines += fc.table() + [f"plot: {path}"]
        return lines


@dataclass
class Forecast:
    """A forecast from one origin, in original units, with what is needed to print and plot it."""

    dataset: str
    unit: str
    history_periods: list[str]
    history: np.ndarray
    periods: list[str]
    median: np.ndarray
    low: np.ndarray | None  # the outer quantiles, when the model has them
    high: np.ndarray | None
    quantiles: tuple[float, float] | None
    actual: np.ndarray | None  # when the origin is inside the series
    origin_label: str

    def table(self) -> list[str]:
        q = f"  {100 * self.quantiles[0]:.0f}%–{100 * self.quantiles[1]:.0f}% interval" if self.quantiles else ""
        head = f"{'period':>8s} {'forecast':>10s}" + (f" {'low':>10s} {'high':>10s}" if self.quantiles else "")
        head += f" {'actual':>10s}" if self.actual is not None else ""
        lines = [f"{self.dataset}: {len(self.periods)}-step forecast from {self.origin_label}{q} ({self.unit})", head]
        for i, period in enumerate(self.periods):
            row = f"{period:>8s} {self.median[i]:10.2f}"
            if self.quantiles:
                row += f" {self.low[i]:10.2f} {self.high[i]:10.2f}"
            if self.actual is not None:
                row += f" {self.actual[i]:10.2f}" if i < len(self.actual) else f" {'':>10s}"
            lines.append(row)
        return lines


def forecast_checkpoint(model: nn.Module, extra: dict[str, Any], horizon: int, origin: str | None = None) -> Forecast:
    """Forecast ``horizon`` steps after ``origin`` (a period label; None = after the last value) with a
    forecasting checkpoint's model. Longer than the model's horizon: the median is fed back and the model
    is run again (recursive), so the interval of later blocks ignores the uncertainty of the fed-back part."""
    if horizon < 1:
        raise NeuratlasError("--horizon must be at least 1")
    values, periods = np.asarray(extra["values"], np.float64), list(extra["periods"])
    if origin is None:
        t0 = len(values)
    elif origin in periods:
        t0 = periods.index(origin)
    else:
        raise NeuratlasError(f"origin {origin!r} is not a period of {extra['dataset']} ({periods[0]} .. {periods[-1]})")
    L, q = extra["lookback"], list(extra["quantiles"])
    if t0 < L:
        first = (
            f"the first possible origin is {periods[L]}" if L < len(periods) else f"the series has only {len(periods)}"
        )
        raise NeuratlasError(f"{extra['dataset']}: a forecast needs {L} earlier values; {first}")
    z = (np.log(values[:t0]) if extra["log"] else values[:t0]) / extra["scale"]
    mid = int(np.argmin([abs(v - 0.5) for v in q])) if q else 0
    blocks = []
    model.eval()
    with torch.no_grad():
        while sum(len(b) for b in blocks) < horizon:
            level = z[-1]
            x = torch.tensor(z[-L:] - level, dtype=torch.float32, device=model_device(model)).view(1, L, 1)
            out = np.sort(model(x)[0].float().cpu().numpy(), axis=-1) + level  # (H, Q), quantiles uncrossed
            blocks.append(out)
            z = np.concatenate([z, out[:, mid]])
    out = np.concatenate(blocks)[:horizon] * extra["scale"]
    out = np.exp(out) if extra["log"] else out
    if t0 < len(values):
        future = periods[t0 : t0 + horizon]
        future += _continue_periods(periods, horizon - len(future), extra.get("freq", ""))
        actual = values[t0 : t0 + horizon]
    else:
        future, actual = _continue_periods(periods, horizon, extra.get("freq", "")), None
    two = len(q) > 1
    return Forecast(
        extra["dataset"],
        extra.get("unit", ""),
        periods[:t0],
        values[:t0],
        future,
        out[:, mid],
        out[:, 0] if two else None,
        out[:, -1] if two else None,
        (q[0], q[-1]) if two else None,
        actual,
        periods[t0] if t0 < len(periods) else f"after-{periods[-1]}",
    )


def _continue_periods(periods: list[str], n: int, freq: str = "") -> list[str]:
    return Series("", np.zeros(1), periods, 1, 0, "", freq=freq).next_periods(n) if n > 0 else []


def with_new_series(extra: dict[str, Any], series: Series) -> dict[str, Any]:
    """A forecasting checkpoint's facts with another series in place of its own, for forecasting a series
    the model never saw: the log transform applies when the model was trained with it and the new series is
    positive; the scale is the new series' own spread (models that normalise per window ignore it)."""
    trained = int(extra.get("season", 1))
    if trained > 1 and trained not in (series.seasons or (series.season,)):
        print(
            f"warning: the model was trained to repeat a season of {trained} steps; {series.name}'s seasons "
            f"are {'/'.join(map(str, series.seasons))} (train on this kind of series for a better forecast)",
            file=sys.stderr,
        )
    log = bool(extra.get("log_asked", extra["log"])) and extra["log"] and series.positive
    z = np.log(series.values) if log else series.values
    return {
        **extra,
        "dataset": series.name,
        "periods": series.periods,
        "values": series.values.tolist(),
        "n_train": len(series.values),
        "log": log,
        "scale": float(np.std(z)) or 1.0,
        "unit": series.unit,
        "freq": series.freq,
    }


def forecast_png_name(fc: Forecast) -> str:
    """forecast-DATASET-ORIGIN.png, with a time of day written without spaces or colons (2000-08-27T2330)."""
    label = fc.origin_label.replace(" ", "T").replace(":", "")
    return f"forecast-{fc.dataset}-{label}.png"


def plot_forecast(fc: Forecast, path: Path, history: int | None = None) -> Path:
    """History (default: 72 steps or three forecast lengths), forecast median, interval (and actuals when
    known) in one PNG."""
    history = history or max(72, 3 * len(fc.periods))
    n = len(fc.history)
    start = max(0, n - history)
    xs_hist = np.arange(start, n)
    xs_fc = np.arange(n, n + len(fc.periods))
    fig, ax = pyplot().subplots(figsize=(9, 4))
    ax.plot(xs_hist, fc.history[start:], color="black", lw=1.2, label="history")
    if fc.actual is not None:
        ax.plot(xs_fc[: len(fc.actual)], fc.actual, color="gray", lw=1.2, ls="--", label="actual")
    if fc.low is not None:
        ax.fill_between(
            xs_fc,
            fc.low,
            fc.high,
            color="tab:blue",
            alpha=0.25,
            label=f"{100 * fc.quantiles[0]:.0f}–{100 * fc.quantiles[1]:.0f}% interval",
        )
    ax.plot(xs_fc, fc.median, color="tab:blue", lw=1.6, label="forecast (median)")
    labels = fc.history_periods[start:] + fc.periods
    ticks = np.arange(start, n + len(fc.periods))
    step = max(1, len(ticks) // 10)
    ax.set_xticks(ticks[::step], [labels[i] for i in range(0, len(labels), step)], rotation=45, ha="right")
    ax.set_ylabel(fc.unit)
    ax.set_title(f"{fc.dataset}: {len(fc.periods)}-step forecast from {fc.origin_label}")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)


TASKS.add(
    "forecasting",
    Forecasting,
    ForecastConfig,
    description="time-series forecasting: windows, quantile loss, rolling-origin MASE vs ARIMA/ETS",
)
