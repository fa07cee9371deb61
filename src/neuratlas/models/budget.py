"""Sizes checked before memory is spent: a model is first built on the ``meta`` device (shapes, no storage)
with its construction bounded, so an option like ``--model.hidden [1000000000]`` or a checkpoint whose
metadata declares a network of depth 10⁸ is one line, not a multi-terabyte allocation or minutes of
building."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuratlas.errors import NeuratlasError

# fp32 weights alone: the check refuses what cannot even be allocated, never a model that fits with a
# memory-saving set-up (bf16, LoRA, a GPU holding the optimizer state)
BYTES_PER_PARAMETER = 4
MAX_MODULES = 20_000  # the largest registered models have about a thousand; building 20,000 takes ~10 s


class TooLarge(Exception):
    """Raised from inside a model's construction when it passes its budget."""


@contextmanager
def bounded_construction(max_modules: int, max_numel: int) -> Iterator[None]:
    """Stop a model's construction as soon as it registers more than ``max_modules`` submodules or more than
    ``max_numel`` parameter elements (raises :class:`TooLarge`)."""
    from torch.nn.modules import module as module_mod

    count = {"modules": 0, "numel": 0}

    def on_module(parent: nn.Module, name: str, sub: nn.Module | None) -> None:
        count["modules"] += 1
        if count["modules"] > max_modules:
            raise TooLarge(f"more than {max_modules:,} modules")

    def on_param(parent: nn.Module, name: str, param: nn.Parameter | None) -> None:
        count["numel"] += param.numel() if param is not None else 0
        if count["numel"] > max_numel:
            raise TooLarge(f"over {count['numel']:,} parameters")

    handles = [
        module_mod.register_module_module_registration_hook(on_module),
        module_mod.register_module_parameter_registration_hook(on_param),
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def available_memory() -> int:
    """Bytes of memory available to this process now (MemAvailable; the whole RAM where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def check_model_fits(
    name: str, options: dict[str, Any], memory: int | None = None, max_modules: int = MAX_MODULES
) -> None:
    """Refuse, before allocating anything, a model whose fp32 weights alone would not fit ``memory`` (default:
    what is available now). A builder that cannot run on the meta device is let through."""
    from neuratlas.models.registry import create_model

    memory = available_memory() if memory is None else memory
    limit = memory // BYTES_PER_PARAMETER
    try:
        with bounded_construction(max_modules, limit), torch.device("meta"):
            meta = create_model(name, **options)
    except TooLarge as e:
        raise NeuratlasError(
            f"--model: {name} with these options is too large for this machine ({e}; its fp32 weights alone "
            f"would not fit the {memory / 2**30:.1f} GiB available, about {limit:,} parameters)"
        ) from None
    except NeuratlasError:
        raise
    except Exception:  # noqa: BLE001 (a builder that needs real tensors: its own checks apply)
        return
    del meta
