"""The configuration of one training run; a recipe is a named RunConfig.

``model``, ``data`` and ``task`` are named specs (``{"name": ..., **options}``) validated by their
registries; the other sections are fixed dataclasses. Every value can be overridden from the command line
as ``--section.key value``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from neuratlas.config import build_config, check_range, coerce, field_types, to_dict, unknown_key_error
from neuratlas.errors import NeuratlasError
from neuratlas.optim import OptimizerConfig, ScheduleConfig
from neuratlas.training.rundir import check_run_name


@dataclass
class TrainerConfig:
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    grad_accum: int = 1
    grad_clip: float | None = None  # max global grad norm
    # auto: bf16 autocast where the CPU/GPU has native bf16, fp16 (with a gradient scaler) on older GPUs
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
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
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    # several processes (torchrun): auto = ddp; fsdp shards parameters, gradients and optimizer state
    strategy: Literal["auto", "single", "ddp", "fsdp"] = "auto"
    activation_checkpointing: bool = False  # recompute each block's activations in backward (less memory)
    dist_timeout: float = 600.0  # seconds a collective waits for a lost process before the job fails
    out_dir: str = "runs"
    run_name: str | None = None
    progress: bool = True
    # where metrics go, by name: csv (metrics.csv, always kept), tensorboard, wandb (offline unless set up),
    # mlflow (a local folder in the run)
    loggers: str = "csv,tensorboard"
    early_stop_patience: int = 0  # > 0: stop after this many evaluations without a better val headline metric
    early_stop_min_delta: float = 0.0  # what counts as better
    num_threads: int | None = None
    ema_decay: float = 0.0  # > 0: evaluate and save a moving average of the weights (training/ema.py)
    keep_freed_memory: bool = True  # CPU: glibc keeps freed tensors for reuse (precision.keep_freed_memory)
    overwrite: bool = False  # replace an existing run folder of the same name (otherwise refused)

    def __post_init__(self) -> None:
        check_range("epochs", self.epochs, 0, lo_open=True)
        check_range("max_steps", self.max_steps, 1, optional=True)
        check_range("grad_accum", self.grad_accum, 1, 1 << 20)
        check_range("grad_clip", self.grad_clip, 0, lo_open=True, optional=True)
        check_range("seed", self.seed, 0, 2**63 - 1)
        for name in ("eval_every", "save_every"):
            check_range(name, getattr(self, name), 1, optional=True)
        check_range("log_every", self.log_every, 1)
        check_range("time_limit", self.time_limit, 0, lo_open=True, optional=True)
        check_range("early_stop_patience", self.early_stop_patience, 0)
        check_range("early_stop_min_delta", self.early_stop_min_delta, 0)
        check_range("num_threads", self.num_threads, 1, 4096, optional=True)
        check_range("ema_decay", self.ema_decay, 0, 1, hi_open=True)
        if self.run_name is not None:
            check_run_name(self.run_name)
        if not self.out_dir.strip():
            raise ValueError("out_dir must name a folder")


@dataclass
class TransferConfig:
    """How a run starts from trained weights (``--transfer.KEY``); the default starts from scratch. The model
    set-up and the optimizer's parameter groups follow from it (``training/transfer.py``), so every optimizer
    and trainer option applies to a fine-tune as to any run."""

    checkpoint: str = ""  # a Neuratlas checkpoint / run folder, "imagenet-lite0", or "" (from scratch)
    freeze: str = ""  # comma-separated globs of parameter names kept frozen, e.g. "stem.*,stages.0.*"
    lr_decay: float = 1.0  # discriminative lrs: each layer group below the head gets lr × lr_decay^depth
    unfreeze_every: int = 0  # gradual unfreezing: thaw one more group from the top every N steps (0: off)
    lora_rank: int = 0  # > 0: LoRA adapters on the linear layers matching lora_targets; the rest frozen
    lora_alpha: float = 16.0
    lora_targets: str = "*"  # comma-separated globs of linear-layer names
    train_head: bool = True  # keep the classifier trainable whatever was frozen

    def __post_init__(self) -> None:
        check_range("lr_decay", self.lr_decay, 0, 1, lo_open=True)
        check_range("unfreeze_every", self.unfreeze_every, 0)
        check_range("lora_rank", self.lora_rank, 0, 1 << 16)
        check_range("lora_alpha", self.lora_alpha, 0, lo_open=True)

    @property
    def active(self) -> bool:
        return bool(self.checkpoint or self.freeze or self.lr_decay != 1 or self.unfreeze_every or self.lora_rank)


FIXED_SECTIONS = ("model", "data", "task", "optimizer", "schedule", "trainer", "transfer")


@dataclass
class RunConfig:
    """One run. Besides the fixed sections, a task or a training paradigm may own sections of its own
    (``gan`` for GANs, ``federated`` for federated rounds): they are kept in ``sections`` as written, saved at
    the top level of the run's config beside the others, and validated by their owner before any work starts
    (the same way the named ``model`` / ``data`` / ``task`` specs are validated by their registries)."""

    model: dict[str, Any]
    data: dict[str, Any]
    task: dict[str, Any] = field(default_factory=lambda: {"name": "classification"})
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for section in ("model", "data", "task"):
            spec = getattr(self, section)
            if not isinstance(spec, dict) or "name" not in spec:
                raise ValueError(f"{section} must be a mapping with a 'name'")
        for name, values in self.sections.items():
            if name in FIXED_SECTIONS or not isinstance(values, dict):
                raise ValueError(f"section {name!r} must be a mapping of options")

    def to_dict(self) -> dict[str, Any]:
        d = to_dict(self)
        d.update(d.pop("sections"))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        if not isinstance(d, dict):
            raise NeuratlasError(f"a run config must be a mapping, got {type(d).__name__}")
        d = _renamed(d)
        fixed = {k: v for k, v in d.items() if k in FIXED_SECTIONS}
        sections = {k: v for k, v in d.items() if k not in FIXED_SECTIONS and k != "sections"}
        return build_config(cls, {**fixed, "sections": {**d.get("sections", {}), **sections}}, where="recipe")

    def section(self, name: str, cls: type) -> Any:
        """The task- or paradigm-owned section ``name`` validated as dataclass ``cls``."""
        return build_config(cls, dict(self.sections.get(name, {})), where=name)

    def override(self, overrides: dict[str, str], owned: tuple[str, ...] = ()) -> RunConfig:
        """Apply ``{"optimizer.lr": "3e-4", "model.depth": "50"}``. Named specs and the sections in
        ``sections`` are validated by their owners; a section that is neither fixed, present nor ``owned``
        (the sections the run's task declares) is refused here."""
        d = self.to_dict()
        types_ = field_types(RunConfig)
        known = [*FIXED_SECTIONS, *self.sections, *owned]
        for key, value in overrides.items():
            if key == "trainer.tensorboard":  # the old switch, still written by scripts
                key, value = "trainer.loggers", _loggers_with_tensorboard(d["trainer"].get("loggers", ""), value)
            section, _, name = key.partition(".")
            if section not in known or not name:
                raise NeuratlasError(
                    f"override --{key}: unknown section {section!r}; sections are {', '.join(dict.fromkeys(known))}"
                )
            if section in FIXED_SECTIONS and section not in ("model", "data", "task"):
                cls = types_[section]
                types = field_types(cls)
                if name not in types:
                    raise unknown_key_error(name, list(types), section)
                d[section][name] = coerce(value, types[name], f"--{key}")
            else:  # type-checked against the registered / owned config when built
                d.setdefault(section, {})[name] = value
        return RunConfig.from_dict(d)


def _loggers_with_tensorboard(loggers: str, on: Any) -> str:
    names = [n for n in loggers.split(",") if n and n != "tensorboard"]
    return ",".join(names + (["tensorboard"] if coerce(on, bool, "--trainer.tensorboard") else []))


def _renamed(d: dict[str, Any]) -> dict[str, Any]:
    """Options renamed since a run config was saved (checkpoints keep theirs), under their current names."""
    trainer = d.get("trainer")
    if isinstance(trainer, dict) and "tensorboard" in trainer:
        trainer = dict(trainer)
        on = trainer.pop("tensorboard")
        trainer["loggers"] = _loggers_with_tensorboard(trainer.get("loggers", "csv,tensorboard"), on)
        d = {**d, "trainer": trainer}
    return d
