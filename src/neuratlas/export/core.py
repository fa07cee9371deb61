"""``export_model`` / ``export_run``: a model or a training run written as ONNX, a torch.export program or a
Hugging Face folder, checked against the eager model before the folder appears.

Everything is written into a temporary folder beside the destination and renamed into place at the end, so
an export that fails (an operator that does not trace, a parity check that fails) leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.export.check import Check, on_device
from neuratlas.export.parts import Inputs, Part, parts

FORMATS = ("onnx", "pt2", "hf")
SUFFIX = {"onnx": ".onnx", "pt2": ".pt2"}


@dataclass
class ExportResult:
    out: Path
    format: str
    files: list[str]
    checks: list[Check] = field(default_factory=list)
    example: str = ""  # where the checked inputs came from

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise NeuratlasError(f"unsupported export format {fmt!r}; choose from {', '.join(FORMATS)}")
    return fmt


@contextlib.contextmanager
def atomic_folder(out: Path, force: bool = False):
    """Yield a temporary folder that becomes ``out`` when the block succeeds (and vanishes when it fails).
    An existing ``out`` is refused unless ``force``; then it is replaced only after the new one is complete."""
    out = Path(out)
    if out.exists() and not force:
        raise NeuratlasError(f"{out} already exists; choose another --out or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise NeuratlasError(f"{out} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        for f in (tmp, *tmp.iterdir()):  # mkdtemp and safetensors create owner-only entries
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _describe(part: Part) -> dict[str, Any]:
    def shape(t: torch.Tensor, axes: dict[int, str]) -> list[Any]:
        return [axes.get(i, n) for i, n in enumerate(t.shape)]

    return {
        "inputs": [
            {"name": n, "shape": shape(t, a), "dtype": str(t.dtype).removeprefix("torch.")}
            for n, t, a in zip(part.input_names, part.inputs, part.dynamic)
        ],
        "outputs": part.output_names,
        "notes": part.notes,
    }


def export_model(
    model: nn.Module,
    fmt: str,
    out: str | Path,
    example: Inputs | None = None,
    *,
    force: bool = False,
    timing: bool = True,
    example_source: str = "",
    tokenizer: dict[str, Any] | None = None,
    device: torch.device | None = None,
) -> ExportResult:
    """Write ``model`` to the folder ``out`` as ``onnx`` (one ``.onnx`` per part), ``pt2`` (one
    ``torch.export`` program per part) or ``hf`` (a Hugging Face folder: BERT and GPT-2 layouts), checked
    against the eager model on ``example`` (the arguments of ``model.forward``; default: the model's
    ``dummy_input()``). A check above tolerance raises, and then nothing is written. ``tokenizer`` (a
    Neuratlas tokenizer's ``to_dict()``) goes into Hugging Face folders as ``tokenizer.json``. ``device``:
    where the check runs the files and the eager model (default: where the model is, which is also where the
    files are traced)."""
    check_format(fmt)
    model.eval()
    result = ExportResult(Path(out), fmt, [], example=example_source or "the model's example input")
    with atomic_folder(Path(out), force) as tmp:
        if fmt == "hf":
            from neuratlas.export import hf

            result.checks = hf.save(model, tmp, tokenizer, device=device)
        else:
            result.checks = write_parts(model, (fmt,), tmp, example, timing=timing, device=device)
        result.files = sorted(p.name for p in tmp.iterdir())
    return result


@contextlib.contextmanager
def moved(model: nn.Module, part: Part, device: torch.device | None):
    """``part`` with ``model`` (its module's weights) and its inputs on ``device`` for the length of the
    block; the model goes back where it was afterwards, so the next part is traced there again."""
    if device is None:
        yield part
        return
    with on_device(model, device):
        yield replace(part, inputs=tuple(t.to(device) for t in part.inputs))


def write_parts(
    model: nn.Module,
    formats: tuple[str, ...],
    folder: Path,
    example: Inputs | None = None,
    timing: bool = True,
    device: torch.device | None = None,
) -> list[Check]:
    """Trace each part of ``model`` once, write it in every format of ``formats`` (onnx, pt2) into
    ``folder`` with an ``export.json`` manifest, and check every file (on ``device``: the model and the
    file both run there; default: where the model is); raises when a check fails."""
    from neuratlas.export.trace import export_program

    name = getattr(model, "model_name", type(model).__name__)
    manifest: dict[str, Any] = {"model_name": name, "files": {}}
    checks = []
    try:
        for part in parts(model, example):
            program = export_program(part, name)
            for fmt in formats:
                module = importlib.import_module(f"neuratlas.export.{fmt}")
                path = folder / f"{part.name}{SUFFIX[fmt]}"
                module.save(program, part, path, name)
                with moved(model, part, device) as there:
                    c = module.verify(path, there, timing, device)
                if not c.ok:
                    raise NeuratlasError(f"{name}: {c.line()}; nothing written")
                checks.append(c)
                manifest["files"][path.name] = {**_describe(part), "check": asdict(c)}
    finally:
        _clear_caches(model)
    (folder / "export.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return checks


def _clear_caches(model: nn.Module) -> None:
    """Forget per-size caches filled while tracing (a detector's priors), so no traced value is reused."""
    for m in model.modules():
        cache = getattr(m, "_prior_cache", None)
        if isinstance(cache, dict):
            cache.clear()


# --- runs ------------------------------------------------------------------------------------------------


class _Captured(Exception):
    pass


def validation_example(model: nn.Module, run_config: dict[str, Any]) -> Inputs:
    """The inputs of the model's first call when the run's task evaluates its validation split (a real batch
    of the run's own data, prepared exactly as evaluation prepares it)."""
    from neuratlas.models.clip import CLIP
    from neuratlas.tasks import build_task
    from neuratlas.training.config import RunConfig

    run = RunConfig.from_dict(run_config)
    task = build_task(run.task, run.data, run.trainer.seed)
    targets = {"visual": model.visual, "text": model.text} if isinstance(model, CLIP) else {"model": model}
    seen: dict[str, tuple] = {}

    def hook(key):
        def fn(module, args, kwargs):
            seen.setdefault(key, tuple(args) + tuple(kwargs.values()))
            if len(seen) == len(targets):
                raise _Captured

        return fn

    handles = [m.register_forward_pre_hook(hook(k), with_kwargs=True) for k, m in targets.items()]
    try:
        with torch.no_grad():
            task.evaluate(model, "val", contextlib.nullcontext())
    except _Captured:
        pass
    finally:
        for h in handles:
            h.remove()
    if len(seen) < len(targets):
        raise NeuratlasError("the validation pass never called the model")
    if isinstance(model, CLIP):
        return seen["visual"][0], seen["text"][0]
    return seen["model"]


def default_out(run: str | Path, fmt: str) -> Path:
    p = Path(run)
    base = p if p.is_dir() else p.parent.parent if p.parent.name == "checkpoints" else p.parent
    return base / "export" / fmt


def export_run(
    run: str | Path,
    fmt: str,
    out: str | Path | None = None,
    *,
    force: bool = False,
    device: torch.device | None = None,
) -> ExportResult:
    """Export a run's best checkpoint (or a .safetensors checkpoint), checked on the run's validation batch
    (on ``device``; the CPU by default)."""
    from neuratlas.models.checkpoint import read_checkpoint

    check_format(fmt)
    ckpt = read_checkpoint(run)
    model = ckpt.build_model().eval()
    source = f"{ckpt.path.name} on its run's validation batch"
    example = None
    if fmt != "hf":
        try:
            example = validation_example(model, ckpt.run_config)
        except NeuratlasError as e:
            source = f"the model's example input (the run's validation data is unavailable: {e})"
    out = Path(out) if out else default_out(run, fmt)
    return export_model(
        model,
        fmt,
        out,
        example,
        force=force,
        example_source=source,
        tokenizer=ckpt.extra.get("tokenizer"),
        device=device,
    )
