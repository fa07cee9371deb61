"""The Task contract: a task owns its data, its loss and its metrics; the trainer owns the loop.

A new kind of problem (language modelling, forecasting, detection, ...) subclasses :class:`Task`, registers
itself with ``TASKS.add(name, cls, cls.Config)`` and gets the trainer, checkpoints, CLI and tour for free.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, ClassVar

import torch
from torch import nn

from neuratlas.registry import Registry

TASKS: Registry = Registry("task")


class Task:
    Config: ClassVar[type]
    metric: ClassVar[str] = "loss"  # the headline held-out metric (tour tables, best checkpoint)
    higher_is_better: ClassVar[bool] = False
    test_is_val: ClassVar[bool] = False  # one held-out split serves as both (the trainer scores it once)
    batch_size: int = 0  # samples per training micro-batch (for throughput figures)
    device: torch.device = torch.device("cpu")  # set by the trainer
    memory_format: torch.memory_format = torch.contiguous_format  # channels_last when the trainer asks

    def __init__(self, cfg: Any, data_spec: dict[str, Any], seed: int = 0) -> None:
        self.cfg, self.data_spec, self.seed = cfg, data_spec, seed

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

    def evaluate(self, model: nn.Module, split: str, autocast: AbstractContextManager) -> dict[str, float]:
        """Metrics on ``split`` ("val" or "test"), the headline metric under ``self.metric``."""
        raise NotImplementedError

    def checkpoint_extra(self) -> dict[str, Any]:
        """JSON-serialisable facts needed to use a checkpoint without the training data (class names, ...)."""
        return {}

    def describe_data(self) -> str:
        return self.data_spec.get("name", "")

    # --- what the CLI calls on a loaded checkpoint ---------------------------------------------------
    @classmethod
    def predict(cls, model: nn.Module, extra: dict[str, Any], inputs: list[str], out_dir: str,
                options: dict[str, str]) -> list[str]:
        """Run the model on user inputs (files or text) and return lines to print."""
        raise NotImplementedError(f"`predict` is not available for {cls.__name__}")


def build_task(spec: dict[str, Any], data_spec: dict[str, Any], seed: int) -> Task:
    spec = dict(spec)
    entry = TASKS.get(spec.pop("name"))
    return entry.builder(entry.config(**spec), data_spec, seed)


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
    return torch.cat(outs), torch.cat(targets)


def describe_splits(name: str, data: Any) -> str:
    """``name (train/val/test)`` sample counts of a data set with ``train``/``val``/``test`` tensor tuples, or
    the data set's own one-line ``summary`` (a user's files: where, classes, splits, sizes, skipped files)."""
    if getattr(data, "summary", ""):
        return data.summary
    n = [len(split[0]) for split in (data.train, data.val, data.test)]
    return f"{name} ({n[0]:,}/{n[1]:,}/{n[2]:,})"
