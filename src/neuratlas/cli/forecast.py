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
    p.set_defaults(func=cmd_forecast)


def cmd_forecast(args: argparse.Namespace, extra: list[str]) -> int:
    from neuratlas.errors import NeuratlasError
    from neuratlas.models.checkpoint import read_checkpoint
    from neuratlas.tasks.forecasting import forecast_checkpoint, plot_forecast

    ckpt = read_checkpoint(args.checkpoint)
    if ckpt.extra.get("task") != "forecasting":
        raise NeuratlasError(f"{ckpt.path} is a {ckpt.extra.get('task', 'non-forecasting')} checkpoint; "
                             "`neuratlas forecast` needs one trained with the forecasting task")
    model = ckpt.build_model()
    fc = forecast_checkpoint(model, ckpt.extra, args.horizon or ckpt.extra["horizon"], args.origin)
    for line in fc.table():
        print(line)
    path = plot_forecast(fc, Path(args.out) / f"forecast-{fc.dataset}-{fc.origin_label}.png")
    print(f"plot: {path}")
    return 0
