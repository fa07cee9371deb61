"""One trainer for every family: the loop fits on a screen; the Task supplies batches, loss and metrics.

Exact resume: batches are a pure function of (seed, step) and the state file carries optimizer, scheduler
and RNG states, so stopping at step k and resuming gives bit-identical weights to an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from neuratlas.device import autocast, keep_freed_memory, resolve_device, resolve_precision
from neuratlas.errors import NeuratlasError
from neuratlas.models import count_parameters, create_model
from neuratlas.models.checkpoint import load_state, read_checkpoint, save_state, save_weights
from neuratlas.models.registry import MODELS
from neuratlas.optim import build_optimizer, build_scheduler, lr_factor
from neuratlas.tasks import Task, build_task
from neuratlas.training.config import RunConfig
from neuratlas.training.distributed import NullLogger
from neuratlas.training.distributed import context as dist_context
from neuratlas.training.ema import WeightAverage
from neuratlas.training.logging import RunLogger, plot_curves
from neuratlas.weights import load_pretrained_weights


@dataclass
class FitResult:
    run_dir: Path
    steps: int
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    samples_per_second: float = 0.0
    parameters: int = 0
    stopped_early: str = ""


def model_for_task(run: RunConfig, task: Task) -> nn.Module:
    """Create the recipe's model, filling options the data implies (num_classes, ...) that it did not set."""
    spec = dict(run.model)
    name = spec.pop("name")
    fields = MODELS.get(name).config_class.__dataclass_fields__
    implied = {k: v for k, v in task.model_defaults().items() if k in fields and k not in spec}
    model = create_model(name, **implied, **spec)
    load_pretrained_weights(model)
    return model


class Trainer:
    def __init__(self, run: RunConfig, task: Task | None = None, model: nn.Module | None = None) -> None:
        self.run = run
        tc = run.trainer
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        torch.manual_seed(tc.seed)
        if tc.deterministic:
            torch.use_deterministic_algorithms(True)
        self.task = task or build_task(run.task, run.data, tc.seed)
        self.model = model or model_for_task(run, self.task)
        self.device = resolve_device(tc.device)
        self.dtype = resolve_precision(tc.precision, self.device)
        if tc.keep_freed_memory and self.device.type == "cpu":
            keep_freed_memory()
        self.model.to(self.device)
        self.task.device = self.device
        if tc.channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.task.memory_format = torch.channels_last
        self.ema = WeightAverage(self.model, tc.ema_decay) if tc.ema_decay else None
        self.train_model = torch.compile(self.model) if tc.compile else self.model
        self.dist = dist_context()  # under torchrun: DDP across WORLD_SIZE processes; otherwise a no-op
        self.train_model = self.dist.wrap(self.train_model, self.device)
        spe = self.task.steps_per_epoch // tc.grad_accum
        if spe < 1:
            raise NeuratlasError("the training set is smaller than one batch × grad_accum")
        self.total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * spe))
        self.eval_every = tc.eval_every or min(spe, self.total_steps)
        self.optimizer = build_optimizer(self.model, run.optimizer)
        self.scheduler = build_scheduler(self.optimizer, run.schedule, self.total_steps)
        self.step = 0
        self._t0 = time.perf_counter()
        self.best: float | None = None
        name = tc.run_name or f"{run.model['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.run_dir = Path(tc.out_dir) / name
        self.ckpt_dir = self.run_dir / "checkpoints"

    def autocast(self):
        return autocast(self.device, self.dtype)

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated and saved: the weight average when ``trainer.ema_decay`` is set."""
        return self.ema.module if self.ema else self.model

    # --- checkpoints --------------------------------------------------------------------------------
    def save(self, tag: str = "last") -> Path:
        if not self.dist.is_main:  # rank 0 alone writes checkpoints
            return self.ckpt_dir / f"{tag}.safetensors"
        extra = {"task": self.run.task["name"], **self.task.checkpoint_extra()}
        path = save_weights(self.ckpt_dir / f"{tag}.safetensors", self.eval_model, self.run.to_dict(), extra,
                            self.step)
        if tag == "last":
            state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "rng_cpu": torch.get_rng_state(),
                     "best": self.best if self.best is not None else float("nan")}
            if self.ema:  # the weights file holds the average; training continues from the raw weights
                state["raw_weights"] = self.model.state_dict()
                state["ema_updates"] = self.ema.updates
            if torch.cuda.is_available():
                state["rng_cuda"] = torch.cuda.get_rng_state_all()
            save_state(self.ckpt_dir / "last.state.pt", state)
        return path

    def resume(self, path: str | Path) -> None:
        ckpt = read_checkpoint(path, prefer="last")
        state = load_state(ckpt.path.with_name(ckpt.path.name.replace(".safetensors", ".state.pt")))
        if state["step"] != ckpt.step:
            raise NeuratlasError(f"{ckpt.path}: weights (step {ckpt.step}) and trainer state (step "
                                 f"{state['step']}) disagree; the checkpoint is inconsistent")
        from safetensors.torch import load_model

        load_model(self.eval_model, str(ckpt.path))
        if self.ema:
            if "raw_weights" not in state:
                raise NeuratlasError(f"{ckpt.path}: this run averages its weights (trainer.ema_decay) but the "
                                     "checkpoint holds no raw weights to continue from; resume it without EMA")
            self.model.load_state_dict(state["raw_weights"])
            self.ema.updates = state["ema_updates"]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise NeuratlasError(f"{ckpt.path}: its optimizer state does not fit this run's optimizer "
                                 f"'{self.run.optimizer.name}' ({e}); resume with the optimizer it was trained "
                                 "with") from None
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.step = state["step"]
        self.best = None if math.isnan(state["best"]) else state["best"]
        self.run_dir = ckpt.path.parent.parent
        self.ckpt_dir = ckpt.path.parent

    # --- the loop -----------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        accum = self.run.trainer.grad_accum
        logs: dict[str, float] = {"loss": 0.0}
        for micro in range(accum):
            batch = self.dist.shard(self.task.train_batch(self.step * accum + micro))
            with self.autocast():
                loss, extra = self.task.training_loss(self.train_model, batch)
            if not torch.isfinite(loss):
                raise NeuratlasError(f"loss became {loss.item()} at step {self.step} (micro-batch {micro}); "
                                     "try a lower --optimizer.lr or --trainer.grad_clip 1.0. The last good "
                                     f"checkpoint is in {self.ckpt_dir}")
            (loss / accum).backward()
            logs["loss"] += loss.item() / accum
            for k, v in extra.items():
                logs[k] = logs.get(k, 0.0) + v / accum
        if self.run.trainer.grad_clip:
            logs["grad_norm"] = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.run.trainer.grad_clip))
        by_time = self.run.trainer.budget_schedule and self.run.trainer.time_limit
        if by_time:
            progress = (time.perf_counter() - self._t0) / self.run.trainer.time_limit
            at = min(self.total_steps - 1, int(progress * self.total_steps))
            for g in self.optimizer.param_groups:
                g["lr"] = g["initial_lr"] * lr_factor(at, self.total_steps, self.run.schedule)
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        if self.ema:
            self.ema.update(self.model)
        if not by_time:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return logs

    def evaluate(self, split: str = "val") -> dict[str, float]:
        return self.task.evaluate(self.eval_model, split, self.autocast())

    def fit(self, resume: str | Path | None = None, crash_at: int | None = None) -> FitResult:
        """Train to ``total_steps``; ``crash_at`` simulates a crash (for tests of exact resume)."""
        tc = self.run.trainer
        if resume:
            self.resume(resume)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        main = self.dist.is_main
        if main:
            (self.run_dir / "config.json").write_text(json.dumps(self.run.to_dict(), indent=2))
        logger = RunLogger(self.run_dir, tc.tensorboard, resume_step=self.step if resume else None) if main \
            else NullLogger()
        result = FitResult(self.run_dir, self.step, parameters=count_parameters(self.model))
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (tc.progress and main),
                   dynamic_ncols=True, desc=self.run.model["name"], leave=False)
        batch_size = self.task.batch_size
        t0, steps0, smooth = time.perf_counter(), self.step, None
        self._t0, self._val_step = t0, -1
        self.model.train()
        # a budgeted schedule trains until the clock runs out; max_steps/epochs only set the schedule's grid
        by_time = bool(tc.budget_schedule and tc.time_limit)
        try:
            while self.step < self.total_steps or by_time:
                if crash_at is not None and self.step == crash_at:
                    raise KeyboardInterrupt("simulated crash")
                logs = self.train_step()
                smooth = logs["loss"] if smooth is None else 0.9 * smooth + 0.1 * logs["loss"]
                bar.update(1)
                if self.step % tc.log_every == 0:
                    logger.log(self.step, "train", logs)
                    bar.set_postfix(loss=f"{smooth:.4f}")
                elapsed = time.perf_counter() - t0
                out_of_time = tc.time_limit is not None and elapsed >= tc.time_limit
                at_end = self.step == self.total_steps and not by_time
                if self.step % self.eval_every == 0 or at_end or out_of_time:
                    result.val, self._val_step = self.evaluate("val"), self.step
                    self.model.train()
                    logger.log(self.step, "val", result.val)
                    bar.set_postfix(loss=f"{smooth:.4f}", **{f"val_{self.task.metric}":
                                                             f"{result.val[self.task.metric]:.4f}"})
                    self._maybe_save_best(result.val)
                    self.save("last")
                elif tc.save_every and self.step % tc.save_every == 0:
                    self.save("last")
                if out_of_time:
                    result.stopped_early = f"time limit {tc.time_limit:.0f}s reached at step {self.step}"
                    break
        except KeyboardInterrupt:
            bar.close()
            if crash_at is None:  # a real Ctrl-C: keep the work, say how to continue
                self.save("last")
                print(f"\ninterrupted at step {self.step}; resume with --resume {self.run_dir}")
            logger.close()
            raise
        bar.close()
        result.train_seconds = time.perf_counter() - t0
        result.steps = self.step
        done = (self.step - steps0) * tc.grad_accum * batch_size
        result.samples_per_second = done / max(result.train_seconds, 1e-9)
        scored_now = result.val and self._val_step == self.step
        result.test = dict(result.val) if self.task.test_is_val and scored_now else self.evaluate("test")
        logger.log(self.step, "test", result.test)
        logger.log(self.step, "train", {"time_s": result.train_seconds, "samples_per_s": result.samples_per_second})
        logger.close()
        if not main:
            return result
        plot_curves(self.run_dir / "metrics.csv", self.run_dir / "curves.png", self.run.model["name"])
        (self.run_dir / "result.json").write_text(json.dumps(
            {"steps": result.steps, "val": result.val, "test": result.test, "train_seconds": result.train_seconds,
             "samples_per_second": result.samples_per_second, "parameters": result.parameters}, indent=2))
        return result

    def _maybe_save_best(self, val: dict[str, float]) -> None:
        score = val[self.task.metric]
        better = self.best is None or (score > self.best if self.task.higher_is_better else score < self.best)
        if better:
            self.best = score
            self.save("best")
