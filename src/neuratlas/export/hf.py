"""Hugging Face folders (config.json, model.safetensors, tokenizer files) for BERT/MiniLM and GPT-2.

The tensors are renamed with the same :class:`~neuratlas.models.gpt.KeyMap` lists that import Hugging Face
weights, read the other way, so import and export cannot drift apart. The folder is checked by loading it
with ``transformers``' ``AutoModel*`` classes (when installed) and comparing outputs with the eager model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.export.check import Check, max_diff, on_device
from neuratlas.text.tokenizers import bytes_to_unicode

# transformers' BERT activation names for ours (the inverse of bert_config's)
_BERT_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def _require(ok: bool, name: str, what: str) -> None:
    if not ok:
        raise NeuratlasError(f"{name} cannot be written as a Hugging Face folder: {what}")


def bert_folder(model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """(config.json, state dict, Auto class) of a BERT: masked-LM head -> BertForMaskedLM, [CLS]-pooled
    classifier -> BertForSequenceClassification, mean pooling (sentence encoders) -> BertModel."""
    from neuratlas.weights.bert import bert_key_map
    from neuratlas.weights.hf import ours_to_hf

    cfg, name = model.cfg, getattr(model, "model_name", "BERT")
    _require(
        cfg.norm == "post_layernorm"
        and cfg.positions == "learned"
        and cfg.embed_norm
        and cfg.bias
        and cfg.n_kv_head == cfg.n_head
        and cfg.ffn in _BERT_ACT
        and cfg.type_vocab_size > 0,
        name,
        "transformers' BERT needs post-LayerNorm, learned positions, segment embeddings, biases and "
        f"multi-head attention (this model: {cfg.norm}, {cfg.positions}, ffn {cfg.ffn})",
    )
    encoder_only = cfg.pooling == "mean" and not cfg.num_classes  # a sentence encoder (MiniLM)
    mlm = not cfg.num_classes and not encoder_only
    classifier = bool(cfg.num_classes) and model.pooler is not None
    _require(
        not cfg.num_classes or classifier,
        name,
        "a classifier on mean-pooled tokens has no transformers class; export it as onnx or pt2",
    )
    _require(
        not mlm or cfg.tie_embeddings, name, "transformers' BertForMaskedLM ties the decoder to the word embeddings"
    )
    arch, auto = (
        ("BertModel", "AutoModel")
        if encoder_only
        else ("BertForMaskedLM", "AutoModelForMaskedLM")
        if mlm
        else ("BertForSequenceClassification", "AutoModelForSequenceClassification")
    )
    maps = bert_key_map(cfg, pooler=model.pooler is not None and not mlm, mlm=mlm, classifier=classifier)
    sd = ours_to_hf(maps, model.state_dict())
    if not encoder_only:  # the task models keep the encoder under bert.*
        sd = {(k if k.startswith(("cls.", "classifier.")) else f"bert.{k}"): v for k, v in sd.items()}
    config = {
        "architectures": [arch],
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "intermediate_size": cfg.ffn_dim,
        "hidden_act": _BERT_ACT[cfg.ffn],
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.dropout if cfg.attn_dropout is None else cfg.attn_dropout,
        "max_position_embeddings": cfg.max_seq_len,
        "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.norm_eps,
        "initializer_range": cfg.init_std,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }
    if classifier:
        config["num_labels"] = cfg.num_classes
    return config, sd, auto


def gpt2_folder(model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """(config.json, state dict, Auto class) of a GPT in GPT-2's layout -> GPT2LMHeadModel."""
    from neuratlas.weights.gpt2 import gpt2_key_map
    from neuratlas.weights.hf import ours_to_hf

    cfg, name = model.cfg, getattr(model, "model_name", "GPT")
    _require(
        cfg.norm == "pre_layernorm"
        and cfg.positions == "learned"
        and cfg.ffn in ("gelu", "gelu_tanh")
        and cfg.bias
        and cfg.tie_embeddings
        and cfg.n_kv_head == cfg.n_head
        and not cfg.embed_norm
        and not cfg.scale_embeddings
        and not cfg.type_vocab_size,
        name,
        "transformers' GPT-2 needs pre-LayerNorm, learned positions, GELU, biases, tied embeddings and "
        f"multi-head attention (this model: {cfg.norm}, {cfg.positions}, ffn {cfg.ffn}, "
        f"{cfg.n_kv_head}/{cfg.n_head} KV heads, bias {cfg.bias})",
    )
    sd = {f"transformer.{k}": v for k, v in ours_to_hf(gpt2_key_map(cfg), model.state_dict()).items()}
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_seq_len,
        "n_embd": cfg.dim,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.ffn_dim,
        "activation_function": "gelu_new" if cfg.ffn == "gelu_tanh" else "gelu",
        "layer_norm_epsilon": cfg.norm_eps,
        "initializer_range": cfg.init_std,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout if cfg.attn_dropout is None else cfg.attn_dropout,
        "tie_word_embeddings": True,
        "bos_token_id": cfg.vocab_size - 1,
        "eos_token_id": cfg.vocab_size - 1,
    }
    return config, sd, "AutoModelForCausalLM"


def write_tokenizer(folder: Path, tokenizer: dict[str, Any] | None, source: Path | None) -> list[str]:
    """Tokenizer files: those of the pretrained folder the model came from, or a ``tokenizer.json`` built from
    the run's own (BPE/WordPiece) tokenizer. Character vocabularies have no transformers form; none written."""
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
    written = []
    if source is not None:
        for n in names:
            if (source / n).is_file():
                shutil.copyfile(source / n, folder / n)
                written.append(n)
    elif tokenizer and tokenizer.get("kind") in ("hf", "bpe"):
        (folder / "tokenizer.json").write_text(tokenizer["json"])
        (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
        written += ["tokenizer.json", "tokenizer_config.json"]
    elif tokenizer and tokenizer.get("kind") == "gpt2":
        from neuratlas.text.tokenizers import GPT2Tokenizer

        vocab, merges = gpt2_vocab_and_merges(GPT2Tokenizer().enc._mergeable_ranks)
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        eot = "<|endoftext|>"
        (folder / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "tokenizer_class": "GPT2Tokenizer",
                    "bos_token": eot,
                    "eos_token": eot,
                    "unk_token": eot,
                    "model_max_length": 1024,
                    "add_prefix_space": False,
                }
            )
        )
        written += ["vocab.json", "merges.txt", "tokenizer_config.json"]
    return written


def gpt2_vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[str]]:
    """Hugging Face's byte-level ``vocab.json`` and ``merges.txt`` from tiktoken's GPT-2 ranks. The ranks are
    the merge order, so each multi-byte token is the merge of the two pieces that byte-pair encoding with only
    the lower-ranked tokens leaves of it."""
    char = bytes_to_unicode()

    def spell(b: bytes) -> str:
        return "".join(char[x] for x in b)

    vocab = {spell(tok): rank for tok, rank in ranks.items()}
    vocab["<|endoftext|>"] = len(ranks)
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) < 2:
            continue
        parts = [bytes([b]) for b in tok]
        while len(parts) > 2:
            best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], 1 << 30))
            if ranks.get(parts[best] + parts[best + 1], 1 << 30) >= rank:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) != 2:
            raise NeuratlasError(f"GPT-2 rank {rank} is not a merge of two lower-ranked tokens")
        merges.append(f"{spell(parts[0])} {spell(parts[1])}")
    return vocab, merges


def save(
    model: nn.Module,
    folder: Path,
    tokenizer: dict[str, Any] | None = None,
    verify: bool = True,
    device: torch.device | None = None,
) -> list[Check]:
    """Write ``model`` as a Hugging Face folder and check it with transformers (when installed), on
    ``device`` (default: the CPU)."""
    from neuratlas.models.bert import BERT
    from neuratlas.models.gpt import GPT
    from neuratlas.weights.bert import resolve_pretrained

    name = getattr(model, "model_name", type(model).__name__)
    if isinstance(model, BERT):
        config, sd, auto = bert_folder(model)
        source = resolve_pretrained(model.cfg.pretrained) if model.cfg.pretrained else None
    elif isinstance(model, GPT):
        config, sd, auto = gpt2_folder(model)
        source = None
    else:
        raise NeuratlasError(
            f"{name} ({type(model).__name__}) has no Hugging Face layout; the hf format covers "
            "BERT/MiniLM and GPT-2-style GPTs (use onnx or pt2)"
        )
    config["neuratlas"] = {"model_name": name}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer(folder, tokenizer, source)
    return [check_transformers(model, folder, auto, device)] if verify else []


def check_transformers(model: nn.Module, folder: Path, auto: str, device: torch.device | None = None) -> Check:
    """Load ``folder`` with ``transformers.<auto>.from_pretrained`` and compare its logits with ours on a
    padded batch of random tokens, both on ``device`` (ours goes back where it was afterwards)."""
    with on_device(model, device) as there:
        return _compare(there, folder, auto, next(there.parameters()).device)


def _compare(model: nn.Module, folder: Path, auto: str, device: torch.device) -> Check:
    from neuratlas.extras import require

    transformers = require("transformers", "checking a Hugging Face folder")
    from neuratlas.models.bert import BERT

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its load report lists the pooler a sentence encoder lacks
    transformers.utils.logging.disable_progress_bar()
    try:
        theirs = getattr(transformers, auto).from_pretrained(str(folder)).eval().to(device)
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.utils.logging.enable_progress_bar()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.cfg.vocab_size, (3, min(12, model.cfg.max_seq_len)), generator=g)
    ids = ids.to(device)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        if isinstance(model, BERT):
            mask[1, -4:] = 0  # padding on one row; outputs at padded positions are not compared
            if auto == "AutoModel":
                ours, out = model.encode(ids, mask), theirs(input_ids=ids, attention_mask=mask).last_hidden_state
            else:
                ours, out = model(ids, mask), theirs(input_ids=ids, attention_mask=mask).logits
            if ours.ndim == 3:
                ours, out = ours[mask.bool()], out[mask.bool()]
        else:
            ours, out = model(ids), theirs(input_ids=ids).logits
    return Check(
        "model",
        "model.safetensors",
        max_diff([ours], [out]),
        float("nan"),
        f"transformers {auto}",
        ids.shape[0],
        device=str(device),
    )
