"""Hugging Face model folders: ``config.json`` plus ``model.safetensors`` (or a ``pytorch_model.bin`` read
weights-only, so nothing in the file runs), and :class:`KeyMap`, the correspondence between their tensors and
ours, read one way to import and the other way to export."""

from __future__ import annotations

import json
from dataclasses import dataclass
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


@dataclass(frozen=True)
class KeyMap:
    """One of our tensors and where it lives in a Hugging Face state dict: concatenated on dim 0 from
    ``theirs`` (BERT's separate query/key/value into our fused QKV), transposed (GPT-2's Conv1D stores
    (in, out)), and with only the first ``rows`` rows real (our vocabulary tables are padded).

    A list of these is the whole correspondence, read one way to import and the other way to export.
    """

    ours: str
    theirs: tuple[str, ...]
    transpose: bool = False
    rows: int | None = None


def hf_to_ours(maps: list[KeyMap], sd: dict[str, torch.Tensor], shapes: dict[str, torch.Size]) -> dict:
    """Our state dict from a Hugging Face one (``shapes``: our tensors' shapes, for the padded rows)."""
    out = {}
    for m in maps:
        t = torch.cat([sd[k] for k in m.theirs]) if len(m.theirs) > 1 else sd[m.theirs[0]]
        t = t.t() if m.transpose else t
        if m.rows is not None and shapes[m.ours][0] != t.shape[0]:
            padded = t.new_zeros(shapes[m.ours])
            padded[: t.shape[0]] = t
            t = padded
        out[m.ours] = t
    return out


def ours_to_hf(maps: list[KeyMap], sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face state dict from ours: the inverse of :func:`hf_to_ours` (fused tensors split evenly)."""
    out = {}
    for m in maps:
        t = sd[m.ours]
        t = t[: m.rows] if m.rows is not None else t
        t = t.t() if m.transpose else t
        for k, piece in zip(m.theirs, t.chunk(len(m.theirs))):
            out[k] = piece.contiguous().clone()
    return out
