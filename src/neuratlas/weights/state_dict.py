"""Copy the tensors that fit from a Neuratlas checkpoint or a state dict into a model: the primitive under
every weight import and under fine-tuning from a checkpoint."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import torch
from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.models.checkpoint import read_checkpoint


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Fit a (out, C, k, k) first-conv kernel to ``in_chans`` channels: sum RGB for grey input (the response
    to a grey image is unchanged), or tile and rescale for more channels."""
    c = weight.shape[1]
    if c == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(1, keepdim=True)
    reps = -(-in_chans // c)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (c / in_chans)


def load_pretrained(
    model: nn.Module, source: str | Path | dict[str, torch.Tensor], skip: tuple[str, ...] = ()
) -> dict[str, list[str]]:
    """Copy tensors from a Neuratlas checkpoint (file or run folder) or a state dict into ``model``.

    Tensors whose name matches a ``skip`` glob, or whose shape differs (a new head), keep the model's own
    initialisation; a first conv with a different channel count is adapted. Returns what happened.
    """
    if isinstance(source, dict):
        state, where = source, "state dict"
    else:
        from safetensors.torch import load_file

        ckpt = read_checkpoint(source)
        state, where = load_file(str(ckpt.path)), str(ckpt.path)
    own = model.state_dict()
    loaded, reshaped, skipped = [], [], []
    with torch.no_grad():
        for name, value in state.items():
            if name not in own or any(fnmatch.fnmatchcase(name, s) for s in skip):
                skipped.append(name)
                continue
            target = own[name]
            if (
                value.shape != target.shape
                and value.ndim == 4
                and value.shape[0] == target.shape[0]
                and value.shape[2:] == target.shape[2:]
            ):
                value = adapt_input_conv(value, target.shape[1])
                reshaped.append(name)
            if value.shape != target.shape:
                skipped.append(name)
                continue
            target.copy_(value.to(target.dtype))
            loaded.append(name)
    if not loaded:
        raise NeuratlasError(
            f"{where}: no tensor fits {getattr(model, 'model_name', type(model).__name__)} "
            f"(first names there: {list(state)[:3]}, here: {list(own)[:3]}); is it a "
            "checkpoint of the same model family?"
        )
    missing = [n for n in own if n not in set(loaded)]
    return {"loaded": loaded, "adapted": reshaped, "skipped": skipped, "kept_init": missing}
