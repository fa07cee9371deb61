"""Data-parallel training on PyTorch's own engine: DistributedDataParallel, gloo on CPU, NCCL on GPU.

    torchrun --nproc-per-node 2 -m neuratlas train mlp-fashion-quick      # no code change
    neuratlas ddp --nproc 2 mlp-fashion-quick --trainer.max_steps 100     # the same, launched for you

The Trainer asks :func:`context` once: under torchrun (``WORLD_SIZE`` > 1) it joins the process group and
wraps the model in DDP. The sampler is the simplest exact one: every rank draws the same global batch
``i`` (batches are a pure function of (seed, i)) and keeps its own 1/world slice, so N processes with
per-rank batch B/N take exactly the step one process takes with batch B (DDP averages the gradients).
Rank 0 alone logs, shows progress and writes checkpoints.

``--trainer.strategy fsdp`` shards parameters, gradients and optimizer state instead (FSDP2, ``fully_shard``
per block; training/fsdp.py): the same sampler, the same averaged gradients, so the same steps.
Multi-node is the same command under ``torchrun --nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from neuratlas.errors import NeuratlasError


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def shard(self, batch: Any) -> Any:
        """This rank's contiguous 1/world slice of every tensor in a (nested) batch."""
        if not self.enabled:
            return batch
        if isinstance(batch, torch.Tensor):
            n = batch.shape[0]
            if n % self.world:
                raise NeuratlasError(
                    f"the global batch ({n}) must be divisible by the {self.world} processes; change --data.batch_size"
                )
            k = n // self.world
            return batch[self.rank * k : (self.rank + 1) * k]
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.shard(b) for b in batch)
        if isinstance(batch, dict):
            return {key: self.shard(v) for key, v in batch.items()}
        return batch

    def strategy(self, name: str) -> str:
        """``auto``: ``ddp`` under torchrun, ``single`` otherwise; ``ddp``/``fsdp`` need several processes."""
        if name == "auto":
            return "ddp" if self.enabled else "single"
        if name == "single" and self.enabled:
            raise NeuratlasError(f"--trainer.strategy single in a job of {self.world} processes; use ddp or fsdp")
        if name in ("ddp", "fsdp") and not self.enabled:
            raise NeuratlasError(
                f"--trainer.strategy {name} needs several processes: launch with "
                "`torchrun --nproc-per-node N -m neuratlas train ...` or `neuratlas ddp --nproc N`"
            )
        if name not in ("single", "ddp", "fsdp"):
            raise NeuratlasError(f"unknown --trainer.strategy {name!r}; choose auto, single, ddp or fsdp")
        return name

    def wrap(
        self, model: nn.Module, device: torch.device, strategy: str = "ddp", dtype: torch.dtype | None = None
    ) -> nn.Module:
        """The module the training step calls: DDP around ``model``, or ``model`` itself sharded in place
        (FSDP); ``torch.compile`` comes after this, so it sees the wrapper's communication."""
        if not self.enabled or strategy == "single":
            return model
        if strategy == "fsdp":
            from neuratlas.training.fsdp import shard_model

            return shard_model(model, dtype)
        from torch.nn.parallel import DistributedDataParallel

        ids = [device] if device.type == "cuda" else None  # the process's own GPU, never cuda:0 for all
        return DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


class NullLogger:
    """What ranks other than 0 log to: nothing."""

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


_CONTEXT: DistContext | None = None


def context(timeout: float = 600.0) -> DistContext:
    """The process group of this run, joined once (gloo for CPU tensors, NCCL for CUDA ones), and this
    process's GPU (``LOCAL_RANK``) made current before anything is moved. A collective that waits longer than
    ``timeout`` seconds for a lost process fails instead of hanging."""
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _CONTEXT = DistContext()
        return _CONTEXT
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    _CONTEXT = DistContext(dist.get_rank(), dist.get_world_size(), local_rank)
    return _CONTEXT


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``neuratlas ARGV`` in ``nproc`` processes with torchrun's launcher on this machine (loopback).

    A process that dies (killed, out of memory, an error) stops the job: the launcher ends the others and
    this raises one error line naming the first rank that failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    port = os.environ.get("MASTER_PORT", "29511")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id="neuratlas",
        rdzv_backend="static",
        rdzv_endpoint=f"127.0.0.1:{port}",
        rdzv_configs={"rank": 0},
        max_restarts=0,
        monitor_interval=0.5,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "neuratlas", *argv)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        how = (
            f"was killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exited with code {failure.exitcode}"
        )
        raise NeuratlasError(
            f"rank {rank} of {nproc} {how}; the other processes were stopped "
            f"(its log is above; `neuratlas {' '.join(argv[:2])}` failed)"
        ) from None
    return 0
