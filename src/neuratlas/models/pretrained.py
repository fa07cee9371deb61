"""``model.save_pretrained(folder)`` and :func:`load_pretrained`: any registered model as a folder that
rebuilds it exactly, in the shape users know from Hugging Face.

The folder holds ``config.json`` (the registered name, its config, the task and the facts predicting needs:
class names, normalisation, ...), ``model.safetensors`` and, where the model has one, its tokenizer
(``tokenizer.json`` in the ``tokenizers`` format for BPE/WordPiece vocabularies). Loading never executes
code from the folder. :func:`save_pretrained` is attached to every registered model class by
:func:`~neuratlas.models.registry.register_model`, so families need no code of their own.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from neuratlas.errors import NeuratlasError

FORMAT = "neuratlas-pretrained"
CONFIG, WEIGHTS, TOKENIZER = "config.json", "model.safetensors", "tokenizer.json"


def save_pretrained(
    model: nn.Module,
    folder: str | Path,
    *,
    extra: dict[str, Any] | None = None,
    task: str | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``model`` to ``folder`` (config.json, model.safetensors, tokenizer.json where there is one).

    ``extra``/``task`` default to what the model was loaded with (a run's class names, tokenizer, ...).
    Written into a temporary folder and renamed, so an interrupted save leaves the old folder intact.
    Options that name weights to download (``pretrained``) are cleared: the folder holds the weights.
    """
    from neuratlas import __version__
    from neuratlas.config import to_dict

    if not hasattr(model, "model_name"):
        raise NeuratlasError(f"{type(model).__name__} was not built by create_model; it has no registered name")
    folder = Path(folder)
    if folder.exists() and not (overwrite and folder.is_dir()):
        raise NeuratlasError(f"{folder} already exists")
    extra = dict(getattr(model, "neuratlas_extra", {}) if extra is None else extra)
    task = task if task is not None else getattr(model, "neuratlas_task", None)
    config = to_dict(model.config)
    if isinstance(config, dict) and config.get("pretrained"):
        config["pretrained"] = ""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        tok = extra.get("tokenizer")
        if isinstance(tok, dict) and tok.get("kind") in ("hf", "bpe"):  # the tokenizers library's own file
            (tmp / TOKENIZER).write_text(tok["json"])
            extra["tokenizer"] = {"kind": tok["kind"], "file": TOKENIZER}
        meta = {
            "format": FORMAT,
            "neuratlas_version": __version__,
            "model_name": model.model_name,
            "model_config": config,
            "task": task,
            "extra": extra,
        }
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        save_model(model, str(tmp / WEIGHTS), metadata={"format": "pt"})
        for f in (tmp, *tmp.iterdir()):  # mkdtemp and safetensors create owner-only entries
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def is_pretrained_folder(path: str | Path) -> bool:
    p = Path(path) / CONFIG
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, OSError, AttributeError):
        return False


def load_pretrained(folder: str | Path) -> nn.Module:
    """The model saved by :func:`save_pretrained` in ``folder``, in eval mode, with ``neuratlas_task`` and
    ``neuratlas_extra`` restored (so ``neuratlas.predict`` can use it)."""
    from neuratlas.models.registry import create_model

    folder = Path(folder)
    try:
        meta = json.loads((folder / CONFIG).read_text())
        name, config = meta["model_name"], meta["model_config"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise NeuratlasError(f"{folder / CONFIG}: not a readable Neuratlas model config ({e})") from None
    if meta.get("format") != FORMAT:
        raise NeuratlasError(f"{folder / CONFIG} is not a Neuratlas model folder")
    model = create_model(name, **config)
    path = folder / WEIGHTS
    if not path.is_file():
        raise NeuratlasError(f"{folder} holds no {WEIGHTS}")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise NeuratlasError(f"{path}: weights do not fit {name}: {str(e).splitlines()[0]}") from None
    if missing or unexpected:
        raise NeuratlasError(
            f"{path}: weights do not fit {name} (missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    extra = dict(meta.get("extra") or {})
    tok = extra.get("tokenizer")
    if isinstance(tok, dict) and "file" in tok:
        try:
            extra["tokenizer"] = {"kind": tok["kind"], "json": (folder / TOKENIZER).read_text()}
        except OSError as e:
            raise NeuratlasError(f"{folder}: tokenizer file missing ({e})") from None
    model.neuratlas_extra, model.neuratlas_task = extra, meta.get("task")
    return model.eval()
