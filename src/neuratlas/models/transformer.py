"""One configurable Transformer that every transformer model in Neuratlas is built from.

The switches of :class:`TransformerConfig` are the rows of the article's Table 2:

| switch | ``transformer-2017`` (Vaswani et al.) | ``transformer-modern`` (LLaMA-style) |
|---|---|---|
| ``norm`` | ``post_layernorm`` (norm after the residual add) | ``pre_rmsnorm`` (norm of the branch input) |
| ``n_kv_head`` | = ``n_head`` (multi-head attention) | < ``n_head`` (grouped-query attention) |
| ``positions`` | ``sinusoidal`` (added to the embeddings) | ``rope`` (rotates queries and keys) |
| ``ffn`` | ``relu`` (d_ff = 4·d) | ``swiglu`` (d_ff ≈ 8/3·d, three matrices) |
| ``bias`` | on | off |
| layout | encoder–decoder | decoder-only |

:class:`Block` is one layer (self-attention, optional cross-attention, feed-forward); :class:`Transformer`
is a stack of blocks used as an encoder (bidirectional) or a decoder (causal, optionally cross-attending to
an encoder's memory); :class:`Embeddings` turns token ids into vectors with the chosen positions.
GPT (``models/gpt.py``), BERT (``models/bert.py``), the encoder–decoder and ViT reuse these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from neuratlas.layers.attention import CpuAttention, KVCache, MultiHeadAttention, Packing, RotaryEmbedding
from neuratlas.layers.dropout import Dropout
from neuratlas.layers.norms import RMSNorm

Norm = Literal["post_layernorm", "pre_layernorm", "pre_rmsnorm"]
Positions = Literal["sinusoidal", "learned", "rope", "none"]
FFN = Literal["relu", "gelu", "gelu_tanh", "swiglu"]


@dataclass
class TransformerConfig:
    vocab_size: int = 65  # real vocabulary; the embedding/logit tables are padded (see padded_vocab_size)
    max_seq_len: int = 256  # context length (learned/sinusoidal position tables have this many rows)
    dim: int = 384
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int | None = None  # None -> n_head (MHA); 1 < n_kv_head < n_head: GQA; 1: MQA
    norm: Norm = "pre_layernorm"
    norm_eps: float = 1e-5
    positions: Positions = "learned"
    rope_base: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # Llama 3's {"rope_type": "llama3", ...} or {"rope_type": "linear"}
    ffn: FFN = "gelu"  # gelu is exact erf-GELU (BERT); gelu_tanh is GPT-2's tanh approximation
    ffn_dim: int | None = None  # None -> 4·dim, or 8/3·dim rounded up to a multiple of 64 for swiglu
    bias: bool = True
    qkv_bias: bool | None = None  # bias on the Q/K/V projection only (Qwen2); None: the same as bias
    head_dim: int | None = None  # per-head width; None: dim // n_head (some checkpoints use another)
    tie_embeddings: bool = True  # output projection shares the token embedding matrix
    dropout: float = 0.0
    attn_dropout: float | None = None  # on the attention probabilities; None: the same as dropout
    pad_vocab_multiple: int = 64  # round the vocabulary up for fast matmuls (nanoGPT's 50257 -> 50304)
    type_vocab_size: int = 0  # BERT's segment embeddings (0 = none)
    embed_norm: bool = False  # LayerNorm right after the embeddings (BERT)
    scale_embeddings: bool = False  # multiply token embeddings by √dim (the 2017 paper)
    init_std: float = 0.02
    gqa_impl: Literal["sdpa", "repeat"] = "sdpa"  # how K/V heads are shared under GQA (speed switch)
    cpu_attention: CpuAttention = "auto"  # kernel for bf16 attention on CPU (layers.attention.attention; speed switch)
    unpad: bool = True  # encoders with a padding mask run per-token layers on real tokens only (speed switch)

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if min(self.vocab_size, self.max_seq_len, self.dim, self.n_layer, self.n_head, self.n_kv_head) <= 0:
            raise ValueError("vocab_size, max_seq_len, dim, n_layer, n_head and n_kv_head must be positive")
        if self.head_dim is None:
            if self.dim % self.n_head:
                raise ValueError(f"dim {self.dim} must be divisible by n_head {self.n_head} (or give head_dim)")
            self.head_dim = self.dim // self.n_head
        if self.head_dim <= 0:
            raise ValueError(f"head_dim must be positive, got {self.head_dim}")
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_head {self.n_head} must be a multiple of n_kv_head {self.n_kv_head} "
                "(n_kv_head = n_head: MHA, 1: MQA, between: GQA)"
            )
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"rope needs an even head dimension, got {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= (self.attn_dropout or 0.0) < 1.0:
            raise ValueError(f"dropout and attn_dropout must be in [0, 1), got {self.dropout}, {self.attn_dropout}")
        if self.ffn_dim is None:
            self.ffn_dim = 4 * self.dim if self.ffn != "swiglu" else 64 * math.ceil(8 * self.dim / 3 / 64)
        if self.pad_vocab_multiple < 1:
            raise ValueError("pad_vocab_multiple must be ≥ 1")

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @property
    def pre_norm(self) -> bool:
        return self.norm != "post_layernorm"


# The two columns of Table 2 (sizes are the models' own; override any of them).
PRESETS: dict[str, dict[str, Any]] = {
    "transformer-2017": dict(
        norm="post_layernorm",
        positions="sinusoidal",
        ffn="relu",
        bias=True,
        scale_embeddings=True,
        dim=512,
        n_layer=6,
        n_head=8,
        n_kv_head=8,
        dropout=0.1,
        tie_embeddings=True,
    ),
    "transformer-modern": dict(
        norm="pre_rmsnorm",
        positions="rope",
        ffn="swiglu",
        bias=False,
        dim=384,
        n_layer=6,
        n_head=6,
        n_kv_head=2,
        dropout=0.0,
        tie_embeddings=True,
    ),
}


def make_norm(cfg: TransformerConfig) -> nn.Module:
    if cfg.norm == "pre_rmsnorm":
        return RMSNorm(cfg.dim, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.dim, eps=cfg.norm_eps, bias=cfg.bias)


def sinusoidal_table(n: int, dim: int) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...) (Vaswani et al. 2017, §3.5)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(n, dim)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv[: dim // 2])
    return pe


class FeedForward(nn.Module):
    """Position-wise MLP: fc2(act(fc1(x))); SwiGLU gates it, fc2(silu(a) * b) with [a, b] = fc1(x)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.kind = cfg.ffn
        hidden = cfg.ffn_dim
        self.fc1 = nn.Linear(cfg.dim, 2 * hidden if cfg.ffn == "swiglu" else hidden, bias=cfg.bias)
        self.fc2 = nn.Linear(hidden, cfg.dim, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.kind == "swiglu":
            a, b = h.chunk(2, dim=-1)
            h = nn.functional.silu(a) * b
        elif self.kind == "relu":
            h = nn.functional.relu(h)
        elif self.kind == "gelu":
            h = nn.functional.gelu(h)
        else:
            h = nn.functional.gelu(h, approximate="tanh")
        return self.fc2(h)


class Block(nn.Module):
    """One transformer layer: self-attention, cross-attention (decoders of encoder–decoders), feed-forward.

    Each sub-layer is wrapped as ``x + drop(f(norm(x)))`` (pre-norm) or ``norm(x + drop(f(x)))`` (post-norm).
    """

    def __init__(self, cfg: TransformerConfig, cross_attention: bool = False) -> None:
        super().__init__()
        self.pre_norm = cfg.pre_norm
        attn_dropout = cfg.dropout if cfg.attn_dropout is None else cfg.attn_dropout
        self.attn = MultiHeadAttention(
            cfg.dim,
            cfg.n_head,
            cfg.n_kv_head,
            bias=cfg.bias,
            qkv_bias=cfg.qkv_bias,
            head_dim=cfg.head_dim,
            dropout=attn_dropout,
            gqa=cfg.gqa_impl,
            cpu_bf16=cfg.cpu_attention,
        )
        self.norm1 = make_norm(cfg)
        self.cross_attn = None
        if cross_attention:
            self.cross_attn = MultiHeadAttention(
                cfg.dim,
                cfg.n_head,
                cfg.n_kv_head,
                bias=cfg.bias,
                qkv_bias=cfg.qkv_bias,
                head_dim=cfg.head_dim,
                dropout=attn_dropout,
                cross=True,
                gqa=cfg.gqa_impl,
                cpu_bf16=cfg.cpu_attention,
            )
            self.norm_cross = make_norm(cfg)
        self.ffn = FeedForward(cfg)
        self.norm2 = make_norm(cfg)
        self.drop = Dropout(cfg.dropout)

    def _sublayer(self, x: torch.Tensor, norm: nn.Module, f) -> torch.Tensor:
        if self.pre_norm:
            return x + self.drop(f(norm(x)))
        return norm(x + self.drop(f(x)))

    def forward(
        self,
        x: torch.Tensor,
        *,
        causal: bool = False,
        key_padding_mask: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_padding_mask: torch.Tensor | None = None,
        rope: RotaryEmbedding | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        packing: Packing | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, C), or the (N, C) real tokens of a padded batch when ``packing`` is given.
        ``positions`` (B, T): each token's rotary position where rows differ (left-padded batches)."""
        x = self._sublayer(
            x,
            self.norm1,
            lambda h: self.attn(
                h,
                causal=causal,
                key_padding_mask=key_padding_mask,
                rope=rope,
                cache=cache,
                layer=layer,
                packing=packing,
                positions=positions,
            ),
        )
        if self.cross_attn is not None:
            x = self._sublayer(
                x,
                self.norm_cross,
                lambda h: self.cross_attn(
                    h, memory=memory, key_padding_mask=memory_padding_mask, cache=cache, layer=layer
                ),
            )
        return self._sublayer(x, self.norm2, self.ffn)


class Embeddings(nn.Module):
    """Token ids -> vectors: token embedding (+ learned or sinusoidal positions) (+ segments), norm, dropout.

    RoPE and ``none`` add nothing here (RoPE acts inside attention). The table has ``padded_vocab_size`` rows.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.padded_vocab_size, cfg.dim)
        self.pos = nn.Embedding(cfg.max_seq_len, cfg.dim) if cfg.positions == "learned" else None
        if cfg.positions == "sinusoidal":
            self.register_buffer("pe", sinusoidal_table(cfg.max_seq_len, cfg.dim), persistent=False)
        self.seg = nn.Embedding(cfg.type_vocab_size, cfg.dim) if cfg.type_vocab_size else None
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps) if cfg.embed_norm else None
        self.drop = Dropout(cfg.dropout)
        self.scale = math.sqrt(cfg.dim) if cfg.scale_embeddings else 1.0

    def forward(self, ids: torch.Tensor, start: int = 0, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        t = ids.shape[1]
        if start + t > self.cfg.max_seq_len and self.cfg.positions in ("learned", "sinusoidal"):
            from neuratlas.errors import NeuratlasError

            raise NeuratlasError(
                f"sequence of {start + t} tokens exceeds max_seq_len {self.cfg.max_seq_len} "
                "(positions are a fixed table; crop the input or use positions=rope)"
            )
        x = self.tok(ids)
        if self.scale != 1.0:
            x = x * self.scale
        if self.pos is not None:
            x = x + self.pos.weight[start : start + t]
        elif self.cfg.positions == "sinusoidal":
            x = x + self.pe[start : start + t].to(x.dtype)
        if self.seg is not None:
            x = x + self.seg(token_type_ids if token_type_ids is not None else torch.zeros_like(ids))
        if self.norm is not None:
            x = self.norm(x)
        return self.drop(x)


class Transformer(nn.Module):
    """A stack of :class:`Block`: an encoder (``causal=False``) or a decoder (``causal=True``, with
    ``cross_attention=True`` for encoder–decoders). Pre-norm stacks end with a final norm."""

    def __init__(self, cfg: TransformerConfig, causal: bool = False, cross_attention: bool = False) -> None:
        super().__init__()
        self.cfg, self.causal = cfg, causal
        self.blocks = nn.ModuleList(Block(cfg, cross_attention) for _ in range(cfg.n_layer))
        self.norm = make_norm(cfg) if cfg.pre_norm else nn.Identity()
        self.rope = (
            RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.rope_base, cfg.rope_scaling)
            if cfg.positions == "rope"
            else None
        )

    def forward(
        self,
        x: torch.Tensor,
        *,
        key_padding_mask: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_padding_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) embedded inputs -> (B, T, C). With a cache, ``cache.length`` advances by T.

        An encoder given a ``key_padding_mask`` (and ``cfg.unpad``) runs on the real tokens only; its output
        is zero at padded positions. ``positions`` (B, T) gives per-row rotary positions (left padding).
        """
        packing = None
        unpad = self.cfg.unpad and key_padding_mask is not None and not self.causal and cache is None and memory is None
        if unpad and not torch.compiler.is_exporting():  # (packing's data-dependent size does not trace)
            packing = Packing(key_padding_mask)
            x = packing.pack(x)
        for i, block in enumerate(self.blocks):
            x = block(
                x,
                causal=self.causal,
                key_padding_mask=key_padding_mask,
                memory=memory,
                memory_padding_mask=memory_padding_mask,
                rope=self.rope,
                cache=cache,
                layer=i,
                packing=packing,
                positions=positions,
            )
        if cache is not None:
            cache.advance(x.shape[1])
        x = self.norm(x)
        if packing is not None:
            return packing.pad(x)
        if unpad:  # exported: the padded run, zero at the padding like the packed one
            return x.masked_fill(~key_padding_mask.to(torch.bool)[..., None], 0.0)
        return x

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        p = next(self.parameters())
        return KVCache(
            self.cfg.n_layer,
            batch_size,
            self.cfg.n_kv_head,
            self.cfg.head_dim,
            max_len or self.cfg.max_seq_len,
            dtype or p.dtype,
            p.device,
        )


def init_weights(module: nn.Module, cfg: TransformerConfig) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights, zero biases, and residual projections scaled by
    1/√(2·n_layer) so the residual stream's variance does not grow with depth."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            std = cfg.init_std
            if name.endswith(("attn.proj", "ffn.fc2")):
                std /= math.sqrt(2 * cfg.n_layer)
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, cfg.init_std)
