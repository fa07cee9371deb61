"""nanoGPT's ``ckpt.pt`` onto Neuratlas' :class:`~neuratlas.models.gpt.GPT` (same layout, other names)."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from neuratlas.errors import NeuratlasError
from neuratlas.models.gpt import GPT, GPTConfig
from neuratlas.weights.gpt2 import GPT2_BLOCK_NAMES


def load_nanogpt(path: str | Path, **overrides) -> GPT:
    """Build a Neuratlas GPT from a nanoGPT ``ckpt.pt`` (its ``model_args`` and ``model`` state dict).

    Read with ``torch.load(weights_only=True)``, so nothing in the file runs. nanoGPT's layout is ours with
    other names (``c_attn`` is the fused QKV, weights stored (out, in) like ``nn.Linear``); its vocabulary
    is used unpadded, so logits equal nanoGPT's.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        args, sd = ckpt["model_args"], ckpt["model"]
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, KeyError, TypeError) as e:
        why = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise NeuratlasError(f"{path}: not a readable nanoGPT checkpoint ({why})") from None
    sd = {k.removeprefix("_orig_mod."): v for k, v in sd.items()}  # saved from a torch.compile'd model
    cfg = GPTConfig(
        **{
            "vocab_size": args["vocab_size"],
            "max_seq_len": args["block_size"],
            "dim": args["n_embd"],
            "n_layer": args["n_layer"],
            "n_head": args["n_head"],
            "bias": args["bias"],
            "dropout": 0.0,
            "ffn": "gelu",
            "pad_vocab_multiple": 1,
            **overrides,
        }
    )
    model = GPT(cfg)
    new = {
        "embed.tok.weight": sd["transformer.wte.weight"],
        "embed.pos.weight": sd["transformer.wpe.weight"],
        "head.weight": sd["lm_head.weight"],
    }
    for key, value in sd.items():
        if key.startswith("transformer.ln_f."):
            new["transformer.norm." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("transformer.h."):
            _, _, i, rest = key.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            if module in GPT2_BLOCK_NAMES:
                new[f"transformer.blocks.{i}.{GPT2_BLOCK_NAMES[module]}.{kind}"] = value
    missing, unexpected = model.load_state_dict(new, strict=False)
    if missing or unexpected:
        raise NeuratlasError(f"{path}: nanoGPT weights do not map (missing {missing[:4]}, unexpected {unexpected[:4]})")
    return model
