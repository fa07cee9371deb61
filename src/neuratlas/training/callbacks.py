"""What happens around the training loop, as callbacks: logging, the progress bar, early stopping.

The protocol is Keras' and Lightning's, kept small: ``on_fit_start``, ``on_step`` (after each optimizer
step, with its logs), ``on_eval`` (after each evaluation, with its metrics), ``on_save`` (after a checkpoint
is written) and ``on_fit_end`` (with the run's result). The trainer builds its own list from the run's
config (:func:`default_callbacks`); ``Trainer(run, callbacks=[...])`` adds a user's own.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from neuratlas.errors import NeuratlasError
from neuratlas.extras import require
from neuratlas.training.logging import RunLogger

if TYPE_CHECKING:
    from neuratlas.training.trainer import FitResult, Trainer

LOGGERS = ("csv", "tensorboard", "wandb", "mlflow")


class Callback:
    """Override what you need; every hook defaults to doing nothing."""

    def on_fit_start(self, trainer: Trainer) -> None:
        pass

    def on_step(self, trainer: Trainer, logs: dict[str, float]) -> None:
        pass

    def on_eval(self, trainer: Trainer, split: str, metrics: dict[str, float]) -> None:
        pass

    def on_save(self, trainer: Trainer, tag: str, path: Path) -> None:
        pass

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        pass

    def close(self) -> None:
        """Release files and connections (also after an interruption)."""


def parse_loggers(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise NeuratlasError(f"--trainer.loggers: unknown logger {unknown[0]!r}; choose from {', '.join(LOGGERS)}")
    return names


class MetricsLogger(Callback):
    """metrics.csv always (the run's own record, kept across resumes); TensorBoard, Weights & Biases (offline
    unless the user has logged in and set WANDB_MODE) and MLflow (to ``<run>/mlruns``) when named. The last
    two are imported only when asked for, and a missing package is one line naming it."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.csv: RunLogger | None = None
        self.wandb: Any = None
        self.mlflow: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        resumed = trainer.step if trainer.step else None
        self.csv = RunLogger(trainer.run_dir, "tensorboard" in self.names, resume_step=resumed)
        config = trainer.run.to_dict()
        if "wandb" in self.names:
            self.wandb = require("wandb", "Weights & Biases logging")
            os.environ.setdefault("WANDB_MODE", "offline")  # never phones home unless the user set it up
            self.wandb.init(
                project="neuratlas",
                name=trainer.run_dir.name,
                dir=str(trainer.run_dir),
                config=config,
                resume="allow",
                id=trainer.run_dir.name,
            )
        if "mlflow" in self.names:
            self.mlflow = require("mlflow", "MLflow logging")
            # a plain folder in the run (no server, no database): MLflow 3 keeps this store behind a switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            self.mlflow.set_tracking_uri((trainer.run_dir / "mlruns").resolve().as_uri())
            self.mlflow.start_run(run_name=trainer.run_dir.name)
            self.mlflow.log_params({f"{s}.{k}": str(v)[:250] for s, d in config.items() for k, v in d.items()})

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        if self.csv:
            self.csv.log(step, split, values)
        if self.wandb:
            self.wandb.log({f"{split}/{k}": v for k, v in values.items()}, step=step)
        if self.mlflow:
            self.mlflow.log_metrics(
                {f"{split}_{k}".replace("@", "_at_"): float(v) for k, v in values.items()}, step=step
            )

    def on_step(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if trainer.step % trainer.run.trainer.log_every == 0:
            self.log(trainer.step, "train", logs)

    def on_eval(self, trainer: Trainer, split: str, metrics: dict[str, float]) -> None:
        self.log(trainer.step, split, metrics)

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        self.log(trainer.step, "train", {"time_s": result.train_seconds, "samples_per_s": result.samples_per_second})
        self.close()

    def close(self) -> None:
        if self.csv:
            self.csv.close()
            self.csv = None
        if self.wandb:
            self.wandb.finish()
            self.wandb = None
        if self.mlflow:
            self.mlflow.end_run()
            self.mlflow = None


class ProgressBar(Callback):
    """A tqdm bar over the steps with the smoothed loss and the last validation metric."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.smooth: float | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.bar = tqdm(
            total=trainer.total_steps,
            initial=trainer.step,
            dynamic_ncols=True,
            leave=False,
            desc=trainer.run.model["name"],
        )

    def on_step(self, trainer: Trainer, logs: dict[str, float]) -> None:
        loss = logs.get("loss", next(iter(logs.values()), 0.0))
        self.smooth = loss if self.smooth is None else 0.9 * self.smooth + 0.1 * loss
        self.bar.update(1)
        if trainer.step % trainer.run.trainer.log_every == 0:
            self.bar.set_postfix(loss=f"{self.smooth:.4f}")

    def on_eval(self, trainer: Trainer, split: str, metrics: dict[str, float]) -> None:
        metric = trainer.task.metric
        if split == "val" and metric in metrics:
            self.bar.set_postfix(loss=f"{self.smooth or 0:.4f}", **{f"val_{metric}": f"{metrics[metric]:.4f}"})

    def on_fit_end(self, trainer: Trainer, result: FitResult) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EarlyStopping(Callback):
    """Stop when the task's headline validation metric has not improved by ``min_delta`` for ``patience``
    evaluations in a row. The count is part of the trainer state, so a resumed run stops where it would have."""

    def __init__(self, patience: int, min_delta: float) -> None:
        self.patience, self.min_delta = patience, min_delta

    def on_eval(self, trainer: Trainer, split: str, metrics: dict[str, float]) -> None:
        if split != "val":
            return
        score = metrics[trainer.task.metric]
        best = trainer.early_stop["best"]
        sign = 1 if trainer.task.higher_is_better else -1
        if best is None or math.isnan(best) or sign * (score - best) > self.min_delta:
            trainer.early_stop.update(best=score, bad=0)
            return
        trainer.early_stop["bad"] += 1
        if trainer.early_stop["bad"] >= self.patience:
            trainer.stop_reason = (
                f"early stop: val {trainer.task.metric} has not improved by more than "
                f"{self.min_delta:g} for {self.patience} evaluations (best {best:.4f})"
            )


def default_callbacks(trainer: Trainer) -> list[Callback]:
    """What the run's config asks for; rank 0 alone logs and shows progress."""
    tc = trainer.run.trainer
    out: list[Callback] = []
    if trainer.dist.is_main:
        out.append(MetricsLogger(parse_loggers(tc.loggers)))
        if tc.progress:
            out.append(ProgressBar())
    if tc.early_stop_patience:
        out.append(EarlyStopping(tc.early_stop_patience, tc.early_stop_min_delta))
    return out
