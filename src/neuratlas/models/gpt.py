"""GPT: a decoder-only Transformer trained to predict the next token (Radford et al. 2018/2019).

Built from the shared :mod:`neuratlas.models.transformer` blocks, so every switch of Table 2 applies
(``transformer-modern`` is this class with pre-RMSNorm, GQA, RoPE and SwiGLU). Generation keeps a KV cache:
the prompt is run once, then each new token costs one position instead of the whole context.
GPT-2 (Hugging Face) and nanoGPT checkpoints import with :mod:`neuratlas.weights`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.layers.attention import KVCache
from neuratlas.layers.cpu_step import CpuStep
from neuratlas.layers.gemv import fast_decoding
from neuratlas.layers.sampling import penalize_repetition, sample
from neuratlas.models.registry import register_model
from neuratlas.models.transformer import PRESETS, Embeddings, Transformer, TransformerConfig, init_weights


@dataclass
class GPTConfig(TransformerConfig):
    """Defaults: nanoGPT's ``shakespeare_char`` model (6 layers × 384, context 256)."""

    dropout: float = 0.2


class GPT(nn.Module):
    Config = GPTConfig

    def __init__(self, cfg: GPTConfig, init: bool = True) -> None:
        """``init=False`` skips the GPT-2 initialisation (weights about to be loaded from a checkpoint)."""
        super().__init__()
        self.cfg = cfg
        self.embed = Embeddings(cfg)
        self.transformer = Transformer(cfg, causal=True)
        self.head = nn.Linear(cfg.dim, cfg.padded_vocab_size, bias=False)
        if init:
            init_weights(self, cfg)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.tok.weight

    def forward(
        self,
        ids: torch.Tensor,
        cache: KVCache | None = None,
        last_only: bool = False,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ids (B, T) -> logits (B, T, vocab_size), or (B, 1, vocab_size) for the last position only.

        ``mask`` (B, S), True on real tokens, covers the cached tokens and these T (S = cache length + T):
        a left-padded batch of prompts of different lengths. Each row's rotary positions then count its real
        tokens only and no token attends to padding, so every row's logits are those it has alone.
        """
        if ids.ndim != 2:
            raise NeuratlasError(f"GPT expects token ids of shape (batch, time), got {tuple(ids.shape)}")
        start = cache.length if cache is not None else 0
        keys, positions = None, None
        if mask is not None:
            b, t = ids.shape
            if tuple(mask.shape) != (b, start + t):
                raise NeuratlasError(f"mask of shape {tuple(mask.shape)} does not cover ({b}, {start + t}) tokens")
            if self.cfg.positions != "rope":
                raise NeuratlasError("padded batches need rotary positions (positions='rope')")
            mask = mask.to(torch.bool)
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, start:]
            # a padding query sees itself only: a row with no visible key would make NaNs that reach the cache
            key_at = torch.arange(start + t, device=ids.device)
            own = key_at[None] == key_at[start:, None]
            keys = mask[:, None, None, :] | own
        x = self.transformer(self.embed(ids, start), cache=cache, key_padding_mask=keys, positions=positions)
        if last_only:
            x = x[:, -1:]
        return self.head(x)[..., : self.cfg.vocab_size]  # drop the padding rows of the vocabulary

    def dummy_input(self, batch: int = 2) -> torch.Tensor:
        return torch.randint(0, self.cfg.vocab_size, (batch, min(16, self.cfg.max_seq_len)))

    # --- generation ---------------------------------------------------------------------------------
    # inference mode, not just no_grad: no version counters or view tracking on the many small tensors of a
    # decode step, 7% more tokens/s for a 6 × 384 GPT at batch 1 (484 → 520 tok/s, AMX Xeon, same process)
    @torch.inference_mode()
    def stream(
        self,
        ids: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_tokens: Sequence[int] = (),
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        fast_layout: bool | Literal["auto"] = "auto",
        mask: torch.Tensor | None = None,
        repetition_penalty: float = 1.0,
    ) -> Iterator[torch.Tensor]:
        """Yield the next token of every sequence, (B,), one step at a time.

        ``temperature=0`` is greedy decoding. Sequences that produced a stop token keep yielding it; the
        stream ends when all have stopped or after ``max_new_tokens``. When the context fills up, the cache
        is rebuilt from the last half-context of tokens (with recomputation, nanoGPT crops every step).
        ``fast_layout``: on CPU, a model of the Llama family (pre-RMSNorm, SwiGLU, fp32 activations) decodes
        each token in one native call (:class:`~neuratlas.layers.cpu_step.CpuStep`; the prompt still runs
        here); other models run the linear layers as parallel matrix-vector products with each weight in the
        layout its kernel reads fastest while streaming (:func:`~neuratlas.layers.gemv.fast_decoding`;
        ``"auto"`` does so where it measures faster on this machine). False: every step through PyTorch.
        ``mask`` (B, T): True on the real tokens of left-padded prompts (see :meth:`forward`).
        ``repetition_penalty`` > 1 divides the positive logits (multiplies the negative ones) of every token
        already in the sequence (Keskar et al. 2019, as ``transformers`` applies it).
        """
        if ids.ndim == 1:
            ids = ids[None]
        if ids.shape[1] == 0:
            raise NeuratlasError("generation needs a prompt of at least one token")
        if mask is not None and tuple(mask.shape) != tuple(ids.shape):
            raise NeuratlasError(f"mask of shape {tuple(mask.shape)} does not match the prompt's {tuple(ids.shape)}")
        was_training = self.training
        self.eval()
        ctx = self.cfg.max_seq_len
        stop = torch.tensor(list(stop_tokens), dtype=torch.long, device=ids.device)
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        seq = ids[:, -ctx:]
        real = (mask if mask is not None else torch.ones_like(ids, dtype=torch.bool)).to(torch.bool)[:, -ctx:]
        cache, pending = None, seq
        # the native step takes left padding only (each row's real tokens one run up to the end); new tokens
        # and the crops of a rebuilt cache keep that form
        pads = (~real).sum(1, keepdim=True)
        left_padded = bool((real == (torch.arange(real.shape[1], device=real.device) >= pads)).all())
        native = CpuStep.for_model(self) if use_cache and fast_layout is not False and left_padded else None
        first = None  # where each row's real tokens start in the cache, for the native step
        with nullcontext() if native is not None else fast_decoding(self, fast_layout, batch=ids.shape[0]):
            try:
                for step in range(max_new_tokens):
                    if use_cache:
                        if cache is None or cache.length + pending.shape[1] > cache.max_len:
                            keep = seq[:, -ctx:] if cache is None else seq[:, -(ctx // 2) :]
                            # sized for what is left to generate, not the whole context: SmolLM2's 8192
                            # positions at batch 32 would be 3 GB of zeros for a 24-token answer
                            size = min(ctx, keep.shape[1] + max_new_tokens - step)
                            cache = self.transformer.new_cache(seq.shape[0], size)
                            pending = keep
                        m = real[:, -(cache.length + pending.shape[1]) :] if mask is not None else None
                        if native is not None and pending.shape[1] == 1 and cache.length:
                            logits = native(pending[:, 0], first, cache)
                        else:
                            logits = self(pending, cache=cache, last_only=True, mask=m)[:, -1]
                            first = (~m).sum(1) if m is not None else None
                    else:
                        m = real if mask is not None else None
                        logits = self(seq, last_only=True, mask=m)[:, -1]
                    logits = logits.float()
                    if repetition_penalty != 1.0:
                        logits = penalize_repetition(logits, torch.where(real, seq, seq[:, -1:]), repetition_penalty)
                    nxt = sample(logits, temperature, top_k, top_p, generator)
                    if len(stop):
                        nxt = torch.where(done, stop[0], nxt)
                        done |= torch.isin(nxt, stop)
                    yield nxt
                    seq = torch.cat([seq, nxt[:, None]], dim=1)[:, -ctx:]
                    real = torch.cat([real, torch.ones_like(real[:, :1])], dim=1)[:, -ctx:]
                    pending = nxt[:, None]
                    if len(stop) and bool(done.all()):
                        break
            finally:
                self.train(was_training)

    @torch.inference_mode()
    def generate(self, ids: torch.Tensor, max_new_tokens: int, **kw) -> torch.Tensor:
        """The prompt and up to ``max_new_tokens`` generated tokens, (B, T + n); see :meth:`stream`."""
        if ids.ndim == 1:
            ids = ids[None]
        new = list(self.stream(ids, max_new_tokens, **kw))
        return torch.cat([ids, torch.stack(new, 1)], 1) if new else ids


_CHAR = dict(vocab_size=65, pad_vocab_multiple=64)
register_model(
    "gpt-char-baby",
    GPT,
    "nanoGPT's CPU 'baby GPT': 4 layers × 128, 4 heads, context 64",
    n_layer=4,
    n_head=4,
    dim=128,
    max_seq_len=64,
    dropout=0.0,
    **_CHAR,
)
register_model(
    "gpt-char",
    GPT,
    "nanoGPT's shakespeare_char GPT: 6 layers × 384, 6 heads, context 256",
    n_layer=6,
    n_head=6,
    dim=384,
    max_seq_len=256,
    dropout=0.2,
    **_CHAR,
)
register_model(
    "gpt-mini",
    GPT,
    "4 layers × 256, 4 heads, context 128 (BPE or GPT-2 vocabulary)",
    n_layer=4,
    n_head=4,
    dim=256,
    max_seq_len=128,
    dropout=0.1,
    vocab_size=50257,
)
register_model(
    "gpt2-small",
    GPT,
    "GPT-2 124M layout: 12 layers × 768, context 1024, tanh-GELU",
    n_layer=12,
    n_head=12,
    dim=768,
    max_seq_len=1024,
    dropout=0.0,
    vocab_size=50257,
    ffn="gelu_tanh",
)
register_model(
    "transformer-modern",
    GPT,
    "Table 2's modern column: pre-RMSNorm, GQA (6 heads, 2 KV), RoPE, SwiGLU, no bias; decoder-only",
    max_seq_len=256,
    **{**_CHAR, **PRESETS["transformer-modern"]},
)
