"""Batches from tensors already in memory — no worker processes, no per-sample Python.

The batch for global index ``i`` is a pure function of (seed, i): the epoch's permutation comes from a
generator seeded with (seed, epoch). Resuming at step k therefore replays exactly the batches an
uninterrupted run would have seen, with no loader state to save.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

Transform = Callable[[tuple[torch.Tensor, ...], torch.Generator], tuple[torch.Tensor, ...]]


def seeded_generator(*seeds: int) -> torch.Generator:
    g = torch.Generator()
    value = 0
    for s in seeds:
        value = (value * 1_000_003 + int(s)) % (2**63 - 1)
    g.manual_seed(value)
    return g


class TensorBatches:
    def __init__(
        self,
        tensors: tuple[torch.Tensor, ...],
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        transform: Transform | None = None,
    ) -> None:
        n = len(tensors[0])
        if any(len(t) != n for t in tensors):
            raise ValueError("all tensors must have the same length")
        self.tensors, self.n = tensors, n
        self.batch_size = max(1, min(batch_size, n))  # an empty split has no batches, not a division by zero
        self.seed, self.shuffle, self.drop_last, self.transform = seed, shuffle, drop_last, transform
        self._perm_epoch, self._perm = -1, None

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            self._perm = (
                torch.randperm(self.n, generator=seeded_generator(self.seed, epoch))
                if self.shuffle
                else torch.arange(self.n)
            )
            self._perm_epoch = epoch
        return self._perm

    def get(self, index: int) -> tuple[torch.Tensor, ...]:
        """The ``index``-th batch counted from the start of training, across epochs."""
        epoch, i = divmod(index, len(self))
        idx = self._permutation(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        batch = tuple(t[idx] for t in self.tensors)
        if self.transform is not None:
            batch = self.transform(batch, seeded_generator(self.seed, 7919, index))
        return batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """One pass in order (evaluation)."""
        for i in range(len(self)):
            yield self.get(i)
