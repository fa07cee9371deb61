"""Run logs: a long-format CSV always (step, split, name, value), TensorBoard when installed."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

from neuratlas.plotting import panel_grid, save_png

FIELDS = ["step", "split", "name", "value", "time"]


class RunLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.path = run_dir / "metrics.csv"
        run_dir.mkdir(parents=True, exist_ok=True)
        rows = read_metrics(self.path) if (resume_step is not None and self.path.exists()) else []
        rows = [r for r in rows if _step(r) <= (resume_step or 0)]  # drop what the crash left past k
        # the kept rows are rewritten through a temp file and a rename, so a kill during the rewrite
        # leaves the old log, never an empty one; then the log is appended to
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._f = open(self.path, "a", newline="")
        self._w = csv.DictWriter(self._f, FIELDS)
        self._t0 = time.time()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # tensorboard is an optional extra
                self.tb = None

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._w.writerow(
                {
                    "step": step,
                    "split": split,
                    "name": name,
                    "value": f"{float(value):.6g}",
                    "time": f"{time.time() - self._t0:.2f}",
                }
            )
            if self.tb is not None:
                self.tb.add_scalar(f"{split}/{name}", float(value), step)
        self._f.flush()

    def close(self) -> None:
        self._f.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> list[dict[str, str]]:
    """The rows of a metrics log; a row cut short by a kill (no step, or no value) is left out."""
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if _step(r) >= 0 and r.get("value") not in (None, "")]


def _step(row: dict[str, str]) -> int:
    try:
        return int(row.get("step") or "")
    except ValueError:
        return -1


def plot_curves(csv_path: Path, out_png: Path, title: str = "") -> Path:
    """Training loss and every evaluation metric against step, one panel per metric, four panels a row."""
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for r in read_metrics(csv_path):
        if r["name"] in ("lr", "grad_norm", "time_s", "samples_per_s"):
            continue
        xs, ys = series.setdefault(r["name"], {}).setdefault(r["split"], ([], []))
        xs.append(int(r["step"]))
        ys.append(float(r["value"]))
    names = list(series)
    fig, axes = panel_grid(len(names), (4.2, 3.2), extra_height=0.4 if title else 0.0)
    for ax, name in zip(axes, names):
        for split, (xs, ys) in series[name].items():
            ax.plot(xs, ys, label=split, marker="o" if split != "train" else None, markersize=3)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, out_png)
