"""``torch.export`` programs saved with ``torch.export.save`` and checked after ``torch.export.load``."""

from __future__ import annotations

from pathlib import Path

import torch

from neuratlas.export.check import Check, check, flat
from neuratlas.export.parts import Inputs, Part


def save(program: torch.export.ExportedProgram, part: Part, path: Path, model_name: str) -> None:
    torch.export.save(program, str(path))


def verify(path: Path, part: Part, timing: bool = True) -> Check:
    module = torch.export.load(str(path)).module()

    @torch.no_grad()
    def run(inputs: Inputs) -> list[torch.Tensor]:
        return flat(module(*inputs))

    return check(part, path.name, "torch.export", run, timing)
