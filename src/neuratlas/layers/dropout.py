"""Dropout whose random mask is cheap on a CPU.

PyTorch's CPU dropout draws one 32-bit random number per element (``bernoulli_``): 5.9 ms per million
elements on a 2-core Xeon, which nearly doubled the step of a 4 × 256 char GPT (128 → 239 ms at p = 0.1).
Here one 64-bit draw gives four 16-bit numbers; an element is kept when its number is at or above
p·2¹⁶, so p is exact to 1/65,536, and the mask multiplies x in x's own dtype (4.5× faster than a
bool × bf16 product): 166 ms for that step. The draws come from the global torch generator, so seeded runs
and exact resume behave as before; on GPUs the stock kernel is already fast and is used unchanged, and
so is it under ``torch.compile``, whose generated code draws and applies the mask in one fused loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not 0.0 < p < 1.0 or torch.compiler.is_compiling():
        return F.dropout(x, p, training)
    n = x.numel()
    # all 64 bits random (a bare random_() leaves the sign bit 0, so every fourth number would be ≥ 0)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
    draws = bits.view(torch.int16)[:n].view(x.shape)  # uniform over [-2^15, 2^15)
    keep = draws >= round(p * 65536) - 32768
    # bool -> uint8 (a view) -> x's dtype: a mixed bool × bf16 product runs 4.5× slower than a same-dtype one
    return x * (keep.view(torch.uint8).to(x.dtype) * (1.0 / (1.0 - p)))


class Dropout(nn.Module):
    """``nn.Dropout`` with :func:`dropout`'s cheap CPU mask."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
