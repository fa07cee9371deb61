"""The encoder–decoder Transformer of "Attention Is All You Need" (Vaswani et al. 2017), built from the shared
blocks of ``models/transformer.py``: an encoder stack (bidirectional self-attention over the source) and a
decoder stack (causal self-attention + cross-attention to the encoder's output).

Source and target have their own vocabularies (graphemes and phonemes in G2P), so each side has its own
embedding; the decoder's output projection is tied to the target embedding when ``tie_embeddings``.
Every switch of :class:`~neuratlas.models.transformer.TransformerConfig` applies, so the 2017 and the modern
column of Table 2 can be compared on the same sequence-to-sequence task.

Generation goes through :meth:`EncoderDecoder.start_decoding` / :meth:`EncoderDecoder.decode_step`: the
encoder runs once, the decoder's self-attention keys/values grow in the shared ``KVCache`` and the
cross-attention keys/values of the memory are computed once. ``use_cache=False`` recomputes the whole
prefix at every step (the reference the tests compare the cache against).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.layers.attention import KVCache
from neuratlas.models.registry import register_model
from neuratlas.models.transformer import PRESETS, Embeddings, Transformer, TransformerConfig, init_weights


@dataclass
class EncoderDecoderConfig(TransformerConfig):
    """TransformerConfig (``vocab_size`` is the target's) plus the source side and the decoder depth."""

    src_vocab_size: int = 32
    n_decoder_layer: int | None = None  # None -> n_layer
    pad_id: int = 0  # source padding id (masked out of attention)
    share_embeddings: bool = False  # one table for source and target (a joint vocabulary, as in the paper)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_decoder_layer is None:
            self.n_decoder_layer = self.n_layer
        if self.src_vocab_size <= 0 or self.n_decoder_layer <= 0:
            raise ValueError("src_vocab_size and n_decoder_layer must be positive")
        if self.share_embeddings and self.src_vocab_size != self.vocab_size:
            raise ValueError(
                f"share_embeddings needs one vocabulary; src_vocab_size {self.src_vocab_size} != "
                f"vocab_size {self.vocab_size}"
            )


@dataclass
class DecodeState:
    """What incremental decoding carries between steps; ``reorder`` follows beams as they are re-ranked."""

    memory: torch.Tensor  # (B, S, C) encoder output
    memory_mask: torch.Tensor  # (B, S) True on real source tokens
    cache: KVCache | None  # decoder self-attention K/V (and cross-attention K/V once computed)
    tokens: torch.Tensor  # (B, t) tokens fed so far (used without a cache)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (B',) of every per-sequence tensor, e.g. the surviving beams."""
        self.memory = self.memory.index_select(0, index)
        self.memory_mask = self.memory_mask.index_select(0, index)
        self.tokens = self.tokens.index_select(0, index)
        c = self.cache
        if c is not None:
            c.k, c.v = _take(c.k, index, c.length), _take(c.v, index, c.length)
            c.cross = {i: (k.index_select(0, index), v.index_select(0, index)) for i, (k, v) in c.cross.items()}


def _take(t: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Rows ``index`` of a cache tensor (L, B, H, max_len, D), copying only the ``n`` filled positions."""
    out = t if t.shape[1] == len(index) else t.new_zeros(t.shape[0], len(index), *t.shape[2:])
    out[:, :, :, :n] = t[:, index, :, :n]  # the right side is gathered (copied) before the write
    return out


class EncoderDecoder(nn.Module):
    Config = EncoderDecoderConfig

    def __init__(self, cfg: EncoderDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        src_cfg = dataclasses.replace(cfg, vocab_size=cfg.src_vocab_size)
        dec_cfg = dataclasses.replace(cfg, n_layer=cfg.n_decoder_layer)
        self.src_embed = Embeddings(src_cfg)
        self.tgt_embed = Embeddings(cfg)
        self.encoder = Transformer(cfg, causal=False)
        self.decoder = Transformer(dec_cfg, causal=True, cross_attention=True)
        self.lm_head = nn.Linear(cfg.dim, cfg.padded_vocab_size, bias=False)
        init_weights(self, cfg)
        if cfg.share_embeddings:
            self.src_embed.tok.weight = self.tgt_embed.tok.weight
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tgt_embed.tok.weight

    def dummy_input(self, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """A small valid (source, target-prefix) pair, used by the registry-wide smoke test."""
        g = torch.Generator().manual_seed(0)
        return (
            torch.randint(1, self.cfg.src_vocab_size, (batch, 7), generator=g),
            torch.randint(1, self.cfg.vocab_size, (batch, 5), generator=g),
        )

    def _check(self, ids: torch.Tensor, vocab: int, what: str) -> None:
        if ids.ndim != 2 or ids.dtype not in (torch.long, torch.int, torch.int32):
            raise NeuratlasError(
                f"{type(self).__name__} expects {what} token ids shaped (batch, length), got "
                f"{tuple(ids.shape)} {ids.dtype}"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise NeuratlasError(f"{what} token ids must lie in [0, {vocab}), got [{int(ids.min())}, {int(ids.max())}]")

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S) -> memory (B, S, C) and its mask (B, S), True on real (non-padding) tokens."""
        self._check(src, self.cfg.src_vocab_size, "source")
        mask = src != self.cfg.pad_id
        return self.encoder(self.src_embed(src), key_padding_mask=mask), mask

    def decode(
        self, tgt: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor, cache: KVCache | None = None
    ) -> torch.Tensor:
        """tgt (B, T) -> next-token logits (B, T, vocab_size). With a cache, ``tgt`` holds only new tokens.

        Target padding needs no mask: it only ever follows real tokens, which the causal mask hides it from.
        """
        start = cache.length if cache is not None else 0
        x = self.tgt_embed(tgt, start=start)
        x = self.decoder(x, memory=memory, memory_padding_mask=memory_mask, cache=cache)
        return self.lm_head(x)[..., : self.cfg.vocab_size]

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits (B, T, vocab_size) for the target prefix ``tgt`` (B, T) given ``src``."""
        self._check(tgt, self.cfg.vocab_size, "target")
        memory, mask = self.encode(src)
        return self.decode(tgt, memory, mask)

    # --- incremental decoding ----------------------------------------------------------------------
    @torch.no_grad()
    def start_decoding(self, src: torch.Tensor, max_len: int, use_cache: bool = True) -> DecodeState:
        """Encode ``src`` once; prepare a KV cache for up to ``max_len`` decoder tokens."""
        memory, mask = self.encode(src)
        if max_len > self.cfg.max_seq_len and self.cfg.positions in ("learned", "sinusoidal"):
            max_len = self.cfg.max_seq_len
        cache = self.decoder.new_cache(len(src), max_len) if use_cache else None
        return DecodeState(memory, mask, cache, src.new_zeros(len(src), 0))

    @torch.no_grad()
    def decode_step(self, tokens: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """Feed one token per sequence (B,); return the logits (B, vocab_size) of the token after it."""
        state.tokens = torch.cat([state.tokens, tokens[:, None]], 1)
        if state.cache is not None:
            return self.decode(tokens[:, None], state.memory, state.memory_mask, state.cache)[:, -1]
        return self.decode(state.tokens, state.memory, state.memory_mask)[:, -1]


_2017 = PRESETS["transformer-2017"]
_MODERN = PRESETS["transformer-modern"]
# G2P sizes: words are ≤ 28 letters and pronunciations ≤ 28 phonemes, so 64 positions cover both.
_G2P = dict(src_vocab_size=30, vocab_size=42, max_seq_len=64, pad_vocab_multiple=1)

register_model(
    "transformer-2017-base",
    EncoderDecoder,
    "the paper's base model: post-LN, sinusoidal, ReLU, d 512, 6+6 layers, 8 heads, shared 37k vocabulary",
    **{
        **_2017,
        "src_vocab_size": 37000,
        "vocab_size": 37000,
        "max_seq_len": 512,
        "pad_vocab_multiple": 1,
        "ffn_dim": 2048,
        "share_embeddings": True,
    },
)
register_model(
    "transformer-2017-g2p",
    EncoderDecoder,
    "2017 encoder–decoder (post-LN, sinusoidal, ReLU, MHA) sized for G2P: d 256, 3+3 layers",
    **{**_2017, **_G2P, "dim": 256, "n_layer": 3, "n_head": 4, "n_kv_head": 4, "ffn_dim": 1024},
)
register_model(
    "transformer-2017-g2p-tiny",
    EncoderDecoder,
    "2017 encoder–decoder for the G2P tour: d 128, 2+2 layers, 4 heads",
    **{**_2017, **_G2P, "dim": 128, "n_layer": 2, "n_head": 4, "n_kv_head": 4, "ffn_dim": 512, "dropout": 0.0},
)
register_model(
    "transformer-modern-g2p",
    EncoderDecoder,
    "modern switches (pre-RMSNorm, GQA 4/2, RoPE, SwiGLU, no bias) as an encoder–decoder for G2P",
    **{**_MODERN, **_G2P, "dim": 256, "n_layer": 3, "n_head": 4, "n_kv_head": 2},
)
