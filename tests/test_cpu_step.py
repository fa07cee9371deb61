"""The native decoding step (``layers/cpu_step.c``) against PyTorch's own arithmetic.

The step replaces ~20 tensor operations per layer by one call; these tests hold it to the PyTorch path of
the same model: the same logits in fp32 (left-padded batches, GQA, biases, sizes that are not multiples of
the vector width), quantized weights read as exactly their dequantized values, and every model it does not
cover decoded through PyTorch as before.
"""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from torch import nn

from neuratlas.layers import cpu_step
from neuratlas.layers.cpu_step import CpuStep, library
from neuratlas.layers.quant import BF16Linear, Int4Linear, Int8Linear
from neuratlas.models.gpt import GPT, GPTConfig
from neuratlas.models.transformer import PRESETS

needs_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("cc", "gcc", "clang")), reason="no C compiler to build the native step"
)


def llama(**kw) -> GPT:
    cfg = {**PRESETS["transformer-modern"], "vocab_size": 77, "max_seq_len": 48, "n_layer": 3, "rope_base": 5e5}
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


# odd sizes: dim 60 and head_dim 10 are no multiple of the 16-wide vectors, GQA ratio 3, Q/K/V biases
ODD = dict(dim=60, n_head=6, n_kv_head=2, qkv_bias=True, ffn_dim=100)


def steps(
    model: GPT,
    step: CpuStep | None,
    n: int = 5,
    threads: int = 2,
    prompt_by: GPT | None = None,
    length: int = 9,
) -> list[torch.Tensor]:
    """Logits of n greedy steps after a left-padded prompt of 5 rows and ``length`` tokens (a tile of 4 rows
    and one more, with 0–5 padding tokens), through the native step when given, else through the model; the
    prompt through ``prompt_by`` if given."""
    ids = torch.randint(0, 77, (5, length), generator=torch.Generator().manual_seed(1))
    first = torch.tensor([0, 3, 0, 1, 5])
    mask = torch.arange(length)[None] >= first[:, None]
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = []
    try:
        with torch.inference_mode():
            cache = model.transformer.new_cache(5, length + n)
            logits = (prompt_by or model)(ids, cache=cache, mask=mask)[:, -1]
            for i in range(n):
                tok = logits.argmax(-1)
                if step is not None:
                    logits = step(tok, first, cache)
                else:
                    m = torch.cat([mask, torch.ones(5, i + 1, dtype=torch.bool)], 1)
                    logits = model(tok[:, None], cache=cache, mask=m)[:, -1]
                out.append(logits)
    finally:
        torch.set_num_threads(old)
    return out


@needs_compiler
def test_the_kernel_builds_and_is_cached():
    lib = library()
    assert lib is not None, "a C compiler is here but the native step did not build"
    assert library() is lib
    assert CpuStep.for_model(llama(**ODD)) is not None


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2])
def test_native_step_equals_pytorch_in_fp32(threads):
    model = llama(**ODD)
    want = steps(model, None, threads=threads)
    got = steps(model, CpuStep.for_model(model), threads=threads)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # through generate: the same greedy tokens of a left-padded batch as every step through PyTorch
    ids = torch.randint(0, 77, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[True] * 6, [False, False] + [True] * 4])
    plain = model.generate(ids, 20, temperature=0, mask=mask, fast_layout=False)
    assert model.generate(ids, 20, temperature=0, mask=mask).tolist() == plain.tolist()


@needs_compiler
@pytest.mark.parametrize(
    "shape",
    [dict(n_head=6, n_kv_head=2, head_dim=16), dict(n_head=10, n_kv_head=2, head_dim=80)],
    ids=["head16-gqa3", "head80-gqa5"],
)
def test_long_contexts_in_whole_vectors_equal_pytorch(shape):
    """Heads of whole 16-wide vectors over 40–46 positions: scores in blocks of 16 keys and their tails, value
    tiles of 4 heads × 64 outputs with a partial tile of heads (5 = 4 + 1) and of outputs (80 = 64 + 16)."""
    model = llama(dim=64, ffn_dim=96, max_seq_len=64, **shape)
    want = steps(model, None, n=6, length=40)
    got = steps(model, CpuStep.for_model(model), n=6, length=40)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@needs_compiler
def test_the_portable_build_computes_the_same(tmp_path, monkeypatch):
    """Built without -march=native (the generic vector code other CPUs compile, no x86 intrinsics) the step
    gives the same logits, on fp32, int8 and 4-bit weights."""
    assert cpu_step.build(tmp_path / "portable.so", ["-fopenmp"]) or cpu_step.build(tmp_path / "portable.so", [])
    portable = cpu_step.load(tmp_path / "portable.so")
    for kind in (None, Int8Linear, Int4Linear):
        model = llama(dim=64, n_head=6, n_kv_head=2, head_dim=16, qkv_bias=True, ffn_dim=96)
        if kind is not None:
            for b in model.transformer.blocks:
                b.ffn.fc1, b.attn.qkv = kind.from_float(b.ffn.fc1), kind.from_float(b.attn.qkv)
        want = steps(model, CpuStep.for_model(model))
        with monkeypatch.context() as mp:
            mp.setattr(cpu_step, "library", lambda: portable)
            got = steps(model, CpuStep.for_model(model))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_native_switch_takes_0_or_1_only(monkeypatch):
    """NEURATLAS_NATIVE=0 decodes through PyTorch; a value like "off" is refused in one line instead of
    leaving the kernel on."""
    from neuratlas.errors import NeuratlasError

    library.cache_clear()
    try:
        monkeypatch.setenv("NEURATLAS_NATIVE", "0")
        assert library() is None
        assert CpuStep.for_model(llama(**ODD)) is None
        monkeypatch.setenv("NEURATLAS_NATIVE", "off")
        library.cache_clear()
        with pytest.raises(NeuratlasError, match="NEURATLAS_NATIVE must be 0"):
            library()
    finally:
        library.cache_clear()


def test_a_cache_folder_that_cannot_be_written_means_no_kernel(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert cpu_step.build(blocker / "native" / "cpu_step.so", []) is False


@needs_compiler
def test_generation_past_the_context_rebuilds_the_cache_the_same_way(monkeypatch):
    """Past max_seq_len the cache is rebuilt from the last half-context (a PyTorch prefill), and the native
    steps continue it: the same greedy tokens as every step through PyTorch, left-padded rows included."""
    model = llama(**{**ODD, "max_seq_len": 16})
    ids = torch.randint(0, 77, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[True] * 6, [False, False, False] + [True] * 3])
    plain = model.generate(ids, 30, temperature=0, mask=mask, fast_layout=False)
    calls = []
    step = CpuStep.__call__
    monkeypatch.setattr(CpuStep, "__call__", lambda self, *a: calls.append(1) or step(self, *a))
    assert model.generate(ids, 30, temperature=0, mask=mask).tolist() == plain.tolist()
    assert len(calls) >= 25  # 29 steps after the prompt, less the prefills of the rebuilt caches


def dequantized(layer: nn.Module) -> torch.Tensor:
    if isinstance(layer, BF16Linear):
        return layer.weight.float()
    if isinstance(layer, Int8Linear):
        return layer.q.float() * layer.scale.float()[:, None]
    return layer.dequantized()


@needs_compiler
@pytest.mark.parametrize("kind", [BF16Linear, Int8Linear, Int4Linear])
def test_quantized_weights_are_read_as_their_dequantized_values(kind):
    """The native step on bf16 / int8 / 4-bit weights equals an fp32 model holding exactly the weights those
    formats store (its products accumulate in fp32, activations stay fp32). Both continue one prompt's
    cache (the quantized layers' own PyTorch path rounds activations to bf16)."""
    model = llama(dim=64, n_head=6, n_kv_head=2, head_dim=16, qkv_bias=True, ffn_dim=96)  # inputs in blocks of 32
    quant, ref = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        pairs = [(quant.transformer.blocks[i], ref.transformer.blocks[i]) for i in range(3)]
        for (qb, rb), path in [(p, path) for p in pairs for path in ("attn.qkv", "attn.proj", "ffn.fc1", "ffn.fc2")]:
            owner, attr = path.split(".")
            layer = kind.from_float(getattr(getattr(qb, owner), attr))
            setattr(getattr(qb, owner), attr, layer)
            getattr(getattr(rb, owner), attr).weight.copy_(dequantized(layer))
        quant.head = (Int8Linear if kind is Int4Linear else kind).from_float(quant.head)
        ref.head = nn.Linear(64, ref.head.out_features, bias=False)
        ref.head.weight.copy_(dequantized(quant.head))
    got, want = steps(quant, CpuStep.for_model(quant), prompt_by=ref), steps(ref, None)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_models_outside_the_family_decode_through_pytorch(monkeypatch):
    from neuratlas.layers.lora import apply_lora

    assert CpuStep.for_model(llama(ffn="gelu")) is None
    assert CpuStep.for_model(llama(norm="pre_layernorm")) is None
    assert CpuStep.for_model(llama().train()) is None
    assert CpuStep.for_model(llama().to(torch.bfloat16)) is None
    lora = llama()
    apply_lora(lora, rank=2)
    assert CpuStep.for_model(lora) is None
    # no compiler here: the same model decodes, through PyTorch
    monkeypatch.setattr(cpu_step, "library", lambda: None)
    model = llama(**ODD)
    assert CpuStep.for_model(model) is None
    ids = torch.randint(0, 77, (1, 5))
    assert model.generate(ids, 8, temperature=0).shape == (1, 13)


@needs_compiler
def test_a_full_cache_is_refused_in_one_line():
    model = llama(**ODD)
    step = CpuStep.for_model(model)
    cache = model.transformer.new_cache(1, 2)
    with torch.inference_mode():
        model(torch.tensor([[1, 2]]), cache=cache)
        with pytest.raises(Exception, match="KV cache holds 2 tokens"):
            step(torch.tensor([3]), None, cache)
        with pytest.raises(Exception, match="token ids must be in"):
            step(torch.tensor([77]), None, model.transformer.new_cache(1, 4))
        with pytest.raises(Exception, match="first real token"):
            step(torch.tensor([3]), torch.tensor([5]), model.transformer.new_cache(1, 4))


def test_padding_inside_a_row_decodes_through_pytorch(monkeypatch):
    """The native step takes left padding only; a mask with a hole decodes every step through PyTorch."""
    model = llama(**ODD)
    calls = []
    monkeypatch.setattr(CpuStep, "__call__", lambda self, *a: calls.append(1))
    ids = torch.randint(0, 77, (1, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.tensor([[True, True, False, True, True, True]])
    assert model.generate(ids, 5, temperature=0, mask=mask).shape == (1, 11)
    assert calls == []
