"""Attention, shared by every transformer in Neuratlas: softmax(QKᵀ/√d_k)·V through PyTorch's fused
``scaled_dot_product_attention``, plus the plain formula (:func:`reference_attention`) for the tests.

Shapes follow nanoGPT: ``(B, H, T, D)`` for queries and ``(B, H_kv, S, D)`` for keys/values, where
``H_kv = n_kv_head`` divides ``H = n_head``: multi-head (H_kv = H), grouped-query (1 < H_kv < H) or
multi-query (H_kv = 1) attention. A boolean mask is ``True`` where a query may look at a key.

Also here: rotary position embeddings (RoPE, Su et al. 2021) and the KV cache used for fast generation,
whose size shrinks by ``n_head / n_kv_head`` under GQA because only the H_kv key/value heads are stored.
"""

from __future__ import annotations

import contextlib
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.layers.dropout import dropout

# --- masks ---------------------------------------------------------------------------------------------


def causal_mask(t: int, s: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, S) boolean mask where query i (the last T of S positions) sees keys 0..S-T+i."""
    return torch.ones(t, s, dtype=torch.bool, device=device).tril(diagonal=s - t)


def build_mask(
    t: int,
    s: int,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Combine causal and key-padding masks into one boolean mask broadcastable to (B, H, T, S), or None.

    ``key_padding_mask`` is (B, S) with ``True`` (or 1) on real tokens and ``False`` on padding, or a full
    (B, 1, T, S) boolean mask (a left-padded decoder batch, see ``GPT.forward``).
    """
    mask = None
    if causal and not (t == 1):  # a single new query sees every cached key: no mask needed
        mask = causal_mask(t, s, device)[None, None]
    if key_padding_mask is not None and key_padding_mask.ndim == 4:  # a full (B, 1, T, S) mask, used as given
        kpm = key_padding_mask.to(torch.bool)
        return kpm if mask is None else mask & kpm
    if key_padding_mask is not None:
        if key_padding_mask.shape[-1] != s:
            raise NeuratlasError(f"key padding mask covers {key_padding_mask.shape[-1]} keys but there are {s}")
        kpm = key_padding_mask.to(torch.bool)[:, None, None, :]
        mask = kpm if mask is None else mask & kpm
    return mask


# --- the attention function ------------------------------------------------------------------------------


CpuAttention = Literal["auto", "math", "flash_fp32", "flash"]


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    gqa: str = "sdpa",
    cpu_bf16: CpuAttention = "auto",
) -> torch.Tensor:
    """softmax(QKᵀ·scale + mask)·V with the fused kernel; ``scale`` defaults to 1/√d_k.

    ``cpu_bf16`` picks the kernel for bf16 inputs on a CPU, where PyTorch's bf16 flash attention is slow
    (its backward: 21 ms vs 10 ms for the plain formula at B·H = 96, T = 256, AMX Xeon; 3× its fp32 kernel
    at T = 64 on an AVX512-BF16 EPYC):
    ``"math"`` (and ``"auto"``) writes the formula out with bf16 matrix products: the scores and
    probabilities live as bf16 (B·H, T, S) tensors, as in a GPU flash kernel's P·V product; 2.7× the fp32
    kernel's speed at T = 256 and 1.4× at T = 64 on AMX (measured there; on CPUs without AMX not yet).
    ``"flash_fp32"`` runs the fused kernel in fp32 (exact up to the final rounding; the default before the
    AMX measurements); ``"flash"`` PyTorch's bf16 kernel.

    ``causal`` aligns the triangle to the *end* of the keys, so it is right for prefill after a KV cache
    too. ``gqa="sdpa"`` lets the kernel broadcast the H_kv heads (``enable_gqa``); ``"repeat"`` expands
    them with ``repeat_interleave`` first (some kernels are faster on equal head counts).
    """
    h, h_kv = q.shape[1], k.shape[1]
    if h % h_kv:
        raise NeuratlasError(f"{h} query heads cannot share {h_kv} key/value heads (must divide)")
    t, s = q.shape[-2], k.shape[-2]
    dtype = q.dtype
    kernel = cpu_bf16 if dtype == torch.bfloat16 and q.device.type == "cpu" else "flash"
    if mask is not None and mask.dtype == torch.bool and mask.ndim == 2:  # (B, S) key padding
        mask = mask[:, None, None, :]
    is_causal = False
    if causal:
        if t == s and mask is None:
            is_causal = True  # the kernel's own (top-left) triangle is right when T == S
        elif t > 1:
            cm = causal_mask(t, s, q.device)[None, None]
            if mask is None or mask.dtype == torch.bool:
                mask = cm if mask is None else mask & cm
            else:  # an additive float mask: hide the future with -inf, keep its values elsewhere
                mask = mask.masked_fill(~cm, float("-inf"))
    if t == 1 and mask is None and dropout_p == 0.0 and q.device.type == "cpu":
        return _decode_attention(q, k, v, scale)
    if kernel in ("math", "auto"):
        if h_kv != h:
            k, v = k.repeat_interleave(h // h_kv, dim=1), v.repeat_interleave(h // h_kv, dim=1)
        return _math_attention(q, k, v, is_causal, mask, dropout_p, scale)
    enable_gqa = False
    if h_kv != h:
        if gqa == "repeat":
            k = k.repeat_interleave(h // h_kv, dim=1)
            v = v.repeat_interleave(h // h_kv, dim=1)
        else:
            enable_gqa = True
    upcast = kernel == "flash_fp32"
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
        if mask is not None and mask.is_floating_point():
            mask = mask.float()  # the kernel wants an additive mask in the queries' dtype
    with torch.autocast("cpu", enabled=False) if upcast else contextlib.nullcontext():  # autocast would recast
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
        )
    return y.to(dtype)


def _decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    """One new query per sequence (a decoding step): two small batched products, no fused kernel.

    The fused CPU kernel costs far more than the arithmetic at one query: in a SmolLM2-135M decoding
    profile (2-core AMD EPYC, fp32) it took 54% of the step. The G = H / H_kv query heads that share a
    key/value head are batched as G rows against that head's keys, so the cache (a strided view) is read
    in place, never expanded by ``repeat_interleave``. Softmax accumulates in fp32."""
    b, h, _, d = q.shape
    h_kv, s = k.shape[1], k.shape[-2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qg = q.reshape(b * h_kv, h // h_kv, d)
    scores = torch.bmm(qg, k.reshape(b * h_kv, s, d).transpose(1, 2))
    p = (scores.float() * scale).softmax(-1).to(v.dtype)
    return torch.bmm(p, v.reshape(b * h_kv, s, d)).view(b, h, 1, d)


def _math_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    mask: torch.Tensor | None,
    dropout_p: float,
    scale: float | None,
) -> torch.Tensor:
    """The formula as three batched products in q's dtype, softmax accumulating in fp32 inside its kernel.
    ``causal`` (T = S) rides in ``baddbmm`` as an additive bias; a boolean mask sets the scores it hides to
    the dtype's lowest value (a row with no visible key then averages all values instead of giving NaN),
    a float mask is added. Keys and values have as many heads as queries."""
    b, h, t, d = q.shape
    s = k.shape[-2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qf, kf, vf = q.reshape(b * h, t, d), k.reshape(b * h, s, d), v.reshape(b * h, s, d)
    if causal:
        bias = _causal_bias(t, s, q.dtype, q.device).expand(b * h, t, s)
        scores = torch.baddbmm(bias, qf, kf.transpose(1, 2), alpha=scale)
    else:
        scores = torch.bmm(qf, kf.transpose(1, 2)) * scale
    if mask is not None:
        grid = scores.view(b, h, t, s)
        if mask.dtype == torch.bool:
            grid.masked_fill_(~mask, torch.finfo(scores.dtype).min)
        else:
            grid.add_(mask.to(scores.dtype))
    p = dropout(scores.softmax(-1), dropout_p)
    return torch.bmm(p, vf).view(b, h, t, d)


def _causal_bias(t: int, s: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(T, S): 0 where query i (the last T of S positions) may look, -inf above the shifted diagonal."""
    return torch.zeros(t, s, dtype=dtype, device=device).masked_fill_(~causal_mask(t, s, device), float("-inf"))


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """The formula written out (for tests): softmax(QKᵀ/√d_k)·V, masked positions set to -inf."""
    h, h_kv = q.shape[1], k.shape[1]
    k = k.repeat_interleave(h // h_kv, dim=1)
    v = v.repeat_interleave(h // h_kv, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, T, S)
    t, s = scores.shape[-2:]
    if causal:
        scores = scores.masked_fill(~causal_mask(t, s, q.device), float("-inf"))
    if mask is not None:
        if mask.ndim == 2:
            mask = mask[:, None, None, :]
        scores = scores.masked_fill(~mask.to(torch.bool), float("-inf")) if mask.dtype == torch.bool else scores + mask
    return scores.softmax(-1) @ v


# --- rotary position embeddings --------------------------------------------------------------------------


class RotaryEmbedding(nn.Module):
    """RoPE: rotate each (x_i, x_{i+D/2}) pair of a head by angle pos·base^(-2i/D).

    Rotating queries and keys by their absolute positions makes q·k depend only on their *relative*
    position. The cos/sin tables are buffers (not saved in checkpoints) and grow on demand.
    """

    def __init__(
        self, head_dim: int, max_seq_len: int = 2048, base: float = 10000.0, scaling: dict | None = None
    ) -> None:
        super().__init__()
        if head_dim % 2:
            raise NeuratlasError(f"rotary embeddings need an even head dimension, got {head_dim}")
        self.head_dim, self.base = head_dim, base
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", scale_rope_frequencies(inv_freq, scaling), persistent=False)
        self._build(max_seq_len)
        self._step: tuple | None = None  # (key, cos, sin') of the last decoding step (step_tables)

    def cover(self, n: int) -> None:
        """Grow the tables to at least ``n`` positions (at least doubling, so growth is rare)."""
        if n > self.cos.shape[0]:
            self._build(max(n, 2 * self.cos.shape[0]))

    def _build(self, n: int) -> None:
        freqs = torch.outer(torch.arange(n, dtype=torch.float32, device=self.inv_freq.device), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # (n, D)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def step_tables(
        self, pos: int, dtype: torch.dtype, n_head: int, n_kv_head: int, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin') of shape (H + H_kv, D) for one decoding step at position ``pos``, queries' rows times
        ``scale`` (the attention's 1/√d folded in); sin' carries rotate_half's sign, so the rotation of x
        is ``x·cos + roll(x, D/2)·sin'``. Made once per step and shared by every layer."""
        key = (pos, dtype, self.cos.device, n_head, n_kv_head, scale)
        if self._step is None or self._step[0] != key:
            self.cover(pos + 1)
            half = self.head_dim // 2
            cos, sin = self.cos[pos], self.sin[pos]
            signed = torch.cat((-sin[:half], sin[half:]))
            rows = torch.ones(n_head + n_kv_head, 1, device=cos.device)
            rows[:n_head] = scale
            self._step = (key, (rows * cos).to(dtype), (rows * signed).to(dtype))
        return self._step[1], self._step[2]

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, start: int = 0, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q (B, H, T, D) and k (B, H_kv, T, D) whose first token sits at position ``start``, or
        whose tokens sit at ``positions`` (B, T) when rows differ (a left-padded batch)."""
        t = q.shape[-2]
        end = start + t if positions is None else int(positions.max()) + 1
        self.cover(end)
        if positions is None:
            cos, sin = self.cos[start : start + t], self.sin[start : start + t]
        else:
            cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # (B, 1, T, D)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


def scale_rope_frequencies(inv_freq: torch.Tensor, scaling: dict | None) -> torch.Tensor:
    """The rotary frequencies of a context-extended model: ``linear`` divides every frequency by
    ``factor`` (positions interpolated); ``llama3`` divides only the low frequencies (wavelengths longer
    than ``original_max_position_embeddings / low_freq_factor``), keeps the high ones and blends between
    (Llama 3.1's scheme, as ``transformers`` computes it)."""
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return inv_freq
    factor = float(scaling.get("factor", 1.0))
    if kind == "linear":
        return inv_freq / factor
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old / low, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        return torch.where(medium, blended, scaled)
    raise NeuratlasError(f"rope scaling {kind!r} is not supported (supported: linear, llama3)")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


# --- KV cache --------------------------------------------------------------------------------------------


class KVCache:
    """Keys and values of every layer for tokens already seen, pre-allocated to ``max_len``.

    Stores only the H_kv key/value heads: bytes = 2 · n_layer · B · H_kv · max_len · D · itemsize, so GQA
    with H/H_kv groups needs H/H_kv times less memory than MHA. ``length`` advances once per model call
    (after the last layer); cross-attention keys/values of a fixed memory are cached in ``cross``.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0
        self.cross: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this call's (B, H_kv, T, D) keys/values to ``layer``; return all keys/values so far."""
        t = k.shape[-2]
        end = self.length + t
        if end > self.max_len:
            raise NeuratlasError(
                f"KV cache holds {self.max_len} tokens; cannot add {t} more after "
                f"{self.length} (raise max_new_tokens' budget or the model's max_seq_len)"
            )
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def append_one(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`update` for one new token, k and v (B, H_kv, D): the decoding step's fewer operations."""
        pos = self.length
        if pos >= self.max_len:
            self.update(layer, k[:, :, None], v[:, :, None])  # raises the "cache is full" error
        ks, vs = self.k[layer], self.v[layer]
        ks[:, :, pos] = k
        vs[:, :, pos] = v
        return ks[:, :, : pos + 1], vs[:, :, : pos + 1]

    def advance(self, t: int) -> None:
        self.length += t

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    @property
    def bytes_per_token(self) -> int:
        """Bytes the cache needs per token of context (all layers, keys and values, per sequence)."""
        n_layer, b, h_kv, _, d = self.k.shape
        return 2 * n_layer * h_kv * d * self.k.element_size()


# --- padding-free (packed) sequences ---------------------------------------------------------------------


class Packing:
    """Where the real tokens of a padded (B, T) batch sit, so per-token layers skip the padding.

    Linear layers, norms and the feed-forward act on each token alone, so a padded batch can run them on
    the (N, C) tensor of its N real tokens instead of all B·T positions (the "unpadding" of FlashAttention's
    varlen path and BetterTransformer). Only attention needs the (B, H, T, D) layout: :meth:`pad` scatters
    the packed tokens back into it and :meth:`pack` gathers them again.
    """

    def __init__(self, key_padding_mask: torch.Tensor) -> None:
        self.mask = key_padding_mask.to(torch.bool)
        self.batch, self.time = self.mask.shape
        self.index = self.mask.flatten().nonzero().squeeze(1)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (N, C), real tokens only."""
        return x.flatten(0, 1).index_select(0, self.index)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (B, T, C), zeros at the padding."""
        out = x.new_zeros(self.batch * self.time, x.shape[-1]).index_copy(0, self.index, x)
        return out.view(self.batch, self.time, -1)


# --- the attention layer ---------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Multi-head / grouped-query / multi-query attention, self- or cross-.

    Self-attention projects Q, K and V with one fused matrix ``qkv`` (one GEMM instead of three);
    cross-attention projects queries from ``x`` with ``q`` and keys/values from the memory with ``kv``.
    ``proj`` maps the concatenated heads back to ``dim``.
    """

    def __init__(
        self,
        dim: int,
        n_head: int,
        n_kv_head: int | None = None,
        *,
        bias: bool = True,
        qkv_bias: bool | None = None,
        head_dim: int | None = None,
        dropout: float = 0.0,
        cross: bool = False,
        gqa: str = "sdpa",
        cpu_bf16: CpuAttention = "auto",
    ) -> None:
        super().__init__()
        n_kv_head = n_kv_head or n_head
        if head_dim is None and dim % n_head:
            raise NeuratlasError(f"dim {dim} is not divisible by n_head {n_head}")
        if n_head % n_kv_head:
            raise NeuratlasError(f"n_head {n_head} is not divisible by n_kv_head {n_kv_head}")
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim or dim // n_head
        self.cross, self.dropout, self.gqa, self.cpu_bf16 = cross, dropout, gqa, cpu_bf16
        q_dim, kv_dim = n_head * self.head_dim, 2 * n_kv_head * self.head_dim
        in_bias = bias if qkv_bias is None else qkv_bias
        if cross:
            self.q = nn.Linear(dim, q_dim, bias=in_bias)
            self.kv = nn.Linear(dim, kv_dim, bias=in_bias)
        else:
            self.qkv = nn.Linear(dim, q_dim + kv_dim, bias=in_bias)
        self.proj = nn.Linear(q_dim, dim, bias=bias)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)  # (B, n, T, D)

    def forward(
        self,
        x: torch.Tensor,
        *,
        memory: torch.Tensor | None = None,
        causal: bool = False,
        key_padding_mask: torch.Tensor | None = None,
        rope: RotaryEmbedding | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        packing: Packing | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). ``key_padding_mask`` (B, S) marks real keys (of x, or of memory).
        ``positions`` (B, T): per-row rotary positions (left-padded batches).

        With ``packing`` (bidirectional self-attention only), x is the (N, C) packed real tokens and so is
        the result: projections run on real tokens only, attention on the padded layout.
        """
        if packing is not None and (self.cross or cache is not None or causal):
            raise NeuratlasError("packed sequences are for bidirectional self-attention without a cache")
        if (
            type(cache) is KVCache  # an exported graph's cache of explicit past tensors takes the general path
            and x.shape[1] == 1
            and not self.cross
            and key_padding_mask is None
            and positions is None
            and not (self.training and self.dropout)
            and (rope is None or rope.head_dim == self.head_dim)
        ):
            return self._decode_step(x, rope, cache, layer)
        b, t, c = (packing.batch, packing.time, x.shape[-1]) if packing is not None else x.shape
        hd = self.n_kv_head * self.head_dim
        if self.cross:
            if memory is None:
                raise NeuratlasError("cross-attention needs a memory (the encoder output)")
            q = self._heads(self.q(x), self.n_head)
            if cache is not None and layer in cache.cross:
                k, v = cache.cross[layer]
            else:
                k, v = self.kv(memory).split(hd, dim=-1)
                k, v = self._heads(k, self.n_kv_head), self._heads(v, self.n_kv_head)
                if cache is not None:
                    cache.cross[layer] = (k, v)
            causal = False
        else:
            qkv = self.qkv(x)
            if packing is not None:
                qkv, key_padding_mask = packing.pad(qkv), packing.mask
            q, k, v = qkv.split((self.n_head * self.head_dim, hd, hd), dim=-1)
            q, k, v = (
                self._heads(q, self.n_head),
                self._heads(k, self.n_kv_head),
                self._heads(v, self.n_kv_head),
            )
            start = cache.length if cache is not None else 0
            if rope is not None:
                q, k = rope(q, k, start, positions)
            if cache is not None:
                k, v = cache.update(layer, k, v)
        mask = None
        if key_padding_mask is not None:
            mask = build_mask(t, k.shape[-2], causal=causal, key_padding_mask=key_padding_mask, device=x.device)
            causal = False
        y = attention(
            q,
            k,
            v,
            causal=causal,
            mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            gqa=self.gqa,
            cpu_bf16=self.cpu_bf16,
        )
        y = y.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim)
        return self.proj(packing.pack(y) if packing is not None else y)

    def _decode_step(self, x: torch.Tensor, rope: RotaryEmbedding | None, cache: KVCache, layer: int) -> torch.Tensor:
        """One new token per sequence against the cache, x (B, 1, C): the general path's arithmetic in about
        a third of its operations. A decoding step of a small model costs the number of its operations more
        than their arithmetic: in SmolLM2-135M (30 layers) the general path ran ~60 per layer."""
        b = x.shape[0]
        h, h_kv, d = self.n_head, self.n_kv_head, self.head_dim
        scale = 1.0 / math.sqrt(d)
        qkv = self.qkv(x).view(b, h + 2 * h_kv, d)
        if rope is not None:  # queries and keys rotated together, the queries' rows pre-scaled by 1/√d
            cos, sin = rope.step_tables(cache.length, qkv.dtype, h, h_kv, scale)
            qk = torch.addcmul(qkv[:, : h + h_kv] * cos, qkv[:, : h + h_kv].roll(d // 2, -1), sin)
        else:
            qk = torch.cat((qkv[:, :h] * scale, qkv[:, h : h + h_kv]), 1)
        keys, values = cache.append_one(layer, qk[:, h:], qkv[:, h + h_kv :])  # (B, H_kv, S, D) views
        s = keys.shape[2]
        # the G = H / H_kv queries that share a key/value head as G rows against its keys, read in place
        scores = torch.bmm(qk[:, :h].reshape(b * h_kv, h // h_kv, d), keys.reshape(b * h_kv, s, d).transpose(1, 2))
        p = scores.softmax(-1) if scores.dtype == torch.float32 else scores.softmax(-1, torch.float32).to(values.dtype)
        y = torch.bmm(p, values.reshape(b * h_kv, s, d))  # (B·H_kv, G, D)
        return self.proj(y.view(b, 1, h * d))
