"""Data-parallel training on PyTorch's own engine: DistributedDataParallel, gloo on CPU, NCCL on GPU.

    torchrun --nproc-per-node 2 -m neuratlas train mlp-fashion-quick      # no code change
    neuratlas ddp --nproc 2 mlp-fashion-quick --trainer.max_steps 100     # the same, launched for you

The Trainer asks :func:`context` once: under torchrun (``WORLD_SIZE`` > 1) it joins the process group and
wraps the model in DDP. The sampler is the simplest exact one: every rank draws the same global batch
``i`` (batches are a pure function of (seed, i)) and keeps its own 1/world slice, so N processes with
per-rank batch B/N take exactly the step one process takes with batch B (DDP averages the gradients).
Rank 0 alone logs, shows progress and writes checkpoints.

Models that do not fit one device need sharded data parallelism instead: ``torch.distributed.fsdp``
(``fully_shard(model)`` per block, then the same loop); see docs/paradigms.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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
                raise NeuratlasError(f"the global batch ({n}) must be divisible by the {self.world} "
                                     "processes; change --data.batch_size")
            k = n // self.world
            return batch[self.rank * k:(self.rank + 1) * k]
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.shard(b) for b in batch)
        if isinstance(batch, dict):
            return {key: self.shard(v) for key, v in batch.items()}
        return batch

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index or 0] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


class NullLogger:
    """What ranks other than 0 log to: nothing."""

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


_CONTEXT: DistContext | None = None


def context() -> DistContext:
    """The process group of this run, joined once (gloo on CPU, NCCL when CUDA is there)."""
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _CONTEXT = DistContext()
        return _CONTEXT
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    _CONTEXT = DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if torch.cuda.is_available():
        torch.cuda.set_device(_CONTEXT.local_rank)
    return _CONTEXT


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``neuratlas ARGV`` in ``nproc`` processes with torchrun's launcher on this machine (loopback)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", os.environ.get("MASTER_PORT", "29511"), "-m", "neuratlas", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.call(cmd, env=env)
