"""The Task contract: a task owns its data, its loss and its metrics; the trainer owns the loop.

A new kind of problem (language modelling, forecasting, detection, ...) subclasses :class:`Task`, registers
itself with ``TASKS.add(name, cls, cls.Config)`` and gets the trainer, checkpoints, CLI and tour for free.

Most tasks define only ``training_loss`` and ``evaluate``. Two hooks, as in Keras and Lightning, cover runs
that are more than one loss and one optimizer: ``configure_optimizers(model, run)`` returns the optimizers
(default: one, built from ``run.optimizer``) and ``train_step(trainer, index)`` makes one training step with
them (default: ``grad_accum`` micro-batches of ``training_loss``, backward, clip, step). A GAN overrides both;
it still gets resume, EMA, clipping, precision, checkpoints and the CLI from the one trainer. A task may also
own config sections (``sections = {"gan": GANOptions}``): ``--gan.loss hinge`` is validated against the
dataclass and the values are saved in the run's config; the task reads them as ``self.gan``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from neuratlas.config import build_config
from neuratlas.errors import NeuratlasError
from neuratlas.registry import Registry

if TYPE_CHECKING:  # the trainer sits above tasks: named for type hints only
    from neuratlas.training.trainer import Trainer

TASKS: Registry = Registry("task")


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s weights are (``neuratlas predict --device`` moved them there): a task's ``predict``
    builds its inputs on the CPU and sends them here."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class Task:
    Config: ClassVar[type]
    metric: ClassVar[str] = "loss"  # the headline held-out metric (tour tables, best checkpoint)
    higher_is_better: ClassVar[bool] = False
    test_is_val: ClassVar[bool] = False  # one held-out split serves as both (the trainer scores it once)
    batch_size: int = 0  # samples per training micro-batch (for throughput figures)
    device: torch.device = torch.device("cpu")  # set by the trainer
    memory_format: torch.memory_format = torch.contiguous_format  # channels_last when the trainer asks
    sections: ClassVar[dict[str, type]] = {}  # config sections this task owns: name -> dataclass
    predicts_without_inputs: ClassVar[bool] = False  # `predict` may be given no INPUTS (a forecast, samples)

    @dataclass
    class PredictOptions:
        """The options of ``neuratlas predict`` on this task's checkpoints (each task declares its own: they are
        typed, listed in ``--help`` and checked like every other option)."""

    def __init__(
        self, cfg: Any, data_spec: dict[str, Any], seed: int = 0, sections: dict[str, dict[str, Any]] | None = None
    ) -> None:
        self.cfg, self.data_spec, self.seed = cfg, data_spec, seed
        for name, cls in self.sections.items():  # validated before any data is loaded
            setattr(self, name, build_config(cls, dict((sections or {}).get(name, {})), where=name))

    # --- what the trainer calls -------------------------------------------------------------------
    def model_defaults(self) -> dict[str, Any]:
        """Options the data implies (num_classes, in_chans, vocab_size, ...); applied where the model has them
        and the recipe did not set them."""
        return {}

    # Tasks whose training data is a TensorBatches set ``self.train_batches`` and inherit the two below.
    train_batches: Any = None

    @property
    def steps_per_epoch(self) -> int:
        if self.train_batches is None:
            raise NotImplementedError(f"{type(self).__name__} must define steps_per_epoch")
        return len(self.train_batches)

    def train_batch(self, index: int) -> Any:
        """The ``index``-th training (micro-)batch; must depend only on (seed, index) for exact resume."""
        if self.train_batches is None:
            raise NotImplementedError(f"{type(self).__name__} must define train_batch")
        return self.train_batches.get(index)

    def training_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def configure_optimizers(self, model: nn.Module, run: Any) -> list[torch.optim.Optimizer]:
        """The optimizers ``train_step`` uses, in a fixed order (checkpoints store their states in it).
        ``run`` is the run's config with the parameter groups that transfer learning derived already in
        ``run.optimizer``; each optimizer gets its own copy of ``run.schedule``."""
        from neuratlas.optim import build_optimizer

        return [build_optimizer(model, run.optimizer)]

    def train_step(self, trainer: Trainer, index: int) -> dict[str, float]:
        """One optimizer step (the ``index``-th): ``grad_accum`` micro-batches, each ``training_loss`` →
        backward; then clip and step. Returns the values to log. The trainer then updates the weight average
        and the schedules and counts the step."""
        accum = trainer.run.trainer.grad_accum
        logs: dict[str, float] = {"loss": 0.0}
        for micro in range(accum):
            batch = trainer.dist.shard(self.train_batch(index * accum + micro))
            with trainer.autocast():
                loss, extra = self.training_loss(trainer.train_model, batch)
            trainer.backward(loss / accum, f"micro-batch {micro}")
            logs["loss"] += loss.item() / accum
            for k, v in extra.items():
                logs[k] = logs.get(k, 0.0) + v / accum
        logs.update(trainer.optimizer_step(trainer.optimizers[0], trainer.model.parameters()))
        return logs

    def evaluate(self, model: nn.Module, split: str, autocast: AbstractContextManager) -> dict[str, float]:
        """Metrics on ``split`` ("val" or "test"), the headline metric under ``self.metric``. The trainer
        calls it with the model in eval mode and gradients off; a task that trains something while
        evaluating (a linear probe) turns them on itself with ``torch.enable_grad()``."""
        raise NotImplementedError

    def setup(self, trainer: Trainer) -> None:
        """Called once the trainer has built the model, its optimizers and device (for training, ``eval``
        and ``predict`` alike): what a task needs from the trainer beyond a model (a judge network that
        scores samples, trained once with ``type(trainer)``) is made here."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Called when training starts (after a resume has restored its state), before the first step."""

    def on_fit_end(self, trainer: Trainer, result: Any) -> None:
        """Called once training has finished and the test split is scored (e.g. to draw a picture)."""

    def checkpoint_extra(self) -> dict[str, Any]:
        """JSON-serialisable facts needed to use a checkpoint without the training data (class names, ...)."""
        return {}

    def describe_data(self) -> str:
        return self.data_spec.get("name", "")

    def example_inputs(self, folder: Path) -> tuple[list[str], dict[str, str]]:
        """Inputs a user could give ``predict`` (files written into ``folder``, or text), made from held-out
        data, and the predict options they need: what ``neuratlas predict`` is checked with on every recipe."""
        raise NotImplementedError(f"{type(self).__name__} has no example inputs")

    # --- what the CLI calls on a loaded checkpoint ---------------------------------------------------
    @classmethod
    def predict_on_data(cls, extra: dict[str, Any], trained_on: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint's facts for predicting on other data named by ``--data.*`` options (a forecaster: a
        series it never saw); tasks that cannot refuse it."""
        raise NeuratlasError(f"{cls.__name__} checkpoints predict on their inputs; --data.* options do not apply")

    @classmethod
    def predict(
        cls, model: nn.Module, extra: dict[str, Any], inputs: list[str], out_dir: str, options: PredictOptions
    ) -> list[str]:
        """Run the model on user inputs (files or text) and return lines to print."""
        raise NotImplementedError(f"`predict` is not available for {cls.__name__}")


def task_class(spec: dict[str, Any]) -> type[Task]:
    return TASKS.get(spec["name"]).builder


def build_task(
    spec: dict[str, Any], data_spec: dict[str, Any], seed: int, sections: dict[str, dict[str, Any]] | None = None
) -> Task:
    spec = dict(spec)
    entry = TASKS.get(spec.pop("name"))
    cls = entry.builder
    unclaimed = sorted(set(sections or {}) - set(cls.sections))
    if unclaimed:
        owned = ", ".join(cls.sections) or "none"
        raise NeuratlasError(f"the {entry.name!r} task has no --{unclaimed[0]}.* options (its own sections: {owned})")
    # tasks that own no section keep the three-argument constructor
    return cls(entry.config(**spec), data_spec, seed, *((sections,) if cls.sections else ()))


@torch.no_grad()
def gather_predictions(model: nn.Module, batches, autocast: AbstractContextManager, prepare) -> tuple:
    """Run ``model`` over (inputs, targets) batches, returning concatenated float32 outputs and targets."""
    was_training = model.training
    model.eval()
    outs, targets = [], []
    for x, y in batches:
        with autocast:
            out = model(prepare(x))
        outs.append(out.float())
        targets.append(y)
    model.train(was_training)
    if not outs:
        raise NeuratlasError(
            "nothing to evaluate: the split is empty (e.g. --data.val_size 0); give it one sample or more"
        )
    return torch.cat(outs), torch.cat(targets)


def write_image(image: torch.Tensor, path: Path) -> str:
    """A uint8 (C, H, W) image as a PNG file (grey or RGB) that ``predict`` reads back."""
    from PIL import Image

    arr = image.permute(1, 2, 0).cpu().numpy()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)
    return str(path)


def describe_splits(name: str, data: Any) -> str:
    """``name (train/val/test)`` sample counts of a data set with ``train``/``val``/``test`` tensor tuples, or
    the data set's own one-line ``summary`` (a user's files: where, classes, splits, sizes, skipped files)."""
    if getattr(data, "summary", ""):
        return data.summary
    n = [len(split[0]) for split in (data.train, data.val, data.test)]
    return f"{name} ({n[0]:,}/{n[1]:,}/{n[2]:,})"
