"""list, train, eval, predict."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from neuratlas.config import parse_overrides


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list models, recipes, data sets and tasks (optionally matching a glob)")
    p.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'resnet*' or '*fashion*'")
    p.add_argument("--kind", choices=["models", "recipes", "datasets", "tasks", "all"], default="all")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("train", help="train a recipe; any config value can be overridden",
                       description="Train RECIPE. Override any value with --section.key value, e.g. "
                       "--optimizer.lr 3e-4 --model.depth 50 --trainer.epochs 5. `neuratlas train RECIPE "
                       "--help` prints the recipe's full config.", add_help=False)
    p.add_argument("recipe", nargs="?")
    p.add_argument("--resume", metavar="RUN_OR_CHECKPOINT", help="continue an interrupted run exactly")
    p.add_argument("-h", "--help", action="store_true")
    p.set_defaults(func=cmd_train, accepts_overrides=True, _parser=p)

    p = sub.add_parser("eval", help="evaluate a checkpoint on its validation and test data",
                       description="Evaluate CHECKPOINT with the run's own data and task settings; "
                       "--task.key value / --data.key value change how it is evaluated (e.g. --task.tta true).")
    p.add_argument("checkpoint", help="a run folder or a .safetensors checkpoint")
    p.add_argument("--split", action="append", choices=["val", "test", "train"])
    p.set_defaults(func=cmd_eval, accepts_overrides=True)

    p = sub.add_parser("predict", help="run a checkpoint on inputs (image files, text, ...)",
                       description="Run CHECKPOINT on INPUTs. Task-specific options are passed as "
                       "--key value (e.g. --invert true for white-background images).")
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", default="predictions", help="folder for pictures the task writes")
    p.set_defaults(func=cmd_predict, accepts_overrides=True)


def cmd_list(args: argparse.Namespace, extra: list[str]) -> int:
    from neuratlas.data import DATASETS
    from neuratlas.models import MODELS
    from neuratlas.recipes import RECIPES, get_recipe
    from neuratlas.tasks import TASKS

    kinds = {"models": MODELS, "recipes": RECIPES, "datasets": DATASETS, "tasks": TASKS}
    for kind, reg in kinds.items():
        if args.kind not in (kind, "all"):
            continue
        names = reg.names(args.pattern)
        print(f"{kind} ({len(names)}):")
        for n in names:
            entry = reg.get(n)
            tag = f"[{entry.family}] " if entry.family else ""
            target = f"  → {get_recipe(n).target}" if kind == "recipes" and get_recipe(n).target else ""
            print(f"  {n:32s} {tag}{entry.description}{target}")
    return 0


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from neuratlas.errors import NeuratlasError
    from neuratlas.models.checkpoint import read_checkpoint
    from neuratlas.paradigms import fit
    from neuratlas.recipes import get_recipe
    from neuratlas.tasks.base import task_class
    from neuratlas.training.config import RunConfig

    if args.help and not args.recipe:
        args._parser.print_help()
        return 0
    overrides = parse_overrides(extra)
    if args.resume:
        run = RunConfig.from_dict(read_checkpoint(args.resume, prefer="last").run_config)
        run = run.override(overrides, tuple(task_class(run.task).sections)) if overrides else run
    elif args.recipe:
        recipe = get_recipe(args.recipe)
        run = recipe.run_config(overrides)
        if args.help:
            print(f"{recipe.name}: {recipe.description}\n  target: {recipe.target or '-'}\n"
                  "Config (override any value with --section.key value):")
            for section, values in run.to_dict().items():
                for k, v in values.items():
                    print(f"  --{section}.{k} {json.dumps(v)}")
            return 0
    else:
        raise NeuratlasError("train needs a RECIPE (see `neuratlas list --kind recipes`) or --resume RUN")
    result = fit(run, resume=args.resume)
    metric = result.metric
    print(f"done in {result.train_seconds:.1f}s ({result.samples_per_second:,.0f} samples/s), "
          f"{result.steps} steps")
    print(f"  val  {metric}: {result.val.get(metric, float('nan')):.4f}")
    print(f"  test {metric}: {result.test.get(metric, float('nan')):.4f}")
    if result.stopped_early:
        print(f"  stopped early: {result.stopped_early}")
    for note in result.notes:
        print(f"  {note}")
    print(f"  checkpoints: {result.run_dir / 'checkpoints'}  curves: {result.run_dir / 'curves.png'}")
    return 0


def cmd_eval(args: argparse.Namespace, extra: list[str]) -> int:
    from neuratlas.errors import NeuratlasError
    from neuratlas.models.checkpoint import read_checkpoint
    from neuratlas.training.config import RunConfig
    from neuratlas.training.trainer import Trainer

    ckpt = read_checkpoint(args.checkpoint)
    run = RunConfig.from_dict(ckpt.run_config)
    overrides = parse_overrides(extra)
    if any(not k.startswith(("task.", "data.", "trainer.")) for k in overrides):
        raise NeuratlasError("eval takes --task.*, --data.* and --trainer.* overrides only (the model is the "
                             f"checkpoint's); got {', '.join(sorted(overrides))}")
    run = run.override(overrides) if overrides else run
    trainer = Trainer(run, model=ckpt.build_model())
    trainer.step = ckpt.step  # what the task writes while evaluating (a GAN's picture) is of that step and run
    if ckpt.path.parent.name == "checkpoints":
        trainer.run_dir, trainer.ckpt_dir = ckpt.path.parent.parent, ckpt.path.parent
    print(f"{ckpt.path} ({ckpt.model_name}, step {ckpt.step}) on {trainer.task.describe_data()}")
    for split in args.split or ["val", "test"]:
        metrics = trainer.evaluate(split)
        print(f"  {split:5s} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0


def cmd_predict(args: argparse.Namespace, extra: list[str]) -> int:
    from neuratlas.models.checkpoint import read_checkpoint
    from neuratlas.tasks import TASKS

    ckpt = read_checkpoint(args.checkpoint)
    options = {k.lstrip("-"): v for k, v in _pairs(extra).items()}
    task_cls = TASKS.get(ckpt.extra.get("task", ckpt.run_config["task"]["name"])).builder
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for line in task_cls.predict(ckpt.build_model(), ckpt.extra, args.inputs, args.out, options):
        print(line)
    return 0


def _pairs(extra: list[str]) -> dict[str, str]:
    out, i = {}, 0
    while i < len(extra):
        key = extra[i]
        if i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            out[key], i = extra[i + 1], i + 2
        else:
            out[key], i = "true", i + 1
    return out
