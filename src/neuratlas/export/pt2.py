"""``torch.export`` programs saved with ``torch.export.save`` and checked after ``torch.export.load``."""

from __future__ import annotations

from pathlib import Path

import torch

from neuratlas.export.check import Check, check, flat
from neuratlas.export.parts import Inputs, Part


def save(program: torch.export.ExportedProgram, part: Part, path: Path, model_name: str) -> None:
    torch.export.save(program, str(path))


def verify(path: Path, part: Part, timing: bool = True, device: torch.device | None = None) -> Check:
    """Load the program and compare it with the eager part; on ``device`` (the program's constants and
    weights moved there by ``move_to_device_pass``), else where it was traced (the CPU)."""
    program = torch.export.load(str(path))
    if device is not None and device.type != "cpu":
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    module = program.module()

    @torch.no_grad()
    def run(inputs: Inputs) -> list[torch.Tensor]:
        return flat(module(*inputs))

    return check(part, path.name, "torch.export", run, timing, device)
