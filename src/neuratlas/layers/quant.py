"""Weight-only quantized linear layers for CPU inference: bf16, int8 per output channel, 4-bit in blocks.

Decoding a token reads every weight once, so on a CPU its time is bounded by bytes of weights ÷ memory
bandwidth; storing weights in 8 or 5 bits cuts those bytes 4× or 6.4× against fp32. A Llama-family model's
decoding steps read these layers' stored weights directly in the native step
(:mod:`neuratlas.layers.cpu_step`, activations in fp32); through PyTorch (prompts, other models, no C
compiler) the products run in PyTorch's own CPU kernels, which dequantize inside the matrix product:
``torch._weight_int8pack_mm`` (w = scale · q, q int8, one scale per output row) and
``torch._weight_int4pack_mm_for_cpu``. The 4-bit layer keeps GGUF's Q4_1 blocks of 32 (an fp16 scale d, an
fp16 offset m, 16 bytes of nibbles: w = d · q + m); Q4_0 (d · (q − 8)) is that form with m = −8d, so
:meth:`Int4Linear.from_q4` keeps a file's blocks as they are, without a round trip through fp32 and a second
rounding of the integers.

PyTorch's kernels run with bf16 activations and bf16 scales whatever the model's dtype: on a 2-core AMX Xeon
their fp32 paths were 6–15× slower than fp32 ``F.linear`` at one row (576 → 3072: 13 ms int8, 29 ms int4 vs
1.9 ms), their bf16 paths 1.0–1.9× faster than it. The layer returns the input's dtype. At more than 16 rows
(prompts, batches) the kernels lose to dequantizing the weight to bf16 and one matrix product (int8: 45 vs
21 ms for 128 rows at 576 → 3072), so the layers do that.
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


class _IntLinear(nn.Module):
    """The forward shared by the integer layers: a few rows (a decoding step) through PyTorch's weight-only
    kernel (:meth:`_few_rows`, bf16 activations), more rows (a prompt) through one bf16 product with the
    weight dequantized for the call; the result in the input's dtype, the fp32 bias added after."""

    in_features: int
    out_features: int

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        raise NotImplementedError

    def _few_rows(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if x2.shape[0] > 16:
            y = nn.functional.linear(x2, self.dequantized(torch.bfloat16))
        else:
            y = self._few_rows(x2)
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*shape, self.out_features)


class Int8Linear(_IntLinear):
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

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.q.to(dtype) * self.scale[:, None].to(dtype)

    def _few_rows(self, x: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(x, self.q, self.scale)


class Int4Linear(_IntLinear):
    """y = x · Wᵀ + b with W stored in 4 bits, blocks of 32 inputs of a row as GGUF's Q4_1 lays them out:
    an fp16 scale d, an fp16 offset m and 16 bytes of nibbles, W = d · q + m, q in 0..15 (5 bits a weight).

    The layout is the one the native decoding step (:mod:`neuratlas.layers.cpu_step`) reads. Through
    PyTorch, a few rows (a decoding step without the native kernel) go to
    ``torch._weight_int4pack_mm_for_cpu`` on a packed copy made on first use (not saved), and more rows (a
    prompt) to one bf16 product with the weight dequantized for the call, as :class:`Int8Linear` does.
    """

    def __init__(self, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor, bias: torch.Tensor | None) -> None:
        """q (out, in) integers 0..15; d, m (out, in // 32): W = d · q + m per block of 32."""
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.group = 32
        q = q.to(torch.uint8).view(self.out_features, -1, 2, 16)
        nibbles = q[:, :, 0] | (q[:, :, 1] << 4)  # byte j: q[j] low, q[j + 16] high
        scales = torch.stack([d, m], dim=-1).to(torch.float16).view(torch.uint8)  # (out, in/32, 4)
        self.register_buffer("blocks", torch.cat([scales, nibbles], dim=-1).contiguous())  # (out, in/32, 20)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self._packed: tuple | None = None  # (blocks' version, int4pack weight, scales and zeros)

    @classmethod
    def from_float(cls, linear: nn.Linear) -> Int4Linear:
        """Asymmetric min/max quantization of every block of 32 inputs of every row."""
        w = linear.weight.detach().float()
        out_f, in_f = w.shape
        g = w.view(out_f, in_f // 32, 32)
        lo, hi = g.amin(-1), g.amax(-1)
        d = ((hi - lo) / 15).half().float()  # the stored (fp16) scale rounds the integers
        q = torch.round((g - lo[..., None]) / d.clamp(min=1e-30)[..., None]).clamp(0, 15)  # a constant block: q = 0
        q = torch.where(d[..., None] > 0, q, 0).view(out_f, in_f)
        return cls(q, d, lo, linear.bias)

    @classmethod
    def from_q4(
        cls, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, bias: torch.Tensor | None = None
    ) -> Int4Linear:
        """GGUF Q4_1 (w = d·q + m) or Q4_0 (``m`` None: w = d·(q − 8)) blocks: q (out, in), d, m (out, in/32)."""
        return cls(q, d, -8 * d if m is None else m, bias)

    def __getstate__(self) -> dict:  # copies and pickles leave the packed copy behind
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (out, in) uint8 0..15 and d, m (out, in/32) fp32."""
        b = self.blocks
        scales = b[..., :4].contiguous().view(torch.float16).float()  # (out, in/32, 2)
        nibbles = b[..., 4:]
        q = torch.cat([nibbles & 15, nibbles >> 4], dim=-1).view(self.out_features, self.in_features)
        return q, scales[..., 0], scales[..., 1]

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        q, d, m = self.parts()
        w = q.view(self.out_features, -1, 32).to(dtype) * d[..., None].to(dtype) + m[..., None].to(dtype)
        return w.view(self.out_features, self.in_features)

    def _few_rows(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None or self._packed[0] != self.blocks._version:  # packed on first use
            q, d, m = self.parts()
            packed = torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)
            # the kernel's form: W = scale · (q − 8) + zero
            sz = torch.stack([d.t(), (m + 8 * d).t()], dim=-1).to(torch.bfloat16).contiguous()
            self._packed = (self.blocks._version, packed, sz)
        return torch._weight_int4pack_mm_for_cpu(x, self._packed[1], self.group, self._packed[2])


def can_int4(linear: nn.Linear, group: int = 32) -> bool:
    """Whether the int4 kernel takes this layer's shape (inputs in whole groups, outputs a multiple of 16)."""
    return linear.in_features % group == 0 and linear.out_features % 16 == 0
