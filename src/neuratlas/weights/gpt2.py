"""GPT-2 in Hugging Face format onto Neuratlas' :class:`~neuratlas.models.gpt.GPT`: Conv1D weights transposed,
the fused QKV kept fused, the vocabulary padded, embeddings tied."""

from __future__ import annotations

from pathlib import Path

import torch

from neuratlas.errors import NeuratlasError
from neuratlas.models.gpt import GPT, GPTConfig
from neuratlas.weights.hf import read_hf_state_dict


def gpt2_config(hf: dict, **overrides) -> GPTConfig:
    """The GPTConfig whose switches match a GPT-2 config.json: pre-LayerNorm, learned positions,
    tanh-GELU, biases, tied embeddings."""
    act = hf.get("activation_function", "gelu_new")
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        max_seq_len=hf["n_positions"],
        dim=hf["n_embd"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        norm="pre_layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        positions="learned",
        ffn="gelu" if act == "gelu" else "gelu_tanh",
        bias=True,
        tie_embeddings=True,
        dropout=0.0,
        **overrides,
    )


# GPT-2's (and nanoGPT's) names for the parts of one block -> ours
GPT2_BLOCK_NAMES = {
    "ln_1": "norm1",
    "ln_2": "norm2",
    "attn.c_attn": "attn.qkv",
    "attn.c_proj": "attn.proj",
    "mlp.c_fc": "ffn.fc1",
    "mlp.c_proj": "ffn.fc2",
}


def load_hf_gpt2(folder: str | Path, **overrides) -> GPT:
    """Build a Neuratlas GPT from a Hugging Face GPT-2 folder (config.json + weights)."""
    hf, sd = read_hf_state_dict(folder)
    if hf.get("model_type") != "gpt2":
        raise NeuratlasError(f"{folder}: model_type is {hf.get('model_type')!r}, expected 'gpt2'")
    cfg = gpt2_config(hf, **overrides)
    model = GPT(cfg)
    model.model_name, model.config = "gpt2-small", cfg
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    v, pv = cfg.vocab_size, cfg.padded_vocab_size
    wte = torch.zeros(pv, cfg.dim)
    wte[:v] = sd["wte.weight"]
    new = {
        "embed.tok.weight": wte,
        "embed.pos.weight": sd["wpe.weight"],
        "transformer.norm.weight": sd["ln_f.weight"],
        "transformer.norm.bias": sd["ln_f.bias"],
    }
    for i in range(cfg.n_layer):
        for src, dst in GPT2_BLOCK_NAMES.items():
            w, b = sd[f"h.{i}.{src}.weight"], sd[f"h.{i}.{src}.bias"]
            new[f"transformer.blocks.{i}.{dst}.weight"] = w if src.startswith("ln") else w.t()  # Conv1D is (in, out)
            new[f"transformer.blocks.{i}.{dst}.bias"] = b
    new["head.weight"] = wte
    missing, unexpected = model.load_state_dict(new, strict=False)
    if missing or unexpected:
        raise NeuratlasError(f"{folder}: GPT-2 weights do not map (missing {missing[:4]}, unexpected {unexpected[:4]})")
    return model
