"""``torch.export`` of one part, with the failure told in one line that names the operator."""

from __future__ import annotations

import re

import torch

from neuratlas.errors import NeuratlasError
from neuratlas.export.parts import Part

_OP = re.compile(r"(aten[.:]{1,2}[A-Za-z_0-9]+(?:\.[A-Za-z_0-9]+)?|torch\.ops\.[A-Za-z_0-9.]+)")


def why(e: BaseException) -> str:
    """The operator (or construct) a tracer or converter stopped at, from its message."""
    text = str(e)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)[:160]
    if "data-dependent" in text.lower() or "GuardOnDataDependent" in type(e).__name__:
        m = _OP.search(text)
        return f"a data-dependent shape or branch{f' at {m.group(1)}' if m else ''} ({first})"
    m = _OP.search(text)
    return f"operator {m.group(1)} ({first})" if m else first


def export_program(part: Part, model_name: str) -> torch.export.ExportedProgram:
    """The part as an ExportedProgram with its dynamic axes (batch, sequence, nodes, ...)."""
    part.module.eval()
    try:
        with torch.no_grad():
            return torch.export.export(part.module, part.inputs, dynamic_shapes=part.dynamic_shapes(), strict=False)
    except NeuratlasError:
        raise
    except Exception as e:  # torch raises many types (Unsupported, UserError, GuardOnDataDependent, ...)
        raise NeuratlasError(f"{model_name} ({part.name}) cannot be traced for export: {why(e)}") from None
