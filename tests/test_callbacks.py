"""The trainer's callback protocol, early stopping and the loggers chosen by name."""

from __future__ import annotations

import csv
import importlib.util

import pytest

from neuratlas.errors import NeuratlasError
from neuratlas.recipes import get_recipe
from neuratlas.training.callbacks import Callback
from neuratlas.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp_run(tmp_path, **trainer):
    over = {
        "trainer.out_dir": str(tmp_path),
        "trainer.run_name": "run",
        "trainer.progress": "false",
        "trainer.loggers": "csv",
        "data.limit_train": "512",
        "data.val_size": "256",
        "trainer.max_steps": "6",
        "trainer.eval_every": "2",
        **{f"trainer.{k}": str(v) for k, v in trainer.items()},
    }
    return get_recipe("mlp-digits").run_config(over)


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_fit_start(self, trainer):
        self.calls.append("start")

    def on_step(self, trainer, logs):
        assert "loss" in logs and "lr" in logs
        self.calls.append(f"step{trainer.step}")

    def on_eval(self, trainer, split, metrics):
        assert trainer.task.metric in metrics
        self.calls.append(f"eval-{split}@{trainer.step}")

    def on_save(self, trainer, tag, path):
        assert path.is_file()
        self.calls.append(f"save-{tag}@{trainer.step}")

    def on_fit_end(self, trainer, result):
        self.calls.append(f"end@{result.steps}")


def test_callbacks_see_every_step_evaluation_and_save_in_order(tmp_path):
    rec = Recorder()
    Trainer(mlp_run(tmp_path, max_steps=4), callbacks=[rec]).fit()
    assert rec.calls[0] == "start" and rec.calls[-1] == "end@4"
    assert rec.calls[1:3] == ["step1", "step2"]
    i = rec.calls.index("eval-val@2")
    assert "save-last@2" in rec.calls[i : i + 3] and "save-best@2" in rec.calls
    assert rec.calls[-2] == "eval-test@4"


def test_early_stopping_ends_a_run_that_stopped_improving_and_resumes_to_the_same_stop(tmp_path):
    # lr 0: the validation metric never moves, so after `patience` evaluations without improvement it stops
    run = mlp_run(tmp_path, max_steps=40, early_stop_patience=2)
    run = run.override({"optimizer.lr": "0"})
    result = Trainer(run).fit()
    assert result.steps == 6 and "early stop" in result.stopped_early  # evals at 2 (best), 4, 6 (2 bad)
    # resumed from its step-4 checkpoint, a run with the same settings stops at the same step
    crashed = mlp_run(tmp_path / "b", max_steps=40, early_stop_patience=2, save_every=1).override({"optimizer.lr": "0"})
    with pytest.raises(KeyboardInterrupt):
        Trainer(crashed).fit(crash_at=5)
    assert Trainer(crashed).fit(resume=tmp_path / "b" / "run").steps == 6


def test_csv_log_survives_resume_and_unknown_loggers_are_refused(tmp_path):
    run = mlp_run(tmp_path, save_every=1)
    with pytest.raises(KeyboardInterrupt):
        Trainer(run).fit(crash_at=4)
    Trainer(run).fit(resume=tmp_path / "run")
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    val_steps = [int(r["step"]) for r in rows if r["split"] == "val" and r["name"] == "accuracy"]
    assert val_steps == [2, 4, 6]
    with pytest.raises(NeuratlasError, match="unknown logger 'neptune'"):
        Trainer(mlp_run(tmp_path / "c", loggers="csv,neptune"))


def test_old_tensorboard_switch_maps_to_loggers():
    run = get_recipe("mlp-digits").run_config({"trainer.tensorboard": "false"})
    assert run.trainer.loggers == "csv"
    from neuratlas.training.config import RunConfig

    old = RunConfig.from_dict({**get_recipe("mlp-digits").config, "trainer": {"tensorboard": True}})
    assert "tensorboard" in old.trainer.loggers


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="pip install mlflow-skinny")
def test_mlflow_logs_to_a_local_folder(tmp_path):
    Trainer(mlp_run(tmp_path, loggers="csv,mlflow", max_steps=2)).fit()
    (logged,) = (tmp_path / "run" / "mlruns").rglob("metrics/val_accuracy")
    assert logged.read_text().split()[1]  # "timestamp value step"


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="pip install wandb")
def test_wandb_logs_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    Trainer(mlp_run(tmp_path, loggers="csv,wandb", max_steps=2)).fit()
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
