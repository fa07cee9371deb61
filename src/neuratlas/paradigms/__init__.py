"""Ways of training beyond one process on one data set: federated rounds (``paradigms/federated``) and, through
the trainer, data-parallel runs. :func:`fit` is the one entry point every command uses for a run config: the
trainer, or the paradigm that the run's sections name.
"""

from __future__ import annotations

from pathlib import Path

from neuratlas.training.config import RunConfig
from neuratlas.training.trainer import FitResult, Trainer

PARADIGM_SECTIONS = ("federated",)  # sections that make a run something other than one Trainer.fit


def fit(run: RunConfig, resume: str | Path | None = None, announce: bool = True) -> FitResult:
    """Train ``run`` to the end (from ``resume`` when given) and return its summary."""
    if "federated" in run.sections:
        from neuratlas.paradigms.federated import fit_federated

        return fit_federated(run, resume=resume, announce=announce)
    trainer = Trainer(run)
    if announce and trainer.dist.is_main:
        how = f"{str(trainer.dtype).removeprefix('torch.')} autocast" if trainer.dtype else "fp32"
        if trainer.dist.enabled:
            how += f", {trainer.strategy} × {trainer.dist.world} processes"
        print(
            f"training {run.model['name']} on {trainer.task.describe_data()} for {trainer.total_steps} steps "
            f"({trainer.device}, {how}) → {trainer.run_dir}",
            flush=True,
        )
    return trainer.fit(resume=resume)
