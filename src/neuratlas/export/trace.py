"""``torch.export`` of one part, with the failure told in one line that names the operator."""

from __future__ import annotations

import re
import traceback
from pathlib import Path

import torch

from neuratlas.errors import NeuratlasError
from neuratlas.export.parts import Part

_OP = re.compile(r"(aten[.:]{1,2}[A-Za-z_0-9]+(?:\.[A-Za-z_0-9]+)?|torch\.ops\.[A-Za-z_0-9.]+)")


def _where(e: BaseException) -> str:
    """``file.py:line `code``` of the model code the failure came from: the call export names, or the last
    frame of the traceback inside Neuratlas (outside this package)."""
    m = re.search(r"The following call raised this error:\s*File \"([^\"]+)\", line (\d+), in \w+\s*\n\s*(.+)", str(e))
    if m:
        return f"{Path(m.group(1)).name}:{m.group(2)} `{m.group(3).strip()[:80]}`"
    frames = [
        f
        for f in traceback.extract_tb(e.__traceback__)
        if "/neuratlas/" in f.filename and "/neuratlas/export/" not in f.filename
    ]
    if frames:
        f = frames[-1]
        return f"{Path(f.filename).name}:{f.lineno} `{(f.line or '').strip()[:80]}`"
    return ""


def why(e: BaseException) -> str:
    """The operator (or construct) a tracer or converter stopped at, and where in the model, from the error."""
    text = str(e)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)[:120]
    where = _where(e)
    at = f" at {where}" if where else ""
    if "data-dependent" in text.lower() or "GuardOnDataDependent" in type(e).__name__:
        return f"a shape or branch that depends on the input's values{at} ({first})"
    m = _OP.search(text)
    return f"operator {m.group(1)}{at} ({first})" if m else f"{first}{at}"


def export_program(part: Part, model_name: str) -> torch.export.ExportedProgram:
    """The part as an ExportedProgram with its dynamic axes (batch, sequence, nodes, ...)."""
    part.module.eval()
    try:
        with torch.no_grad():
            return torch.export.export(part.module, part.inputs, dynamic_shapes=part.dynamic_shapes(), strict=False)
    except NeuratlasError as e:  # the model's own refusal to trace (it names the operator)
        raise NeuratlasError(f"{model_name} ({part.name}) cannot be traced for export: {e}") from None
    except Exception as e:  # torch raises many types (Unsupported, UserError, GuardOnDataDependent, ...)
        raise NeuratlasError(f"{model_name} ({part.name}) cannot be traced for export: {why(e)}") from None
