"""Sharded data parallelism (FSDP2) and activation checkpointing: the pieces a model too big for one device
needs, on PyTorch's own engine.

``--trainer.strategy fsdp`` shards every parameter, its gradient and its optimizer state across the
processes (``torch.distributed.fsdp.fully_shard``): each repeated block (the elements of the model's
``nn.ModuleList``s: transformer blocks, CNN stages) is one unit, gathered just before it runs and freed just
after, then the root takes what is left. The sampler and the gradient average are DDP's, so a run equals one
process with the global batch.

Checkpoints: every process writes its shards with ``torch.distributed.checkpoint`` (``last.dcp/``, model and
optimizer; resume reads them back exactly, on the same number of processes or another), and rank 0 also
writes the consolidated ``*.safetensors`` that ``eval``, ``predict`` and ``export`` read on one process.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from neuratlas.errors import NeuratlasError

if TYPE_CHECKING:
    from neuratlas.training.trainer import Trainer


def blocks(model: nn.Module) -> Iterator[nn.Module]:
    """The model's repeated blocks: the elements of its outermost ``nn.ModuleList``s that hold parameters
    (GPT/BERT/ViT blocks, ResNet/ConvNet stages), found generically so every family gets them."""
    for child in model.children():
        if isinstance(child, nn.ModuleList):
            yield from (m for m in child if any(True for _ in m.parameters()))
        else:
            yield from blocks(child)


def shard_model(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """``fully_shard`` each block, then the root, in place. With bf16/fp16 the gathered parameters are cast
    to that dtype (``MixedPrecisionPolicy``) and gradients are reduced in fp32, so the average is as exact
    as DDP's."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    for block in blocks(model):
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def checkpoint_activations(model: nn.Module) -> int:
    """Recompute each block's activations in the backward pass instead of keeping them (memory for compute:
    one extra forward per block). Returns how many blocks it applies to; refuses a model without blocks."""
    from torch.utils.checkpoint import checkpoint

    found = list(blocks(model))
    if not found:
        raise NeuratlasError(
            f"--trainer.activation_checkpointing: {type(model).__name__} has no repeated "
            "blocks (an nn.ModuleList of layers) to checkpoint"
        )
    for block in found:
        forward = block.forward

        def checkpointed(*args: Any, _forward=forward, **kwargs: Any) -> Any:
            if torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        block.forward = checkpointed  # an instance attribute: the names in the state dict stay as they are
    return len(found)


def check_supported(trainer: Trainer) -> None:
    """FSDP runs the default training step (the task's loss through the sharded model); what needs the full
    weights on one process mid-run is refused with the way out."""
    from neuratlas.tasks.base import Task

    task = type(trainer.task)
    if task.train_step is not Task.train_step or task.on_fit_end is not Task.on_fit_end:
        raise NeuratlasError(
            f"--trainer.strategy fsdp: the {trainer.run.task['name']} task has its own "
            "training step or end-of-run work on the full model; train it with ddp"
        )
    if trainer.run.trainer.ema_decay or trainer.transfer.lora:
        raise NeuratlasError(
            "--trainer.strategy fsdp does not combine with trainer.ema_decay or transfer.lora_rank; use ddp"
        )


def full_model(trainer: Trainer) -> nn.Module | None:
    """Every process takes part (a gather); rank 0 gets a plain CPU copy of the model with the full weights
    (what a one-process checkpoint holds), the others None."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from neuratlas.models import create_model
    from neuratlas.models.registry import model_config_dict

    state = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not trainer.dist.is_main:
        return None
    copy = create_model(trainer.model.model_name, **model_config_dict(trainer.model))
    copy.load_state_dict(state)
    return copy


def _sharded_state(trainer: Trainer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {
        "model": get_model_state_dict(trainer.model),
        "optimizers": [get_optimizer_state_dict(trainer.model, o) for o in trainer.optimizers],
    }


def save_sharded(trainer: Trainer, tag: str) -> Path:
    """Every process: the consolidated weights (rank 0) and, for ``last``, the shards of model and optimizer
    (``last.dcp/``, written beside and then swapped in, so an interruption leaves the previous one) and the
    trainer state (step, schedules, RNG)."""
    import torch.distributed.checkpoint as dcp

    from neuratlas.models.checkpoint import save_state, save_weights

    path = trainer.ckpt_dir / f"{tag}.safetensors"
    model = full_model(trainer)
    if model is not None:
        extra = {"task": trainer.run.task["name"], **trainer.task.checkpoint_extra()}
        save_weights(path, model, trainer.run.to_dict(), extra, trainer.step)
    if tag != "last":
        trainer.dist.barrier()
        if trainer.dist.is_main:  # as in a one-process run: callbacks hear of a save once
            trainer._call("on_save", tag, path)
        return path
    shards, tmp = trainer.ckpt_dir / "last.dcp", trainer.ckpt_dir / "last.dcp.tmp"
    if trainer.dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.dist.barrier()
    dcp.save(_sharded_state(trainer), checkpoint_id=str(tmp))
    trainer.dist.barrier()
    if trainer.dist.is_main:
        shutil.rmtree(shards, ignore_errors=True)
        tmp.rename(shards)
        state = {
            "step": trainer.step,
            "optimizers": [],
            "schedulers": [s.state_dict() for s in trainer.schedulers],
            "rng_cpu": torch.get_rng_state(),
            "sharded": True,
            "early_stop": dict(trainer.early_stop),
            "best": trainer.best if trainer.best is not None else float("nan"),
        }
        if trainer.scaler is not None:
            state["scaler"] = trainer.scaler.state_dict()
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        save_state(trainer.ckpt_dir / "last.state.pt", state)
    trainer.dist.barrier()
    if trainer.dist.is_main:
        trainer._call("on_save", tag, path)
    return path


def load_sharded(trainer: Trainer, path: str | Path) -> None:
    """Resume a sharded run from its ``last.dcp/`` shards and trainer state (every process)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    from neuratlas.models.checkpoint import load_state, read_checkpoint

    ckpt = read_checkpoint(path, prefer="last")
    shards = ckpt.path.parent / "last.dcp"
    state = load_state(ckpt.path.with_name("last.state.pt"))
    if not state.get("sharded") or not shards.is_dir():
        raise NeuratlasError(
            f"{ckpt.path.parent}: no sharded checkpoint (last.dcp/) to resume with "
            "--trainer.strategy fsdp; resume it with the strategy it was trained with"
        )
    if state["step"] != ckpt.step:
        raise NeuratlasError(
            f"{ckpt.path}: weights (step {ckpt.step}) and trainer state (step "
            f"{state['step']}) disagree; the checkpoint is inconsistent"
        )
    sharded = _sharded_state(trainer)
    dcp.load(sharded, checkpoint_id=str(shards))
    set_model_state_dict(trainer.model, sharded["model"])
    for opt, st in zip(trainer.optimizers, sharded["optimizers"]):
        set_optimizer_state_dict(trainer.model, opt, st)
    for sched, st in zip(trainer.schedulers, state["schedulers"]):
        sched.load_state_dict(st)
    if trainer.scaler is not None and "scaler" in state:
        trainer.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"])
    if "rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    trainer.step = state["step"]
    trainer.best = None if math.isnan(state["best"]) else state["best"]
    trainer.early_stop = dict(state.get("early_stop", trainer.early_stop))
    trainer.run_dir = ckpt.path.parent.parent
    trainer.ckpt_dir = ckpt.path.parent
