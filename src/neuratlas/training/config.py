"""The configuration of one training run; a recipe is a named RunConfig.

``model``, ``data`` and ``task`` are named specs (``{"name": ..., **options}``) validated by their
registries; the other sections are fixed dataclasses. Every value can be overridden from the command line
as ``--section.key value``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from neuratlas.config import build_config, coerce, field_types, to_dict, unknown_key_error
from neuratlas.errors import NeuratlasError
from neuratlas.optim import OptimizerConfig, ScheduleConfig


@dataclass
class TrainerConfig:
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    grad_accum: int = 1
    grad_clip: float | None = None  # max global grad norm
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast where the CPU/GPU has native bf16
    compile: bool = False  # torch.compile the model for training
    channels_last: bool = False
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms
    eval_every: int | None = None  # steps; default once per epoch (and at the end)
    save_every: int | None = None  # steps; checkpoints are also written at every evaluation
    log_every: int = 25
    time_limit: float | None = None  # seconds of training; stops cleanly (and checkpoints) when reached
    # With time_limit: the lr schedule advances with elapsed time instead of steps, so a wall-clock budget
    # ends at the schedule's end, and training goes on until the budget is spent however fast the machine
    # (max_steps/epochs then only set the schedule's grid: warmup_steps of max_steps is that fraction of
    # the budget). Resume is then not bit-exact, being time-dependent.
    budget_schedule: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out_dir: str = "runs"
    run_name: str | None = None
    progress: bool = True
    tensorboard: bool = True  # when the tensorboard package is installed
    num_threads: int | None = None
    ema_decay: float = 0.0  # > 0: evaluate and save a moving average of the weights (training/ema.py)
    keep_freed_memory: bool = True  # CPU: glibc keeps freed tensors for reuse (precision.keep_freed_memory)


@dataclass
class RunConfig:
    model: dict[str, Any]
    data: dict[str, Any]
    task: dict[str, Any] = field(default_factory=lambda: {"name": "classification"})
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        for section in ("model", "data", "task"):
            spec = getattr(self, section)
            if not isinstance(spec, dict) or "name" not in spec:
                raise ValueError(f"{section} must be a mapping with a 'name'")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return build_config(cls, d, where="recipe")

    def override(self, overrides: dict[str, str]) -> RunConfig:
        """Apply ``{"optimizer.lr": "3e-4", "model.depth": "50"}``; named specs are validated later."""
        d = self.to_dict()
        sections = list(field_types(RunConfig))
        for key, value in overrides.items():
            section, _, name = key.partition(".")
            if section not in sections or not name:
                raise NeuratlasError(f"override --{key}: unknown section {section!r}; sections are "
                                     f"{', '.join(sections)}")
            if section in ("model", "data", "task"):
                d[section][name] = value  # type-checked against the registered config when built
            else:
                cls = field_types(RunConfig)[section]
                types = field_types(cls)
                if name not in types:
                    raise unknown_key_error(name, list(types), section)
                d[section][name] = coerce(value, types[name], f"--{key}")
        return RunConfig.from_dict(d)
