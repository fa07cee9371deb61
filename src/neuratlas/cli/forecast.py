"""forecast: print a forecasting checkpoint's forecast and save a PNG with history, forecast and interval."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("forecast", help="forecast with a time-series checkpoint (table + PNG)",
                       description="Forecast HORIZON steps with a forecasting CHECKPOINT (a run folder or a "
                       ".safetensors file). By default the forecast starts after the last value of the series; "
                       "--origin 1958-01 starts it inside the series and shows the actual values too.")
    p.add_argument("checkpoint")
    p.add_argument("--horizon", type=int, default=None, help="steps to forecast (default: the model's horizon; "
                   "longer horizons feed the median back)")
    p.add_argument("--origin", default=None, help="first forecast period, e.g. 1958-01 (default: the future)")
    p.add_argument("--out", default="forecasts", help="folder for the PNG")
    p.epilog = ("A series the model never saw: --data.path new.csv (with --data.target COLUMN, --data.time_column "
                "COLUMN, --data.freq, --data.fill as for the csv-series data set) forecasts after its last value.")
    p.set_defaults(func=cmd_forecast, accepts_overrides=True)


def _new_series(trained_on: dict, overrides: dict[str, str]):
    """The csv-series named by ``--data.*`` options (starting from the run's own options when it was trained on
    a CSV too, so --data.path alone reads a file laid out like the training one)."""
    from neuratlas.data import load_dataset
    from neuratlas.errors import NeuratlasError

    bad = [k for k in overrides if not k.startswith("data.")]
    if bad:
        raise NeuratlasError(f"forecast takes --data.* options for a new series, got {', '.join(bad)}")
    spec = dict(trained_on) if trained_on.get("name") == "csv-series" else {"name": "csv-series"}
    spec.pop("test_len", None), spec.pop("test_start", None)
    spec.update({k.removeprefix("data."): v for k, v in overrides.items()})
    spec["test_len"] = 1  # nothing is held out: the forecast starts after the last value
    return load_dataset(spec)


def cmd_forecast(args: argparse.Namespace, extra_args: list[str]) -> int:
    from neuratlas.config import parse_overrides
    from neuratlas.errors import NeuratlasError
    from neuratlas.tasks.forecasting import forecast_checkpoint, forecast_png_name, plot_forecast, with_new_series
    from neuratlas.training.checkpoint import read_checkpoint

    ckpt = read_checkpoint(args.checkpoint)
    if ckpt.extra.get("task") != "forecasting":
        raise NeuratlasError(f"{ckpt.path} is a {ckpt.extra.get('task', 'non-forecasting')} checkpoint; "
                             "`neuratlas forecast` needs one trained with the forecasting task")
    model = ckpt.build_model()
    extra = ckpt.extra
    overrides = parse_overrides(extra_args)
    if overrides:
        extra = with_new_series(extra, _new_series(ckpt.run_config["data"], overrides))
    fc = forecast_checkpoint(model, extra, args.horizon or ckpt.extra["horizon"], args.origin)
    for line in fc.table():
        print(line)
    path = plot_forecast(fc, Path(args.out) / forecast_png_name(fc))
    print(f"plot: {path}")
    return 0
