"""list, train (finetune), eval, predict (forecast)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from neuratlas.cli.options import Parsed, command, device_option, positional
from neuratlas.errors import NeuratlasError

if TYPE_CHECKING:
    from neuratlas.training.config import RunConfig


@dataclass
class ListOptions:
    """List the registered models, recipes, data sets and tasks (those matching PATTERN)."""

    pattern: str = positional("a glob, e.g. 'resnet*' or '*fashion*'", default="*")
    kind: Literal["models", "recipes", "datasets", "tasks", "all"] = "all"


@dataclass
class TrainOptions:
    """Train RECIPE. Every value of its run config can be changed with --SECTION.KEY VALUE, e.g. --optimizer.lr
    3e-4 --model.depth 50 --trainer.epochs 5; `neuratlas train RECIPE --help` lists the recipe's config and the
    sections its task owns. Fine-tuning is the run's --transfer.* section (--transfer.checkpoint RUN|imagenet-lite0,
    --transfer.freeze 'stem.*', --transfer.lr_decay 0.5, --transfer.lora_rank 8); `finetune` is an alias."""

    recipe: str | None = positional("a registered recipe (`neuratlas list --kind recipes`)", default=None)
    resume: str | None = None  # a run folder or checkpoint: continue that interrupted run exactly


@dataclass
class EvalOptions:
    """Evaluate CHECKPOINT with the run's own data and task settings; --task.KEY, --data.KEY and --trainer.KEY
    change how it is evaluated (e.g. --task.tta true); the model is the checkpoint's."""

    checkpoint: str = positional("a run folder or a .safetensors checkpoint")
    split: list[Literal["val", "test", "train"]] = field(default_factory=lambda: ["val", "test"])
    # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps: where the model runs; the same as
    # --trainer.device (default: the run's own)
    device: str | None = None


@dataclass
class PredictArgs:
    """Run CHECKPOINT on INPUTS (image files, texts, words, forecast origins: whatever its task reads) and print
    what it predicts; pictures go to --out. Each task has options of its own, listed below (with a checkpoint
    given, those of its task). `forecast` is an alias: `neuratlas forecast RUN [ORIGIN] --horizon 24`."""

    checkpoint: str = positional("a run folder or a .safetensors checkpoint")
    inputs: list[str] = positional(
        "what the task reads (image files, texts, words, forecast origins)", default_factory=list
    )
    out: str = "predictions"  # folder for the pictures the task writes
    device: str = device_option()


def register(sub: argparse._SubParsersAction) -> None:
    command(
        sub,
        "list",
        ListOptions,
        cmd_list,
        help="list models, recipes, data sets and tasks (optionally matching a glob)",
    )
    command(
        sub,
        "train",
        TrainOptions,
        cmd_train,
        aliases=("finetune",),
        help="train a recipe; any config value can be overridden",
        sections=lambda o: run_sections(_base_run(o.recipe, o.resume) if o else None),
        help_extra=_recipe_help,
        resolved=_resolved_run,
    )
    command(
        sub,
        "eval",
        EvalOptions,
        cmd_eval,
        help="evaluate a checkpoint on its validation and test data",
        sections=_eval_sections,
    )
    command(
        sub,
        "predict",
        PredictArgs,
        cmd_predict,
        aliases=("forecast", "sample"),
        help="run a checkpoint on inputs (image files, text, forecast origins, a GAN's image count, ...)",
        plugin=lambda o: _checkpoint_task(o.checkpoint).PredictOptions,
        plugin_catalogue=_predict_catalogue,
        sections={"data": None},  # other data for tasks that read it (a forecaster: a series it never saw)
    )


# --- list ----------------------------------------------------------------------------------------------------
def cmd_list(opts: ListOptions, parsed: Parsed) -> int:
    from neuratlas.data import DATASETS
    from neuratlas.models import MODELS
    from neuratlas.recipes import RECIPES, get_recipe
    from neuratlas.tasks import TASKS

    kinds = {"models": MODELS, "recipes": RECIPES, "datasets": DATASETS, "tasks": TASKS}
    for kind, reg in kinds.items():
        if opts.kind not in (kind, "all"):
            continue
        names = reg.names(opts.pattern)
        print(f"{kind} ({len(names)}):")
        for n in names:
            entry = reg.get(n)
            tag = f"[{entry.family}] " if entry.family else ""
            target = f"  → {get_recipe(n).target}" if kind == "recipes" and get_recipe(n).target else ""
            also = f" (also: {', '.join(entry.aliases)})" if entry.aliases else ""
            print(f"  {n:32s} {tag}{entry.description}{also}{target}")
    return 0


# --- train ---------------------------------------------------------------------------------------------------
def _base_run(recipe: str | None, resume: str | None) -> RunConfig | None:
    """The run config that overrides apply to: the resumed run's, else the recipe's (None: neither given)."""
    from neuratlas.models.checkpoint import read_checkpoint
    from neuratlas.recipes import get_recipe
    from neuratlas.training.config import RunConfig

    if resume:
        return RunConfig.from_dict(read_checkpoint(resume, prefer="last").run_config)
    return get_recipe(recipe).run_config() if recipe else None


def run_sections(run: RunConfig | None) -> dict[str, type | None]:
    """The sections a run accepts: the fixed ones (dataclasses, checked here; ``model``/``data``/``task`` are
    named specs checked by their registries), those the run already has, and those its task owns."""
    from neuratlas.tasks.base import task_class
    from neuratlas.training.config import OptimizerConfig, ScheduleConfig, TrainerConfig, TransferConfig

    out: dict[str, type | None] = {
        "model": None,
        "data": None,
        "task": None,
        "optimizer": OptimizerConfig,
        "schedule": ScheduleConfig,
        "trainer": TrainerConfig,
        "transfer": TransferConfig,
    }
    if run is not None:
        out.update(dict.fromkeys(run.sections))
        out.update(task_class(run.task).sections)
        if "federated" in run.sections:  # a paradigm's section, typed like the task-owned ones
            from neuratlas.paradigms.federated.core import FederatedConfig

            out["federated"] = FederatedConfig
    return out


def _train_run(opts: TrainOptions, parsed: Parsed) -> RunConfig:
    from neuratlas.recipes import get_recipe
    from neuratlas.tasks.base import task_class

    overrides = parsed.overrides
    if opts.resume:
        run = _base_run(None, opts.resume)
        return run.override(overrides, tuple(task_class(run.task).sections)) if overrides else run
    if opts.recipe:
        return get_recipe(opts.recipe).run_config(overrides)
    raise NeuratlasError("train needs a RECIPE (see `neuratlas list --kind recipes`) or --resume RUN")


def _resolved_run(parsed: Parsed) -> dict[str, Any]:
    """--print-config of train: the whole run config, overrides applied (readable back with --config). The
    named specs keep the keys they were given (a model takes the rest from its data when it is built), typed."""
    from neuratlas.config import coerce, field_types
    from neuratlas.data import DATASETS
    from neuratlas.models import MODELS
    from neuratlas.tasks import TASKS

    opts = parsed.options
    run = _train_run(opts, parsed).to_dict()
    for section, registry in (("model", MODELS), ("data", DATASETS), ("task", TASKS)):
        cls = registry.get(run[section]["name"]).config_class
        types = field_types(cls) if cls is not None else {}
        run[section] = {
            k: coerce(v, types[k], f"--{section}.{k}") if k in types else v for k, v in run[section].items()
        }
    return {"recipe": opts.recipe, "resume": opts.resume, **run}


def _recipe_help(opts: TrainOptions) -> list[str]:
    from neuratlas.recipes import get_recipe

    if not opts.recipe:
        return []
    recipe = get_recipe(opts.recipe)
    lines = [
        f"{recipe.name}: {recipe.description}",
        f"  target: {recipe.target or '-'}",
        "Config (override any value with --section.key value):",
    ]
    for section, values in recipe.run_config().to_dict().items():
        lines += [f"  --{section}.{k} {json.dumps(v)}" for k, v in values.items()]
    return lines


def cmd_train(opts: TrainOptions, parsed: Parsed) -> int:
    from neuratlas.paradigms import fit

    run = _train_run(opts, parsed)
    result = fit(run, resume=opts.resume)
    if os.environ.get("RANK", "0") != "0":  # one of several processes (torchrun): rank 0 reports
        return 0
    metric = result.metric
    print(f"done in {result.train_seconds:.1f}s ({result.samples_per_second:,.0f} samples/s), {result.steps} steps")
    print(f"  val  {metric}: {result.val.get(metric, float('nan')):.4f}")
    print(f"  test {metric}: {result.test.get(metric, float('nan')):.4f}")
    peers = {k.removesuffix(f"_{metric}"): v for k, v in result.test.items() if k.endswith(f"_{metric}")}
    if peers:  # baselines scored on the same test data (forecasting: naive, seasonal naive, ETS, ARIMA)
        print(f"  baselines' test {metric}: " + ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in peers.items()))
    if result.stopped_early:
        print(f"  stopped early: {result.stopped_early}")
    for note in result.notes:
        print(f"  {note}")
    print(f"  checkpoints: {result.run_dir / 'checkpoints'}  curves: {result.run_dir / 'curves.png'}")
    return 0


# --- eval ----------------------------------------------------------------------------------------------------
def _eval_sections(opts: EvalOptions | None) -> dict[str, type | None]:
    """How a checkpoint may be evaluated differently: its task's and data's options, the trainer's (precision,
    device), and the sections its task owns; the model is the checkpoint's."""
    from neuratlas.training.config import TrainerConfig

    owned = _checkpoint_task(opts.checkpoint).sections if opts is not None else {}
    return {"task": None, "data": None, "trainer": TrainerConfig, **owned}


def cmd_eval(opts: EvalOptions, parsed: Parsed) -> int:
    from neuratlas.device import resolve_device
    from neuratlas.models.checkpoint import read_checkpoint
    from neuratlas.training.config import RunConfig
    from neuratlas.training.trainer import Trainer

    if opts.device is not None:
        resolve_device(opts.device, option="--device")  # a device this machine lacks: named as given
    ckpt = read_checkpoint(opts.checkpoint)
    run = RunConfig.from_dict(ckpt.run_config)
    owned = tuple(_checkpoint_task(opts.checkpoint).sections)
    overrides = parsed.overrides
    if opts.device is not None:
        given = overrides.setdefault("trainer.device", opts.device)
        if given != opts.device:
            raise NeuratlasError(f"neuratlas eval: --device {opts.device} and --trainer.device {given} disagree")
    run = run.override(overrides, owned) if overrides else run
    trainer = Trainer(run, model=ckpt.build_model())
    trainer.step = ckpt.step  # what the task writes while evaluating (a GAN's picture) is of that step and run
    if ckpt.path.parent.name == "checkpoints":
        trainer.run_dir, trainer.ckpt_dir = ckpt.path.parent.parent, ckpt.path.parent
    print(f"{ckpt.path} ({ckpt.model_name}, step {ckpt.step}) on {trainer.task.describe_data()}")
    for split in opts.split:
        metrics = trainer.evaluate(split)
        print(f"  {split:5s} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0


# --- predict -------------------------------------------------------------------------------------------------
def _checkpoint_task(path: str) -> type:
    """The task class of the checkpoint at ``path`` (its name as saved: an old spelling finds its alias)."""
    from neuratlas.models.checkpoint import read_checkpoint
    from neuratlas.tasks import TASKS

    ckpt = read_checkpoint(path)
    return TASKS.get(ckpt.task_name).builder


def _predict_catalogue() -> dict[str, type]:
    from neuratlas.tasks import TASKS

    return {f"the {entry.name} task": entry.builder.PredictOptions for entry in TASKS}


def cmd_predict(opts: PredictArgs, parsed: Parsed) -> int:
    from neuratlas.device import resolve_device
    from neuratlas.models.checkpoint import read_checkpoint
    from neuratlas.tasks.base import Task

    device = resolve_device(opts.device, option="--device")
    ckpt = read_checkpoint(opts.checkpoint)
    task_cls = _checkpoint_task(opts.checkpoint)
    if task_cls.predict.__func__ is Task.predict.__func__:
        raise NeuratlasError(f"{ckpt.path}: `predict` is not available for {task_cls.__name__} checkpoints")
    if not opts.inputs and not task_cls.predicts_without_inputs:
        raise NeuratlasError(
            f"neuratlas {parsed.command.name}: give INPUTS for the {task_cls.__name__} checkpoint to read (see --help)"
        )
    extra = ckpt.extra
    if parsed.sections.get("data"):
        extra = task_cls.predict_on_data(extra, ckpt.run_config.get("data", {}), parsed.sections["data"])
    model = ckpt.build_model().to(device)
    Path(opts.out).mkdir(parents=True, exist_ok=True)
    try:
        for line in task_cls.predict(model, extra, opts.inputs, opts.out, parsed.plugin):
            print(line)
    except KeyError as e:  # the task reads what its training wrote into the metadata: the file is data
        raise NeuratlasError(
            f"{ckpt.path}: damaged Neuratlas metadata (it lacks {e} that the {ckpt.task_name} task needs to predict)"
        ) from None
    return 0
