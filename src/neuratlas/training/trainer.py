"""One trainer for every family: the loop fits on a screen; the Task supplies batches, loss and metrics.

The task's two hooks decide what one step is (``configure_optimizers``, ``train_step``; see tasks/base.py);
the trainer owns everything around it: model set-up (transfer learning included), precision, gradient
clipping, the weight average, schedules, evaluation in eval mode without gradients, checkpoints and resume.

Exact resume: batches are a pure function of (seed, step) and the state file carries optimizer, scheduler
and RNG states, so stopping at step k and resuming gives bit-identical weights to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuratlas.device import autocast, grad_scaler, keep_freed_memory, resolve_device, resolve_precision
from neuratlas.errors import NeuratlasError
from neuratlas.layers.lora import lora_layers, merged_copy
from neuratlas.models import count_parameters, create_model
from neuratlas.models.budget import check_model_fits
from neuratlas.models.checkpoint import STEP_DIR, resumable, save_checkpoint, save_weights
from neuratlas.models.registry import MODELS
from neuratlas.optim import build_scheduler, lr_factor
from neuratlas.tasks import Task, build_task
from neuratlas.training.callbacks import Callback, default_callbacks
from neuratlas.training.config import RunConfig
from neuratlas.training.distributed import context as dist_context
from neuratlas.training.ema import WeightAverage
from neuratlas.training.logging import plot_curves
from neuratlas.training.rundir import default_run_name, prepare_run_dir
from neuratlas.training.signals import Terminated, terminate_as_interrupt
from neuratlas.training.transfer import TransferSetup, setup_transfer
from neuratlas.weights import load_pretrained_weights


@dataclass
class FitResult:
    """What every run returns (and writes as result.json): the CLI, the tour and the tests format it."""

    run_dir: Path
    steps: int
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    samples_per_second: float = 0.0
    parameters: int = 0
    stopped_early: str = ""
    model: str = ""  # the registered model name
    data: str = ""  # the data set with its split sizes
    metric: str = "loss"  # the task's headline metric
    higher_is_better: bool = False
    notes: list[str] = field(default_factory=list)  # lines a task or paradigm adds (a picture, a verdict)

    @property
    def score(self) -> float:
        """The headline metric on the test split."""
        return self.test.get(self.metric, float("nan"))

    def to_dict(self) -> dict[str, object]:
        return {
            "steps": self.steps,
            "val": self.val,
            "test": self.test,
            "train_seconds": self.train_seconds,
            "samples_per_second": self.samples_per_second,
            "parameters": self.parameters,
            "model": self.model,
            "data": self.data,
            "metric": self.metric,
            "notes": self.notes,
            "stopped_early": self.stopped_early,
        }


def model_for_task(run: RunConfig, task: Task) -> nn.Module:
    """Create the recipe's model, filling options the data implies (num_classes, ...) that it did not set."""
    spec = dict(run.model)
    name = spec.pop("name")
    fields = MODELS.get(name).config_class.__dataclass_fields__
    implied = {k: v for k, v in task.model_defaults().items() if k in fields and k not in spec}
    check_model_fits(name, {**implied, **spec})  # on the meta device: a size bomb is one line, not an OOM
    model = create_model(name, **implied, **spec)
    load_pretrained_weights(model)
    return model


class Trainer:
    def __init__(
        self,
        run: RunConfig,
        task: Task | None = None,
        model: nn.Module | None = None,
        callbacks: list[Callback] | None = None,
    ) -> None:
        self.run = run
        tc = run.trainer
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        torch.manual_seed(tc.seed)
        if tc.deterministic:
            torch.use_deterministic_algorithms(True)
        self.task = task or build_task(run.task, run.data, tc.seed, run.sections)
        # a model handed in (eval of a checkpoint) is used as it is; one built here starts as the run says
        self.transfer = TransferSetup(run.optimizer, None, False)
        handed_in = model is not None
        if model is None:
            model = model_for_task(run, self.task)
            self.transfer = setup_transfer(model, run)
        self.model = model
        # under torchrun: join the process group first, so this process's GPU (LOCAL_RANK) is known and
        # current before anything is moved; otherwise a no-op
        self.dist = dist_context(tc.dist_timeout)
        # a model handed in (a checkpoint to evaluate) runs as it is, whatever strategy trained it
        self.strategy = self.dist.strategy("auto" if handed_in else tc.strategy)
        self.device = resolve_device(tc.device, self.dist.local_rank)
        self.dtype = resolve_precision(tc.precision, self.device)
        if tc.keep_freed_memory and self.device.type == "cpu":
            keep_freed_memory()
        self.model.to(self.device)
        self.task.device = self.device
        if tc.channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.task.memory_format = torch.channels_last
        if tc.activation_checkpointing:
            from neuratlas.training.fsdp import checkpoint_activations

            checkpoint_activations(self.model)
        if self.strategy == "fsdp":
            from neuratlas.training.fsdp import check_supported

            check_supported(self)
        self.ema = WeightAverage(self.model, tc.ema_decay) if tc.ema_decay else None
        # DDP around the model, or the model sharded in place (FSDP); compiled after wrapping
        self.train_model = self.dist.wrap(self.model, self.device, self.strategy, self.dtype)
        if tc.compile:
            self.train_model = torch.compile(self.train_model)
        self.scaler = grad_scaler(self.device, self.dtype, sharded=self.strategy == "fsdp")  # fp16 only
        spe = self.task.steps_per_epoch // tc.grad_accum
        if spe < 1:
            raise NeuratlasError("the training set is smaller than one batch × grad_accum")
        self.total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * spe))
        self.eval_every = tc.eval_every or min(spe, self.total_steps)
        effective = dataclasses.replace(run, optimizer=self.transfer.optimizer)
        self.optimizers = list(self.task.configure_optimizers(self.model, effective))
        self.schedulers = [build_scheduler(opt, run.schedule, self.total_steps) for opt in self.optimizers]
        self.step = 0
        self._t0 = time.perf_counter()
        self.best: float | None = None
        name = tc.run_name or default_run_name(run.model["name"])
        self.run_dir = Path(tc.out_dir) / name
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.stop_reason = ""  # set by a callback (early stopping) or the clock: the loop ends after this step
        self.early_stop: dict[str, Any] = {"best": None, "bad": 0}
        self.callbacks = [*default_callbacks(self), *(callbacks or [])]
        self.task.setup(self)

    def autocast(self):
        return autocast(self.device, self.dtype)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The first (for most tasks the only) optimizer."""
        return self.optimizers[0]

    @property
    def saves_raw_weights(self) -> bool:
        """The weights file holds something other than what trains (the average, or LoRA merged), so the
        state file carries the raw weights to resume from."""
        return bool(self.ema or self.transfer.lora)

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated and saved: the weight average when ``trainer.ema_decay`` is set."""
        return self.ema.module if self.ema else self.model

    # --- checkpoints --------------------------------------------------------------------------------
    def save(self, tag: str = "last") -> Path:
        if self.strategy == "fsdp":  # every process writes its shards; rank 0 the consolidated weights
            from neuratlas.training.fsdp import save_sharded

            return save_sharded(self, tag)
        if not self.dist.is_main:  # rank 0 alone writes checkpoints
            return self.ckpt_dir / f"{tag}.safetensors"
        extra = {"task": self.run.task["name"], **self.task.checkpoint_extra()}
        model = merged_copy(self.eval_model) if lora_layers(self.eval_model) else self.eval_model
        if tag != "last":
            path = save_weights(self.ckpt_dir / f"{tag}.safetensors", model, self.run.to_dict(), extra, self.step)
        else:  # weights + trainer state as one unit (models/checkpoint.py)
            state = {
                "step": self.step,
                "optimizers": [o.state_dict() for o in self.optimizers],
                "schedulers": [s.state_dict() for s in self.schedulers],
                "rng_cpu": torch.get_rng_state(),
                "best": self.best if self.best is not None else float("nan"),
            }
            state["early_stop"] = dict(self.early_stop)
            if self.saves_raw_weights:  # training continues from the raw weights
                state["raw_weights"] = self.model.state_dict()
            if self.ema:
                state["ema_updates"] = self.ema.updates
            if self.scaler is not None:
                state["scaler"] = self.scaler.state_dict()
            if torch.cuda.is_available():
                state["rng_cuda"] = torch.cuda.get_rng_state_all()
            path = save_checkpoint(self.ckpt_dir, model, self.run.to_dict(), extra, self.step, state)
        self._call("on_save", tag, path)
        return path

    def resume(self, path: str | Path) -> None:
        if self.strategy == "fsdp":
            from neuratlas.training.fsdp import load_sharded

            return load_sharded(self, path)
        ckpt, state = resumable(path)  # the newest complete checkpoint (one unit: weights + state)
        from safetensors.torch import load_model

        if self.saves_raw_weights:
            if "raw_weights" not in state:
                raise NeuratlasError(
                    f"{ckpt.path}: this run averages its weights or trains LoRA adapters, but "
                    "the checkpoint holds no raw weights to continue from; resume it as it was "
                    "trained (trainer.ema_decay, transfer.lora_rank)"
                )
            if self.ema:
                load_model(self.ema.module, str(ckpt.path))
                self.ema.updates = state["ema_updates"]
            self.model.load_state_dict(state["raw_weights"])
        else:
            load_model(self.model, str(ckpt.path))
        # the learning rates this run's config asks for; an --optimizer.lr given on resume must win over the
        # rates stored in the optimizer and schedule states
        wanted = [[g.get("initial_lr", g["lr"]) for g in opt.param_groups] for opt in self.optimizers]
        # states written before the task hooks existed hold one optimizer and one scheduler
        opt_states = state.get("optimizers") or [state["optimizer"]]
        sched_states = state.get("schedulers") or [state["scheduler"]]
        if len(opt_states) != len(self.optimizers):
            raise NeuratlasError(
                f"{ckpt.path}: it holds {len(opt_states)} optimizer states, this run has "
                f"{len(self.optimizers)} optimizers"
            )
        try:
            for opt, st in zip(self.optimizers, opt_states):
                opt.load_state_dict(st)
        except (ValueError, KeyError) as e:
            raise NeuratlasError(
                f"{ckpt.path}: its optimizer state does not fit this run's optimizer "
                f"'{self.run.optimizer.name}' ({e}); resume with the optimizer it was trained "
                "with"
            ) from None
        for sched, st in zip(self.schedulers, sched_states):
            sched.load_state_dict(st)
        for opt, sched, lrs in zip(self.optimizers, self.schedulers, wanted):
            for i, (g, lr) in enumerate(zip(opt.param_groups, lrs)):
                if g.get("initial_lr", lr) != lr:  # changed on resume: rescale from the schedule's position
                    g["initial_lr"] = sched.base_lrs[i] = lr
                    g["lr"] = lr * sched.lr_lambdas[i](sched.last_epoch)
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.step = state["step"]
        self.best = None if math.isnan(state["best"]) else state["best"]
        self.early_stop = dict(state.get("early_stop", self.early_stop))
        self.ckpt_dir = ckpt.path.parent.parent if STEP_DIR.match(ckpt.path.parent.name) else ckpt.path.parent
        self.run_dir = self.ckpt_dir.parent

    # --- the loop -----------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor, where: str = "") -> None:
        """Backpropagate ``loss``, refusing a non-finite one with the way out."""
        if not torch.isfinite(loss):
            raise NeuratlasError(
                f"loss became {loss.item()} at step {self.step}{' (' + where + ')' if where else ''}"
                "; try a lower --optimizer.lr or --trainer.grad_clip 1.0. The last good "
                f"checkpoint is in {self.ckpt_dir}"
            )
        if self.scaler is not None:  # fp16: scale the loss so small gradients do not underflow
            loss = self.scaler.scale(loss)
        loss.backward()

    def optimizer_step(self, optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter]) -> dict[str, float]:
        """Clip ``params``' gradients (``trainer.grad_clip``), step ``optimizer`` and clear its gradients."""
        logs = {}
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        if self.run.trainer.grad_clip:
            norm = nn.utils.clip_grad_norm_(list(params), self.run.trainer.grad_clip)
            logs["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor
        if self.scaler is not None:
            self.scaler.step(optimizer)  # skipped when a gradient overflowed; the scale then shrinks
            self.scaler.update()
            logs["loss_scale"] = float(self.scaler.get_scale())
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return logs

    def train_step(self) -> dict[str, float]:
        """One step: the task's ``train_step``, then the weight average, the schedules and the step count."""
        tc = self.run.trainer
        by_time = tc.budget_schedule and tc.time_limit
        if by_time:
            progress = (time.perf_counter() - self._t0) / tc.time_limit
            at = min(self.total_steps - 1, int(progress * self.total_steps))
            for opt in self.optimizers:
                for g in opt.param_groups:
                    g["lr"] = g["initial_lr"] * lr_factor(at, self.total_steps, self.run.schedule)
        if self.transfer.unfreezer:
            self.transfer.unfreezer.update(self.step)
        lr = self.optimizers[0].param_groups[0]["lr"]
        logs = self.task.train_step(self, self.step)
        logs["lr"] = lr
        if self.ema:
            self.ema.update(self.model)
        if not by_time:
            for sched in self.schedulers:
                sched.step()
        self.step += 1
        return logs

    @contextmanager
    def evaluating(self) -> Iterator[nn.Module]:
        """The model to evaluate, in eval mode with gradients off; its mode is restored afterwards."""
        model = self.eval_model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                yield model
        finally:
            model.train(was_training)

    def evaluate(self, split: str = "val") -> dict[str, float]:
        """The task's metrics on ``split``."""
        with self.evaluating() as model:
            return self.task.evaluate(model, split, self.autocast())

    def fit(self, resume: str | Path | None = None, crash_at: int | None = None) -> FitResult:
        """Train to ``total_steps``; ``crash_at`` simulates a crash (for tests of exact resume). SIGTERM
        stops it as Ctrl-C does: a checkpoint, and the command that resumes."""
        with terminate_as_interrupt():
            return self._fit(resume, crash_at)

    def _fit(self, resume: str | Path | None, crash_at: int | None) -> FitResult:
        tc = self.run.trainer
        if resume:
            self.resume(resume)
        main = self.dist.is_main
        prepare_run_dir(self.run_dir, bool(resume), tc.overwrite, main)
        if main:
            (self.run_dir / "config.json").write_text(json.dumps(self.run.to_dict(), indent=2))
        result = FitResult(
            self.run_dir,
            self.step,
            parameters=count_parameters(self.eval_model),
            model=self.run.model["name"],
            data=self.task.describe_data(),
            metric=self.task.metric,
            higher_is_better=self.task.higher_is_better,
        )
        t0, steps0 = time.perf_counter(), self.step
        self._t0, self._val_step = t0, -1
        self.model.train()
        if main:
            self.task.on_fit_start(self)
        self._call("on_fit_start")
        # a budgeted schedule trains until the clock runs out; max_steps/epochs only set the schedule's grid
        by_time = bool(tc.budget_schedule and tc.time_limit)
        try:
            while (self.step < self.total_steps or by_time) and not self.stop_reason:
                if crash_at is not None and self.step == crash_at:
                    raise KeyboardInterrupt("simulated crash")
                self._call("on_step", self.train_step())
                out_of_time = tc.time_limit is not None and time.perf_counter() - t0 >= tc.time_limit
                at_end = self.step == self.total_steps and not by_time
                if out_of_time:
                    self.stop_reason = f"time limit {tc.time_limit:.0f}s reached at step {self.step}"
                if self.step % self.eval_every == 0 or at_end or out_of_time:
                    result.val, self._val_step = self.evaluate("val"), self.step
                    self._maybe_save_best(result.val)
                    self._call("on_eval", "val", result.val)  # may decide to stop early
                    self.save("last")
                elif tc.save_every and self.step % tc.save_every == 0:
                    self.save("last")
        except KeyboardInterrupt as stop:
            self._call("close")
            if crash_at is None:  # a real Ctrl-C or SIGTERM: keep the work, say how to continue
                self.save("last")  # (after a SIGTERM, a second one is ignored: training/signals.py)
                why = " by SIGTERM" if isinstance(stop, Terminated) else ""
                print(
                    f"\ninterrupted{why} at step {self.step}; checkpoint saved; resume with: "
                    f"neuratlas train --resume {self.run_dir}",
                    flush=True,
                )
            raise
        result.stopped_early = self.stop_reason
        result.train_seconds = time.perf_counter() - t0
        result.steps = self.step
        done = (self.step - steps0) * tc.grad_accum * self.task.batch_size
        result.samples_per_second = done / max(result.train_seconds, 1e-9)
        scored_now = result.val and self._val_step == self.step
        result.test = dict(result.val) if self.task.test_is_val and scored_now else self.evaluate("test")
        self._call("on_eval", "test", result.test)
        if main:
            with self.evaluating():
                self.task.on_fit_end(self, result)
        self._call("on_fit_end", result)
        if not main:
            return result
        plot_curves(self.run_dir / "metrics.csv", self.run_dir / "curves.png", self.run.model["name"])
        (self.run_dir / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
        return result

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            if hook == "close":
                cb.close()
            else:
                getattr(cb, hook)(self, *args)

    def _maybe_save_best(self, val: dict[str, float]) -> None:
        score = val[self.task.metric]
        better = self.best is None or (score > self.best if self.task.higher_is_better else score < self.best)
        if better:
            self.best = score
            self.save("best")
