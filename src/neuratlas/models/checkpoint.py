"""Checkpoints: model weights in safetensors (with the config needed to rebuild the model in its metadata)
plus a trainer-state file (optimizer, scheduler, step, RNG) read with ``torch.load(weights_only=True)``.

Both are written atomically (temp file + rename), so an interruption never leaves a half-written
checkpoint; loading never executes code from a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from neuratlas import __version__
from neuratlas.errors import NeuratlasError

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
        """Rebuild the model from its registered name and config, then load the weights."""
        from neuratlas.models import create_model

        model = create_model(self.model_name, **_renamed_options(self.model_config))
        try:
            missing, unexpected = load_model(model, str(self.path), strict=False)
        except (SafetensorError, RuntimeError) as e:
            raise NeuratlasError(f"{self.path}: weights do not fit {self.model_name}: {e}") from None
        if missing or unexpected:
            raise NeuratlasError(f"{self.path}: weights do not fit {self.model_name} "
                                 f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
        return model


def _renamed_options(config: dict[str, Any]) -> dict[str, Any]:
    """Model options renamed since a checkpoint was written, mapped to their new names (speed switches only)."""
    config = dict(config)
    if "attn_fp32_on_cpu" in config:  # until 2026-12: a bool; now the kernel's name
        config["cpu_attention"] = "flash_fp32" if config.pop("attn_fp32_on_cpu") else "flash"
    return config


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_weights(path: Path, model: nn.Module, run_config: dict[str, Any], extra: dict[str, Any],
                 step: int) -> Path:
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


def resolve_checkpoint(path: str | Path, prefer: str = "best") -> Path:
    """Accept a .safetensors file or a run folder (its ``checkpoints/{prefer}`` or ``last``)."""
    p = Path(path)
    if p.is_dir():
        for name in (prefer, "last", "best"):
            for cand in (p / "checkpoints" / f"{name}.safetensors", p / f"{name}.safetensors"):
                if cand.is_file():
                    return cand
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
        raise NeuratlasError(f"{p} is a pickled PyTorch file, not a safetensors checkpoint; Neuratlas refuses "
                             "to unpickle it because that can execute code from the file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise NeuratlasError(f"{p} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    if meta.get("format") != FORMAT:
        raise NeuratlasError(f"{p} is a safetensors file but not a Neuratlas checkpoint (no Neuratlas "
                             "metadata); import foreign weights with the family's import function instead")
    try:
        return Checkpoint(path=p, model_name=meta["model_name"], model_config=json.loads(meta["model_config"]),
                          run_config=json.loads(meta["run_config"]), extra=json.loads(meta.get("extra", "{}")),
                          step=int(meta.get("step", 0)))
    except (KeyError, json.JSONDecodeError) as e:
        raise NeuratlasError(f"{p}: damaged Neuratlas metadata ({e})") from None


def load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise NeuratlasError(f"trainer state {path} is missing; cannot resume (the weights alone can be "
                             "evaluated or fine-tuned)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/foreign files
        raise NeuratlasError(f"trainer state {path} is unreadable (truncated or not a Neuratlas file): "
                             f"{type(e).__name__}") from None
