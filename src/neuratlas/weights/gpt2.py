"""GPT-2 in Hugging Face format onto Neuratlas' :class:`~neuratlas.models.gpt.GPT`: Conv1D weights transposed,
the fused QKV kept fused, the vocabulary padded, embeddings tied."""

from __future__ import annotations

from pathlib import Path

from neuratlas.errors import NeuratlasError
from neuratlas.models.gpt import GPT, GPTConfig
from neuratlas.weights.hf import KeyMap, hf_to_ours, read_hf_state_dict


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


def gpt2_key_map(cfg: GPTConfig) -> list[KeyMap]:
    """Our GPT's tensors in a GPT-2 ``transformer.*`` state dict (the LM head is tied to ``wte``)."""
    maps = [
        KeyMap("embed.tok.weight", ("wte.weight",), rows=cfg.vocab_size),
        KeyMap("embed.pos.weight", ("wpe.weight",)),
        KeyMap("transformer.norm.weight", ("ln_f.weight",)),
        KeyMap("transformer.norm.bias", ("ln_f.bias",)),
    ]
    for i in range(cfg.n_layer):
        for src, dst in GPT2_BLOCK_NAMES.items():
            maps.append(
                KeyMap(
                    f"transformer.blocks.{i}.{dst}.weight", (f"h.{i}.{src}.weight",), transpose=not src.startswith("ln")
                )
            )  # Conv1D is (in, out)
            maps.append(KeyMap(f"transformer.blocks.{i}.{dst}.bias", (f"h.{i}.{src}.bias",)))
    return maps


def load_hf_gpt2(folder: str | Path, **overrides) -> GPT:
    """Build a Neuratlas GPT from a Hugging Face GPT-2 folder (config.json + weights)."""
    hf, sd = read_hf_state_dict(folder)
    if hf.get("model_type") != "gpt2":
        raise NeuratlasError(f"{folder}: model_type is {hf.get('model_type')!r}, expected 'gpt2'")
    cfg = gpt2_config(hf, **overrides)
    model = GPT(cfg)
    model.model_name, model.config = "gpt2-small", cfg
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    try:
        new = hf_to_ours(gpt2_key_map(cfg), sd, shapes)
    except KeyError as e:
        raise NeuratlasError(f"{folder}: GPT-2 weights do not map (missing {e})") from None
    new["head.weight"] = new["embed.tok.weight"]
    missing, unexpected = model.load_state_dict(new, strict=False)
    if missing or unexpected:
        raise NeuratlasError(f"{folder}: GPT-2 weights do not map (missing {missing[:4]}, unexpected {unexpected[:4]})")
    return model
