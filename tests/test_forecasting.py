"""Forecasting: metrics against hand-computed values, the data readers and sources, no look-ahead leakage
(scaler, windows, model inputs and baselines never see the test period), the forecast command, and the
quick recipe beating seasonal naive on real data."""

import math

import numpy as np
import pytest
import torch

from neuratlas.data import load_dataset
from neuratlas.data.timeseries import Series, read_airpassengers_csv, read_co2_csv
from neuratlas.errors import NeuratlasError
from neuratlas.sources import DataSource
from neuratlas.tasks.forecasting import (
    ForecastConfig,
    Forecasting,
    classical_forecasts,
    forecast_metrics,
    mase_scale,
    naive_forecasts,
    origins,
    pinball_loss,
    windows,
)

pytest.importorskip("statsmodels")


def test_metrics_against_hand_computed_values():
    y, pred = np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 6])
    m = forecast_metrics(y, pred, scale=1.75)
    assert m["mae"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(math.sqrt(1.5))
    assert m["smape"] == pytest.approx(100 * (0 + 2 / 5 + 2 / 5 + 4 / 10) / 4)
    assert m["mape"] == pytest.approx(100 * (0 + 1 / 2 + 1 / 3 + 2 / 4) / 4)
    assert m["mase"] == pytest.approx(1.0 / 1.75)
    history = np.array([1.0, 3, 2, 5, 4])
    assert mase_scale(history, 1) == pytest.approx((2 + 1 + 3 + 1) / 4)
    assert mase_scale(history, 2) == pytest.approx((1 + 2 + 2) / 3)


def test_pinball_loss_by_hand():
    pred = torch.tensor([[[0.0, 1.0]]])  # quantiles 0.1 and 0.9, one step
    loss = pinball_loss(pred, torch.tensor([[2.0]]), torch.tensor([0.1, 0.9]))
    assert loss.item() == pytest.approx((0.1 * 2 + 0.9 * 1) / 2)


def test_naive_forecasts_and_windows():
    y = np.arange(20, dtype=float) * 10
    assert naive_forecasts(y, [10], 3, 1).tolist() == [[90, 90, 90]]
    assert naive_forecasts(y, [10], 5, 4).tolist() == [[60, 70, 80, 90, 60]]
    assert origins(8, 12, 3) == [8, 9]
    x, t = windows(y, [10], 4, 2)
    assert x.tolist() == [[-30, -20, -10, 0]] and t.tolist() == [[10, 20]]  # relative to y[9]


def test_co2_reader_averages_months_and_fills_gaps(tmp_path):
    path = tmp_path / "co2.csv"
    path.write_text("date,co2\n19580301,310\n19580308,312\n19580315,\n19580503,316\n19580510,318\n")
    values, periods = read_co2_csv(path)
    assert periods == ["1958-03", "1958-04", "1958-05"]
    assert values.tolist() == [311.0, 314.0, 317.0]  # April is empty: interpolated


def test_airpassengers_cache_and_download_paths(tmp_path, monkeypatch):
    """A CSV in the cache wins over the package; the download path is exercised on a file:// URL."""
    rows = "Month,#Passengers\n" + "".join(f"{1949 + k // 12}-{k % 12 + 1:02d},{100 + k}\n" for k in range(144))
    served = tmp_path / "served"
    served.mkdir()
    (served / "AirPassengers.csv").write_text(rows)
    monkeypatch.setenv("NEURATLAS_CACHE", str(tmp_path / "cache"))
    src = DataSource("airpassengers", {"AirPassengers.csv": ""}, "hint", base_url=served.as_uri())
    folder, how = src.locate(download=True)
    assert how.startswith("downloaded") and (folder / "AirPassengers.csv").is_file()
    values, periods = read_airpassengers_csv(folder / "AirPassengers.csv")
    assert len(values) == 144 and periods[0] == "1949-01" and values[-1] == 243
    s = load_dataset({"name": "airpassengers"})  # now served from the cache the download filled
    assert s.source.startswith("cache") and s.values[0] == 100
    bad = tmp_path / "bad.csv"
    bad.write_text("Month,#Passengers\n1949-01,lots\n")
    with pytest.raises(NeuratlasError, match="1949-01,112"):
        read_airpassengers_csv(bad)


def test_real_series_and_darts_split():
    air = load_dataset({"name": "airpassengers"})
    assert (air.n_train, len(air.test), air.periods[air.n_train]) == (108, 36, "1958-01")
    assert air.values[:3].tolist() == [112, 118, 132] and air.values[-1] == 432
    # R's datasets::AirPassengers: 144 months summing to 40,363, the peak 622 in July 1960
    assert air.values.sum() == 40363 and air.periods[int(air.values.argmax())] == "1960-07"
    co2 = load_dataset({"name": "co2"})
    assert len(co2.values) == 526 and not np.isnan(co2.values).any() and co2.periods[0] == "1958-03"
    sun = load_dataset({"name": "sunspots", "test_len": 40})
    assert len(sun.values) == 309 and len(sun.test) == 40 and sun.season == 11
    with pytest.raises(NeuratlasError, match="test_start"):
        load_dataset({"name": "airpassengers", "test_start": "2020-01"})


def _task(monkeypatch, series: Series, **cfg) -> Forecasting:
    monkeypatch.setattr("neuratlas.tasks.forecasting.load_dataset", lambda spec: series)
    return Forecasting(ForecastConfig(**{"baselines": False, **cfg}), {"name": series.name})


def test_no_look_ahead_leakage(monkeypatch):
    """Corrupt everything from the validation block on: nothing fitted may change, and neither may the
    forecast from the first test origin, which may look at the validation block but not the test block."""
    real = load_dataset({"name": "airpassengers"})
    task = _task(monkeypatch, real)
    assert task.n_fit == 96
    corrupt = real.values.copy()
    corrupt[task.n_fit :] *= 1000.0
    fake = Series(real.name, corrupt, real.periods, real.season, real.n_train, "test")
    leaky = _task(monkeypatch, fake)
    assert leaky.scale == task.scale
    assert torch.equal(leaky.train_x, task.train_x) and torch.equal(leaky.train_y, task.train_y)
    # every training target index lies before the validation block
    last_target = origins(task.cfg.lookback, task.n_fit, task.cfg.horizon)[-1] + task.cfg.horizon - 1
    assert last_target == task.n_fit - 1
    # the model sees only the history before each origin: corrupting the test block changes nothing
    test_corrupt = real.values.copy()
    test_corrupt[real.n_train :] *= 7
    other = _task(monkeypatch, Series(real.name, test_corrupt, real.periods, real.season, real.n_train, "t"))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(24, 36), torch.nn.Unflatten(1, (12, 3)))
    starts = [real.n_train]
    np.testing.assert_allclose(task.model_forecasts(model, starts), other.model_forecasts(model, starts))
    np.testing.assert_allclose(
        naive_forecasts(real.values, starts, 12, 12), naive_forecasts(test_corrupt, starts, 12, 12)
    )


@pytest.mark.parametrize("kind", ["ets", "arima"])
def test_classical_baselines_condition_only_on_the_past(kind):
    """Fitted on y[:n] and run over the whole series, the forecast from origin n equals the train-only fit's
    own forecast, and later values do not change it."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    rng = np.random.default_rng(0)
    t = np.arange(64)
    y = 50 + 0.5 * t + 5 * np.sin(2 * np.pi * t / 4) + rng.normal(0, 0.5, 64)
    cfg = ForecastConfig(arima_order=(1, 1, 0), arima_seasonal_order=(0, 1, 0))
    n, h = 48, 6
    fc = classical_forecasts(kind, y, n, [n, n + 3], h, 4, cfg)
    y2 = y.copy()
    y2[n:] += 100
    fc2 = classical_forecasts(kind, y2, n, [n], h, 4, cfg)
    np.testing.assert_allclose(fc[0], fc2[0], rtol=1e-6)
    if kind == "ets":
        own = ETSModel(y[:n], error="add", trend="add", seasonal="add", seasonal_periods=4).fit(disp=False)
    else:
        own = SARIMAX(y[:n], order=(1, 1, 0), seasonal_order=(0, 1, 0, 4)).fit(disp=False)
    np.testing.assert_allclose(fc[0], own.forecast(h), rtol=1e-4)
    assert not np.allclose(fc[1][:3], fc[0][3:])  # origin n+3 did use y[n:n+3]


def test_ets_reproduces_darts_airpassengers_figure():
    """darts' quickstart: ExponentialSmoothing on AirPassengers, 36 months from 1958-01, MAPE 5.11%."""
    air = load_dataset({"name": "airpassengers"})
    fc = classical_forecasts("ets", air.values, 108, [108], 36, 12, ForecastConfig(horizon=36))
    mape = forecast_metrics(air.values[108:], fc[0], 1.0)["mape"]
    assert mape == pytest.approx(5.11, abs=0.3)


def test_task_rejects_impossible_windows():
    with pytest.raises(NeuratlasError, match="lookback"):
        Forecasting(ForecastConfig(lookback=90, baselines=False), {"name": "airpassengers"})
    from neuratlas.tasks import TASKS

    with pytest.raises(NeuratlasError, match="val_len"):
        TASKS.get("forecasting").config(val_len=3)


def test_train_checkpoint_and_forecast_command(run_overrides, tmp_path, capsys):
    from neuratlas.cli import main
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    over = {**run_overrides, "trainer.max_steps": "30", "trainer.eval_every": "30", "task.baselines": "false"}
    result = Trainer(get_recipe("lstm-airpassengers-quick").run_config(over)).fit()
    assert math.isfinite(result.test["mase"]) and result.test["origins"] == 25
    out = tmp_path / "fc"
    assert main(["forecast", str(result.run_dir), "--horizon", "15", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1961-03" in text and "10%–90% interval" in text  # 15 months past 1960-12, recursive beyond 12
    assert (out / "forecast-airpassengers-after-1960-12.png").stat().st_size > 10_000
    assert main(["forecast", str(result.run_dir), "1958-01", "--out", str(out)]) == 0  # forecast = predict
    assert "actual" in capsys.readouterr().out
    assert main(["predict", str(result.run_dir), "1900-01", "--out", str(out)]) == 2


@pytest.mark.slow
def test_quick_recipe_beats_seasonal_naive(run_overrides):
    """The tour recipe as it runs (600 steps are seconds), with every baseline on the same origins."""
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    result = Trainer(get_recipe("lstm-airpassengers-quick").run_config(run_overrides)).fit()
    t = result.test
    assert t["mase"] < t["seasonal_naive_mase"]
    assert t["seasonal_naive_mase"] == pytest.approx(1.263, abs=0.01)  # fixed by the data and the protocol
    assert t["ets_mase"] < t["seasonal_naive_mase"] and t["arima_mase"] < t["seasonal_naive_mase"]
