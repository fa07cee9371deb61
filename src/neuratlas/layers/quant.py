"""Weight-only quantized linear layers for CPU inference: bf16, int8 per output channel, int4 in groups.

Decoding a token reads every weight once, so on a CPU its time is bounded by bytes of weights ÷ memory
bandwidth; storing weights in 8 or 4 bits cuts those bytes 4× or 8× against fp32. The products run in
PyTorch's own CPU kernels, which dequantize inside the matrix product (nothing is expanded to fp32 in
memory): ``torch._weight_int8pack_mm`` (w = scale · q, q int8, one scale per output row) and
``torch._weight_int4pack_mm_for_cpu`` (w = scale · (q − 8) + zero per group of ``group`` inputs, q in
0..15). GGUF's Q4_0 (d · (q − 8)) and Q4_1 (d · q + m) blocks of 32 are this int4 form exactly
(scale = d, zero = m + 8d), so :meth:`Int4Linear.from_q4` packs them as they are, without a round trip
through fp32 and a second rounding of the integers (their scales are rounded to bf16, see below).

Both kernels run with bf16 activations and bf16 scales whatever the model's dtype: on a 2-core AMX Xeon
their fp32 paths were 6–15× slower than fp32 ``F.linear`` at one row (576 → 3072: 13 ms int8, 29 ms int4 vs
1.9 ms), their bf16 paths 1.0–1.9× faster than it. The layer returns the input's dtype. For int8 at more
than 16 rows (prompts, batches) the kernel loses to dequantizing the weight to bf16 and one matrix product
(45 vs 21 ms for 128 rows at 576 → 3072), so it does that.
"""

from __future__ import annotations

import torch
from torch import nn

from neuratlas.layers.gemv import BlockedWeight, onednn_products


class BF16Linear(nn.Module):
    """y = x · Wᵀ + b with W stored in bf16 (weight-only bf16: half of fp32's bytes per token) and the
    activations kept in the input's dtype (fp32): only the product reads bf16.

    Why not a model in bf16 throughout: on CPUs the small element-wise operations of a decoding step are
    slower in bf16 than in fp32 (an RMSNorm of one token 105 vs 35 µs, a 3 × 64 × 80 attention product 160
    vs 20 µs; 2-core AMD EPYC, SmolLM2-135M), and a step is mostly such operations once the weights
    stream fast. On the CPU the weight is reordered once into oneDNN's blocked layout, whose one-row
    product streams it 1.5–2× faster than ``F.linear``'s bf16 path (11.6 vs 7.8 GB/s per core, same
    machine); the reordered copy is made on first use, not saved, and remade if the weight changes.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight.detach().to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self._blocked: tuple | None = None  # (the weight's version and storage it was made from, BlockedWeight)

    @classmethod
    def from_float(cls, linear: nn.Linear) -> BF16Linear:
        return cls(linear.weight, linear.bias)

    def __getstate__(self) -> dict:  # copies and pickles leave the reordered weight behind
        state = self.__dict__.copy()
        state["_blocked"] = None
        return state

    def _onednn(self) -> BlockedWeight | None:
        """The oneDNN copy of the weight, made on first use (inference on the CPU) and again once it changed."""
        w = self.weight
        if w.device.type != "cpu" or torch.is_grad_enabled() or not onednn_products(torch.bfloat16):
            return None
        made_from = (w._version, w.data_ptr())
        if self._blocked is None or self._blocked[0] != made_from:
            bias = None if self.bias is None else self.bias.to(torch.bfloat16)
            self._blocked = (made_from, BlockedWeight(w, bias, rows=1))
        return self._blocked[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocked = self._onednn()
        if blocked is not None:  # three operations: a decoding step runs 121 of these layers
            return blocked(x.to(torch.bfloat16)).to(x.dtype)
        bias = None if self.bias is None else self.bias.to(torch.bfloat16)
        return nn.functional.linear(x.to(torch.bfloat16), self.weight, bias).to(x.dtype)


class Int8Linear(nn.Module):
    """y = x · (scale ⊙ q)ᵀ + b with q int8 (out, in) and one fp scale per output row (symmetric)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = q.shape[1], q.shape[0]
        self.register_buffer("q", q.to(torch.int8).contiguous())
        self.register_buffer("scale", scale.to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_float(cls, linear: nn.Linear) -> Int8Linear:
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        q = torch.round(w / scale[:, None]).clamp(-127, 127)
        return cls(q, scale, linear.bias)

    def dequantized(self) -> torch.Tensor:
        return self.q.to(torch.bfloat16) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if x2.shape[0] > 16:
            y = nn.functional.linear(x2, self.dequantized())
        else:
            y = torch._weight_int8pack_mm(x2, self.q, self.scale)
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*shape, self.out_features)


class Int4Linear(nn.Module):
    """y = x · Wᵀ + b with W[o, i] = scale[g, o] · (q[o, i] − 8) + zero[g, o], g = i // group, q in 0..15,
    packed for ``torch._weight_int4pack_mm_for_cpu``."""

    def __init__(
        self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int, bias: torch.Tensor | None
    ) -> None:
        """q (out, in) integers 0..15; scale, zero (out, in // group)."""
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.group = group
        self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1))
        sz = torch.stack([scale.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()
        self.register_buffer("scale_zero", sz)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_float(cls, linear: nn.Linear, group: int = 32) -> Int4Linear:
        """Asymmetric min/max quantization of every group of ``group`` inputs of every row."""
        w = linear.weight.detach().float()
        out_f, in_f = w.shape
        g = w.view(out_f, in_f // group, group)
        lo, hi = g.amin(-1), g.amax(-1)
        scale = ((hi - lo) / 15).clamp(min=1e-12)
        q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).view(out_f, in_f)
        return cls(q, scale, lo + 8 * scale, group, linear.bias)

    @classmethod
    def from_q4(
        cls, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, bias: torch.Tensor | None = None, group: int = 32
    ) -> Int4Linear:
        """GGUF Q4_1 (w = d·q + m) or Q4_0 (``m`` None: w = d·(q − 8)) blocks: q (out, in), d, m (out, in/32)."""
        zero = torch.zeros_like(d) if m is None else m + 8 * d
        return cls(q, d, zero, group, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch._weight_int4pack_mm_for_cpu(x2, self.packed, self.group, self.scale_zero).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*shape, self.out_features)


def can_int4(linear: nn.Linear, group: int = 32) -> bool:
    """Whether the int4 kernel takes this layer's shape (inputs in whole groups, outputs a multiple of 16)."""
    return linear.in_features % group == 0 and linear.out_features % 16 == 0
