"""Decoding on CPU: every ``nn.Linear`` becomes a product of a few rows with the weight, and those are
memory-bound.

Generating one token multiplies one row vector by every weight of the model, so a decoding step costs about
the time it takes to stream the weights from memory. PyTorch hands a 1-row ``F.linear`` to one MKL GEMV call,
which runs on one core and reaches 10-20 GB/s here, while two cores can read 31 GB/s. :func:`gemv` splits the
product into one slab of the weight per thread through ``torch.bmm`` (which runs its batch in parallel);
:func:`fast_decoding` switches a model's linear layers to it for the duration of a generation.

Measured on a 2-core AMD EPYC (``neuratlas bench transformer``): a 6 × 384 GPT decodes 1.7× faster in fp32
with identical greedy tokens. On a 2-core AMX Xeon whose cache holds all 42 MB of weights, plain ``F.linear``
was the faster one (530 vs 465 tokens/s), so by default (``"auto"``) the choice is measured, once per
process and model shape, by timing one pass over all the layers each way. ``GPT.stream(..., fast_layout=)``
True / False forces it.

A batch's step (several rows) and bf16 weights go instead through a copy of each weight in oneDNN's
blocked layout (:class:`BlockedWeight`), made on entry like the column-major copies: SmolLM2-135M decodes a batch
of 8 in fp32 1.35× faster with it, a bf16 model at batch 1 1.6× (per CPU-second, same machine).
"""

from __future__ import annotations

import functools
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F


def gemv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, blocks: int | None = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for an input holding one row, split into ``blocks`` parallel slabs.

    A row-major weight (out, in) is split by output rows: each output stays one whole dot product, no
    partial sums. A column-major weight (``weight.t()`` contiguous, an (in, out) matrix) is split along the
    input and the partial products summed: MKL reads that layout ~1.7× faster for widening layers
    (out > in), see :func:`fast_decoding`. Other inputs go to ``F.linear``.
    """
    k = blocks or min(torch.get_num_threads(), 8)
    plan = _Plan(weight, bias, k, weight.is_contiguous())
    return plan(x) if plan.ok and x.numel() == weight.shape[1] else F.linear(x, weight, bias)


class _Plan:
    """The slab views of one weight, made once: the per-token call is then a single ``baddbmm``."""

    rows = 1  # a decoding step of one sequence

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, k: int, row_major: bool) -> None:
        out_f, in_f = weight.shape
        self.out_f, self.in_f, self.k, self.row_major = out_f, in_f, k, row_major
        self.ok = (
            k >= 2
            and weight.dtype == torch.float32
            and (out_f if row_major else in_f) % k == 0
            and (weight.is_contiguous() if row_major else weight.t().is_contiguous())
        )
        if not self.ok:
            return
        b = bias.detach() if bias is not None else weight.new_zeros(out_f)
        if row_major:  # slab j: output rows j·out/k …, as (in, out/k) views of the transposed weight
            self.slabs = weight.detach().t().as_strided((k, in_f, out_f // k), (in_f * (out_f // k), 1, in_f))
            self.bias = b.view(k, 1, out_f // k)
        else:  # slab j: input features j·in/k …, contiguous (in/k, out) blocks; the bias joins slab 0's sum
            self.slabs = weight.detach().t().view(k, in_f // k, out_f)
            self.bias = torch.cat([b.view(1, 1, out_f), b.new_zeros(k - 1, 1, out_f)])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1] + (self.out_f,)
        if self.row_major:
            return torch.baddbmm(self.bias, x.reshape(1, 1, self.in_f).expand(self.k, 1, self.in_f), self.slabs).view(
                shape
            )
        return torch.baddbmm(self.bias, x.reshape(self.k, 1, self.in_f // self.k), self.slabs).sum(0).view(shape)


class BlockedWeight:
    """A weight reordered once into oneDNN's blocked layout for products of a few rows (a decoding step of
    a batch, or of one sequence in bf16); ``rows`` is the size the layout is tuned for, any number of rows
    is computed right. ``F.linear`` reads a row-major weight afresh at every call; the blocked copy streams
    1.7× faster for 8 rows in fp32 (11.3 vs 6.8 GB/s per core) and 1.5–2× for bf16 (2-core AMD EPYC,
    SmolLM2-135M's shapes). ``ok`` is False where oneDNN cannot take the weight (then nothing was made)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int) -> None:
        self.in_f, self.rows = weight.shape[1], rows
        self.ok = onednn_products(weight.dtype) and weight.device.type == "cpu"
        if self.ok:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)
            self.bias = None if bias is None else bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


@functools.cache
def onednn_products(dtype: torch.dtype) -> bool:
    """Whether oneDNN's matrix products on blocked weights run here in ``dtype`` (fp32; bf16 needs the
    CPU's bf16 support)."""
    try:
        if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
            return False
        return dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _decoding_forward(plan: _Plan | BlockedWeight, version: int):
    rows = plan.rows

    def forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        # a decoding step's rows, in eval mode, with the weight the plan was made from (not since updated)
        if x.numel() <= rows * self.in_features and not self.training and self.weight._version == version:
            return plan(x)
        return F.linear(x, self.weight, self.bias)  # prompts, training

    return forward


_MEASURED: dict[tuple, bool] = {}  # model shape -> whether the planned slabs beat F.linear (this process)


def _seconds(fn: Callable[[], object], reps: int = 3) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return time.perf_counter() - t0


def planned_is_faster(layers: list[tuple[nn.Linear, _Plan | BlockedWeight]], key: tuple) -> bool:
    """Time one pass over every layer (the weights streamed as in a decoding step) through the plans and
    through ``F.linear``, rounds interleaved; the plans win if at least 20% faster. Cached per layer shapes.

    The margin is wide because this layers-only pass flatters the plans where the weights sit in cache: on
    an AMX Xeon it found them 5–10% faster while whole-model decoding with them was 6% slower (496 vs 525
    tokens/s); where they pay (weights streamed from memory, AMD EPYC) they are 2–3× faster per layer."""
    if key not in _MEASURED:
        rows = layers[0][1].rows
        xs = [torch.randn(rows, 1, m.in_features, dtype=m.weight.dtype) for m, _ in layers]
        planned, plain = [], []
        with torch.no_grad():
            # 3 interleaved rounds of one pass each: a 135M-parameter model's first token waited 1.4 s for
            # 5 rounds of 3 passes (fp32, 2-core AMD EPYC), and the verdict needs a 20% margin anyway
            for _ in range(3):
                planned.append(_seconds(lambda: [p(x) for (_, p), x in zip(layers, xs)], reps=1))
                plain.append(_seconds(lambda: [F.linear(x, m.weight, m.bias) for (m, _), x in zip(layers, xs)], reps=1))
        _MEASURED[key] = min(planned) < 0.8 * min(plain)
    return _MEASURED[key]


@contextmanager
def fast_decoding(model: nn.Module, enabled: bool | str = True, batch: int = 1) -> Iterator[None]:
    """Within the block, the model's CPU ``nn.Linear`` layers run a decoding step's ``batch`` rows through
    the fastest product found for them: fp32 at one row through :func:`gemv`; several rows, or bf16
    weights, through a oneDNN blocked copy of the weight (:class:`BlockedWeight`).

    For :func:`gemv`, widening layers (out > in: QKV, the feed-forward's first layer) read a column-major
    copy of their weight made on entry (MKL streams it ~1.7× faster; narrowing layers are fastest
    row-major). Copies are dropped on exit; parameters are never modified; on exit every layer is its
    plain self again. ``enabled="auto"``: only if :func:`planned_is_faster` on this machine.
    """
    linears = (
        [
            m
            for m in model.modules()
            if type(m) is nn.Linear
            and m.weight.device.type == "cpu"
            and m.weight.dtype in (torch.float32, torch.bfloat16)
            and "forward" not in vars(m)
        ]
        if enabled
        else []
    )
    k = min(torch.get_num_threads(), 8)
    slabs = batch == 1 and all(m.weight.dtype == torch.float32 for m in linears)
    key = tuple((m.out_features, m.in_features, m.weight.dtype, slabs, batch, k) for m in linears)
    if enabled == "auto" and _MEASURED.get(key) is False:
        linears = []  # measured slower here before: not even the copies are made
    plans = []
    with torch.no_grad():
        for m in linears:
            if slabs:
                wide = m.out_features > m.in_features
                weight = m.weight.t().contiguous().t() if wide else m.weight
                plan = _Plan(weight, m.bias, k, not wide)
            else:
                plan = BlockedWeight(m.weight, m.bias, batch)
            if plan.ok:
                plans.append((m, plan))
    if enabled == "auto" and plans and not planned_is_faster(plans, key):
        plans = []
    for m, plan in plans:
        m.forward = types.MethodType(_decoding_forward(plan, m.weight._version), m)
    try:
        yield
    finally:
        for m, _ in plans:
            del m.forward
