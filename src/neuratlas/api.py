"""The Python entry points a user starts from: :func:`train` (a recipe, with overrides), :func:`load_model`
(a saved folder, a run, a checkpoint, a Hugging Face folder or a registered name) and :func:`predict` (the
task's own prediction on what the user has: image files or arrays, strings, a CSV, ...).

```python
import neuratlas
model = neuratlas.load_model("runs/convnet-...")       # or a folder written by model.save_pretrained
print(neuratlas.predict(model, ["shoe.png", array]))   # the lines `neuratlas predict` prints
```
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from neuratlas.config import build_config
from neuratlas.errors import NeuratlasError


def train(recipe: str, overrides: dict[str, Any] | None = None) -> Path:
    """Train a named recipe (``neuratlas list --kind recipes``) as ``neuratlas train`` does and return the run
    folder; ``overrides`` are ``{"section.key": value}`` (e.g. ``{"trainer.epochs": 5}``)."""
    from neuratlas.paradigms import fit
    from neuratlas.recipes import get_recipe

    run = get_recipe(recipe).run_config({k: str(v) for k, v in (overrides or {}).items()})
    return fit(run, announce=False).run_dir


def load_model(source: str | Path) -> nn.Module:
    """A model in eval mode from ``source``:

    - a folder written by ``model.save_pretrained`` (config.json + model.safetensors);
    - a training run folder or a ``.safetensors`` checkpoint (its best weights);
    - a Hugging Face folder (BERT, GPT-2; the Llama family and GGUF files where the LLM import is present);
    - a registered model name (``neuratlas list``), built with its registered defaults.

    Models from a run or a saved folder remember their task and its facts (class names, tokenizer, input
    normalisation), so :func:`predict` can use them directly.
    """
    from neuratlas.models.pretrained import is_pretrained_folder, load_pretrained

    p = Path(source)
    if p.is_dir() and is_pretrained_folder(p):
        return load_pretrained(p)
    if p.is_dir() and (p / "config.json").is_file() and not (p / "checkpoints").is_dir():
        return _load_hf(p)
    if p.suffix == ".gguf":
        return _load_llm(p)
    if p.exists():
        from neuratlas.models.checkpoint import read_checkpoint

        ckpt = read_checkpoint(p)
        model = ckpt.build_model().eval()
        model.neuratlas_extra = ckpt.extra
        model.neuratlas_task = ckpt.extra.get("task", ckpt.run_config.get("task", {}).get("name"))
        return model
    from neuratlas.models import MODELS, create_model

    if str(source) in MODELS:
        return create_model(str(source)).eval()
    raise NeuratlasError(
        f"{source} is neither a saved model folder, a run, a checkpoint, a Hugging Face folder "
        "nor a registered model name (`neuratlas list --kind models`)"
    )


def _load_hf(folder: Path) -> nn.Module:
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (json.JSONDecodeError, OSError, AttributeError) as e:
        raise NeuratlasError(f"{folder / 'config.json'} is not readable JSON ({e})") from None
    if model_type == "bert":
        from neuratlas.weights import load_hf_bert

        return load_hf_bert(folder).eval()
    if model_type == "gpt2":
        from neuratlas.weights import load_hf_gpt2

        return load_hf_gpt2(folder).eval()
    return _load_llm(folder)


def _load_llm(path: Path) -> nn.Module:
    try:
        from neuratlas.weights import load_llm
    except ImportError:
        raise NeuratlasError(f"{path}: only BERT and GPT-2 Hugging Face folders load here") from None
    return load_llm(path).eval()


def predict(model: nn.Module, inputs: Any, out_dir: str | Path = "predictions", **options: Any) -> list[str]:
    """Run the model's task prediction on ``inputs`` and return the lines ``neuratlas predict`` prints.

    ``inputs``: one item or a list of image paths, numpy arrays / tensors of images ((H, W), (C, H, W) or
    (H, W, C); uint8 or floats in [0, 1]), strings (text, SMILES molecules), CSV paths (tasks that read
    tables), node ids (node classification on the run's graph), or what the task documents. ``options``
    are the task's (e.g. ``invert=True`` for white-background images). Pictures the task draws go to
    ``out_dir``.
    """
    from neuratlas.tasks import TASKS

    task = getattr(model, "neuratlas_task", None)
    if not task:
        raise NeuratlasError(
            "this model has no task (it was built by name, not trained): load a run or a saved "
            "folder with neuratlas.load_model to predict"
        )
    items = list(inputs) if isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes)) else [inputs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task_cls = TASKS.get(task).builder
    opts = build_config(task_cls.PredictOptions, options, where=f"predict ({task})")
    with tempfile.TemporaryDirectory() as tmp:
        paths = [_as_input(x, Path(tmp) / f"input-{i}.npy") for i, x in enumerate(items)]
        lines = task_cls.predict(model, getattr(model, "neuratlas_extra", {}), paths, str(out), opts)
    for i, (x, path) in enumerate(zip(items, paths)):  # arrays are named by their place, not the temp file
        if not isinstance(x, (str, Path, int)):
            lines = [line.replace(path, f"array {i}") for line in lines]
    return lines


def _as_input(x: Any, npy: Path) -> str:
    """Tasks read their inputs from strings (file paths or text); arrays are handed over as .npy files."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        np.save(npy, x, allow_pickle=False)
        return str(npy)
    if isinstance(x, (str, Path, int)):  # int: a node id of a node-classification run's graph
        return str(x)
    raise NeuratlasError(f"cannot predict on a {type(x).__name__}: give file paths, strings, node ids or numpy arrays")
