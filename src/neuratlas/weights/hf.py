"""Hugging Face model folders: ``config.json`` plus ``model.safetensors`` (or a ``pytorch_model.bin`` read
weights-only, so nothing in the file runs)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from neuratlas.errors import NeuratlasError


def read_hf_state_dict(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, tensors) of a Hugging Face model folder; safetensors first, .bin weights-only."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise NeuratlasError(f"{folder} is not a Hugging Face model folder (no config.json)")
    config = json.loads(cfg_path.read_text())
    st, binf = folder / "model.safetensors", folder / "pytorch_model.bin"
    if st.is_file():
        from safetensors.torch import load_file

        return config, load_file(str(st))
    if binf.is_file():
        return config, torch.load(binf, map_location="cpu", weights_only=True)
    raise NeuratlasError(f"{folder} holds no model.safetensors or pytorch_model.bin")
