"""Checkpoints: model weights in safetensors (with the config needed to rebuild the model in its metadata)
plus a trainer-state file (optimizer, scheduler, step, RNG) read with ``torch.load(weights_only=True)``.

A resumable checkpoint is one unit: a step folder ``checkpoints/step-NNNNNNNNN/`` (``model.safetensors`` +
``state.pt``) written under a temporary name and renamed when both files are complete, so a kill at any
instant leaves either the new folder or none; ``checkpoints/last.safetensors`` is a hard link to the newest
folder's weights (for ``eval``/``predict``), and the previous folder is kept as a fallback. Runs written
before step folders (``last.safetensors`` + ``last.state.pt``) still resume. Loading never executes code
from a file, and a file's declared sizes are checked before anything is allocated.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from neuratlas import __version__
from neuratlas.errors import NeuratlasError
from neuratlas.models.budget import TooLarge, bounded_construction

FORMAT = "neuratlas"


@dataclass
class Checkpoint:
    path: Path
    model_name: str
    model_config: dict[str, Any]
    run_config: dict[str, Any]
    extra: dict[str, Any]
    step: int

    def build_model(self) -> nn.Module:
        """Rebuild the model from its registered name and config, then load the weights.

        The metadata is data from the file, so it is checked against the file's own tensors before anything
        is allocated: the model is first built on the ``meta`` device (no memory) with its construction
        bounded (module count, parameter count), its tensors' shapes compared with the safetensors header,
        and only a model that fits is built for real. Weights that are not finite are refused."""
        from neuratlas.models import create_model

        options = _renamed_options(self.model_config)
        shapes = self.tensor_shapes()
        held = sum(math.prod(s) for s in shapes.values())
        try:
            with _bounded_construction(self.path, max_modules=8 * len(shapes) + 512, max_numel=held):
                with torch.device("meta"):
                    meta = create_model(self.model_name, **options)
        except NeuratlasError as e:  # the config's own validation: the file is what is wrong, so name it
            raise self._named(e) from None
        except Exception:  # a builder that cannot run on meta: the real build below is still bounded
            meta = None
        if meta is not None:
            _check_fits(self.path, self.model_name, meta, shapes, held)
        try:
            with _bounded_construction(self.path, max_modules=8 * len(shapes) + 512, max_numel=held):
                model = create_model(self.model_name, **options)
        except NeuratlasError as e:
            raise self._named(e) from None
        except Exception as e:  # the metadata is data from the file: whatever it makes a builder do is its fault
            raise NeuratlasError(
                f"{self.path}: its metadata does not build {self.model_name} ({type(e).__name__}: {str(e)[:200]})"
            ) from None
        try:
            missing, unexpected = load_model(model, str(self.path), strict=False)
        except (SafetensorError, RuntimeError) as e:
            raise NeuratlasError(f"{self.path}: weights do not fit {self.model_name}: {e}") from None
        if missing or unexpected:
            raise NeuratlasError(
                f"{self.path}: weights do not fit {self.model_name} "
                f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
            )
        bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise NeuratlasError(
                f"{self.path}: its weights hold NaN or infinite values ({len(bad)} tensors, "
                f"e.g. {bad[0]}); the run diverged or the file is damaged"
            )
        return model

    def _named(self, e: NeuratlasError) -> NeuratlasError:
        """An error about the metadata's model config, with the checkpoint's path in front (once)."""
        return (
            e
            if str(self.path) in str(e)
            else NeuratlasError(f"{self.path}: its metadata does not build {self.model_name}: {e}")
        )

    @property
    def task_name(self) -> str:
        """The task the weights were trained for (from the metadata, checked: the file is data)."""
        task = self.run_config.get("task")
        name = self.extra.get("task", task.get("name") if isinstance(task, dict) else None)
        if not isinstance(name, str) or not name:
            raise NeuratlasError(f"{self.path}: damaged Neuratlas metadata (it names no task)")
        return name

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each tensor's shape as the safetensors header declares it (nothing is read but the header)."""
        try:
            with safe_open(str(self.path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise NeuratlasError(f"{self.path} is not a readable safetensors file: {e}") from None


@contextmanager
def _bounded_construction(path: Path, max_modules: int, max_numel: int):
    """Stop a model's construction as soon as it registers more modules or parameter elements than the file
    could fill: a tiny file whose metadata declares a network of depth 10⁸ or width 10⁵ fails in
    milliseconds, not after minutes and gigabytes. Tied weights are registered twice, hence the slack."""
    try:
        with bounded_construction(max_modules, 2 * max_numel + (1 << 20)):
            yield
    except TooLarge as e:
        raise NeuratlasError(
            f"{path}: its metadata declares a model far larger than the file's weights "
            f"({e}; the file holds {max_numel:,} values); refused before allocating it"
        ) from None


def _check_fits(path: Path, name: str, meta: nn.Module, shapes: dict[str, tuple[int, ...]], held: int) -> None:
    """The meta-device model against the header: same shapes for the tensors both name, and no more values
    than the file holds (a model needing more would be missing weights)."""
    persistent = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    wrong = [k for k, shape in shapes.items() if k in persistent and persistent[k] != shape]
    unknown = [k for k in shapes if k not in persistent]
    needed = sum(p.numel() for p in meta.parameters())
    if wrong or unknown or needed > held:
        detail = (
            f"{wrong[0]} is {list(shapes[wrong[0]])} in the file, {list(persistent[wrong[0]])} in the model"
            if wrong
            else f"unexpected {sorted(unknown)[:5]}"
            if unknown
            else f"the model needs {needed:,} parameters, the file holds {held:,} values"
        )
        raise NeuratlasError(f"{path}: weights do not fit {name} ({detail}); refused before allocating it")


def _renamed_options(config: dict[str, Any]) -> dict[str, Any]:
    """Model options renamed since a checkpoint was written, mapped to their new names (speed switches only)."""
    config = dict(config)
    if "attn_fp32_on_cpu" in config:  # until 2026-12: a bool; now the kernel's name
        config["cpu_attention"] = "flash_fp32" if config.pop("attn_fp32_on_cpu") else "flash"
    return config


def _atomic(path: Path, write) -> None:
    """Write through a temp file in the same folder, flushed to disk, then rename: a reader sees the old
    file or the new one, never a part. A failed write (disk full, file-size limit) is one line naming the
    file, and whatever was at ``path`` before is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        try:
            write(tmp)
            _fsync(tmp)
        except (OSError, RuntimeError, SafetensorError) as e:
            # torch's own message for a short write is its C++ assertion text ("enforce fail at
            # inline_container.cc ... unexpected pos"), which says nothing to a user: name the failure instead
            reason = e.strerror or str(e) if isinstance(e, OSError) else f"the write stopped short ({type(e).__name__})"
            raise NeuratlasError(
                f"could not write {path}: {reason} (disk full or a file-size limit?); the "
                "previous file there is unchanged"
            ) from None
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_weights(path: Path, model: nn.Module, run_config: dict[str, Any], extra: dict[str, Any], step: int) -> Path:
    from neuratlas.models.registry import model_config_dict

    meta = {
        "format": FORMAT,
        "neuratlas_version": __version__,
        "model_name": model.model_name,
        "model_config": json.dumps(model_config_dict(model)),
        "run_config": json.dumps(run_config),
        "extra": json.dumps(extra),
        "step": str(step),
    }
    _atomic(path, lambda tmp: save_model(model, tmp, metadata=meta))
    return path


def save_state(path: Path, state: dict[str, Any]) -> Path:
    _atomic(path, lambda tmp: torch.save(state, tmp))
    return path


STEP_DIR = re.compile(r"^step-(\d{9})$")
WEIGHTS, STATE = "model.safetensors", "state.pt"
KEEP = 2  # complete step folders kept: the newest, and the one before as a fallback


def step_folders(ckpt_dir: Path) -> list[Path]:
    """The complete step folders in ``ckpt_dir`` (renamed into place, both files present), newest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), d)
        for d in ckpt_dir.iterdir()
        if (m := STEP_DIR.match(d.name)) and d.is_dir() and (d / WEIGHTS).is_file() and (d / STATE).is_file()
    ]
    return [d for _, d in sorted(found, reverse=True)]


def save_checkpoint(
    ckpt_dir: Path,
    model: nn.Module,
    run_config: dict[str, Any],
    extra: dict[str, Any],
    step: int,
    state: dict[str, Any],
) -> Path:
    """Write weights and trainer state as one unit (a step folder renamed into place once both are on
    disk), point ``last.safetensors`` at its weights and drop folders older than the previous one. Returns
    the path of ``last.safetensors``."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step-{step:09d}"
    if final not in step_folders(ckpt_dir):  # the same step saved again (an interrupt right after a save)
        tmp = Path(tempfile.mkdtemp(dir=ckpt_dir, prefix=f".{final.name}.", suffix=".tmp"))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # a folder like any other (mkdtemp makes it private)
        try:
            save_weights(tmp / WEIGHTS, model, run_config, extra, step)
            save_state(tmp / STATE, {**state, "step": step})
            if final.exists():  # an incomplete folder of that name (never ours: we rename complete ones)
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync(ckpt_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    last = ckpt_dir / "last.safetensors"
    _atomic(last, lambda t: _link_or_copy(final / WEIGHTS, Path(t)))
    (ckpt_dir / "last.state.pt").unlink(missing_ok=True)  # a layout-1 state would now be stale
    for old in step_folders(ckpt_dir)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_dir.glob(".step-*.tmp"):  # what a kill mid-save left behind
        shutil.rmtree(stale, ignore_errors=True)
    return last


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copyfile(src, dst)


def resumable(path: str | Path) -> tuple[Checkpoint, dict[str, Any]]:
    """The newest complete checkpoint under a run folder (or its ``checkpoints`` folder, or a file in it),
    with its trainer state. A step folder that cannot be read falls back to the one before, saying so;
    a run written before step folders resumes from ``last.safetensors`` + ``last.state.pt``."""
    p = Path(path)
    if p.is_file():
        folder = p.parent
        ckpt_dir = folder.parent if STEP_DIR.match(folder.name) else folder
    else:
        ckpt_dir = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    if p.is_file() and STEP_DIR.match(p.parent.name):
        candidates = [p.parent]
    elif p.is_file() and p.name != "last.safetensors":
        candidates = []  # a named file (best, a copy): resume from it alone, as before step folders
    else:
        candidates = step_folders(ckpt_dir)
    problems = []
    for folder in candidates:
        try:
            ckpt = read_checkpoint(folder / WEIGHTS)
            state = load_state(folder / STATE)
            if state.get("step") != ckpt.step:
                raise NeuratlasError(
                    f"{folder}: weights (step {ckpt.step}) and trainer state (step {state.get('step')}) disagree"
                )
        except NeuratlasError as e:
            problems.append(str(e))
            continue
        for problem in problems:
            print(f"warning: skipped a damaged checkpoint: {problem}; resuming from {folder.name}")
        return ckpt, state
    if problems:
        raise NeuratlasError(f"no readable checkpoint to resume in {ckpt_dir}: {'; '.join(problems)}")
    ckpt = read_checkpoint(p, prefer="last")  # a run written before step folders
    state = load_state(ckpt.path.with_name(ckpt.path.name.replace(".safetensors", ".state.pt")))
    if state.get("step") != ckpt.step:
        raise NeuratlasError(
            f"{ckpt.path}: weights (step {ckpt.step}) and trainer state (step "
            f"{state.get('step')}) disagree; the checkpoint is inconsistent"
        )
    return ckpt, state


def resolve_checkpoint(path: str | Path, prefer: str = "best") -> Path:
    """Accept a .safetensors file or a run folder (its ``checkpoints/{prefer}``, ``last``, or newest step)."""
    p = Path(path)
    if p.is_dir():
        for name in (prefer, "last", "best"):
            for cand in (p / "checkpoints" / f"{name}.safetensors", p / f"{name}.safetensors"):
                if cand.is_file():
                    return cand
        for ckpt_dir in (p / "checkpoints", p):
            if folders := step_folders(ckpt_dir):
                return folders[0] / WEIGHTS
        raise NeuratlasError(f"{p} holds no checkpoint (looked for checkpoints/{prefer}.safetensors)")
    if not p.is_file():
        raise NeuratlasError(f"checkpoint {p} does not exist")
    return p


def read_checkpoint(path: str | Path, prefer: str = "best") -> Checkpoint:
    p = resolve_checkpoint(path, prefer)
    with open(p, "rb") as f:
        head = f.read(16)
    # safetensors = 8-byte little-endian header length, then the JSON header ("{" at byte 8, whole or
    # truncated file); only a file that is not that is sniffed for a pickle: a header length whose low byte
    # is 0x80 must not read as pickle's PROTO opcode (zip: "PK" + a compression method, 0, at byte 8).
    if head[8:9] != b"{" and (head[:2] == b"PK" or head[:1] == b"\x80"):
        raise NeuratlasError(
            f"{p} is a pickled PyTorch file, not a safetensors checkpoint; Neuratlas refuses "
            "to unpickle it because that can execute code from the file"
        )
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise NeuratlasError(f"{p} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    if meta.get("format") != FORMAT:
        raise NeuratlasError(
            f"{p} is a safetensors file but not a Neuratlas checkpoint (no Neuratlas "
            "metadata); import foreign weights with the family's import function instead"
        )
    try:
        ckpt = Checkpoint(
            path=p,
            model_name=meta["model_name"],
            model_config=_json_map(meta["model_config"]),
            run_config=_json_map(meta["run_config"]),
            extra=_json_map(meta.get("extra", "{}")),
            step=int(meta.get("step", 0)),
        )
    except (KeyError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise NeuratlasError(f"{p}: damaged Neuratlas metadata ({type(e).__name__}: {str(e)[:200]})") from None
    if ckpt.step < 0:
        raise NeuratlasError(f"{p}: damaged Neuratlas metadata (step {ckpt.step})")
    return ckpt


def _json_map(text: str) -> dict[str, Any]:
    """A metadata entry that must be a JSON object: nesting is bounded (a 10,000-deep document is refused
    before the parser recurses), and a list, null or number is refused."""
    if len(text) > 1 << 20:
        raise ValueError(f"an entry of {len(text):,} characters")
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:  # bracket depth outside strings
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    if deepest > 64:
        raise ValueError(f"nesting {deepest} deep")
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def load_state(path: Path, max_bytes: int | None = None) -> dict[str, Any]:
    """A trainer-state file, read without executing code (``weights_only``) and without inflating it past
    ``max_bytes`` (default: 8 GiB): its zip entries' declared sizes are checked first, and compressed entries
    (which torch never writes) are refused, so a small file cannot expand into gigabytes."""
    if not path.is_file():
        raise NeuratlasError(
            f"trainer state {path} is missing; cannot resume (the weights alone can be evaluated or fine-tuned)"
        )
    limit = max_bytes if max_bytes is not None else 8 << 30
    try:
        with zipfile.ZipFile(path) as z:
            entries = z.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise NeuratlasError(
            f"trainer state {path} is unreadable (truncated or not a Neuratlas file): {type(e).__name__}"
        ) from None
    if any(e.compress_type != zipfile.ZIP_STORED for e in entries):
        raise NeuratlasError(
            f"trainer state {path} holds compressed entries, which Neuratlas never writes; "
            "refused (it could inflate to any size)"
        )
    if (total := sum(e.file_size for e in entries)) > limit:
        raise NeuratlasError(
            f"trainer state {path} declares {total / 2**30:.1f} GiB, over the limit of {limit / 2**30:.1f} GiB; refused"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/foreign files
        raise NeuratlasError(
            f"trainer state {path} is unreadable (truncated or not a Neuratlas file): {type(e).__name__}"
        ) from None
