"""``neuratlas bench transformer``: Neuratlas' GPT and BERT against ``transformers``' GPT2/BERT of the same
size, in the same run (training tokens/s, generation tokens/s, MiniLM sentences/s), plus KV-cache bytes per
token for MHA, GQA and MQA. Both sides get the same warm-up; figures are ratios, never absolute claims."""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass

import torch

from neuratlas.bench import BENCHMARKS
from neuratlas.bench.races import race_line
from neuratlas.extras import require


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up, for both sides
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def _train_step(model, batch, opt, hf: bool, dtype):
    x, y = batch

    def step():
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x).logits if hf else model(x)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


@dataclass
class TransformerOptions:
    quick: bool = False  # batch 8 and 3 timings instead of batch 16 and 10


def bench_transformer(options: TransformerOptions) -> list[str]:
    transformers = require("transformers", "this benchmark (it races `transformers`)")
    from neuratlas.models.gpt import GPT, GPTConfig
    from neuratlas.weights import load_hf_gpt2

    quick = options.quick
    reps = 3 if quick else 10
    dim, n_layer, n_head, ctx, vocab = 384, 6, 6, 256, 65
    batch = 8 if quick else 16
    lines = [
        f"GPT {n_layer} layers × {dim}, {n_head} heads, context {ctx}, vocab {vocab}; torch threads "
        f"{torch.get_num_threads()}"
    ]
    torch.manual_seed(0)
    hc = transformers.GPT2Config(
        vocab_size=vocab,
        n_positions=ctx,
        n_embd=dim,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    hf = transformers.GPT2LMHeadModel(hc)
    with tempfile.TemporaryDirectory() as folder:  # the same weights on both sides (needed for equal tokens)
        hf.save_pretrained(folder)
        ours = load_hf_gpt2(folder)
    x = torch.randint(0, vocab, (batch, ctx))
    data = (x, torch.roll(x, -1, 1))
    for dtype, name in ((None, "fp32"), (torch.bfloat16, "bf16 autocast")):
        hf_t, us_t = copy.deepcopy(hf), copy.deepcopy(ours)  # keep the shared weights for generation
        opt_hf, opt_us = (torch.optim.AdamW(m.parameters(), 1e-4, fused=True) for m in (hf_t, us_t))
        t_hf = _timed(_train_step(hf_t, data, opt_hf, True, dtype), reps)
        t_us = _timed(_train_step(us_t, data, opt_us, False, dtype), reps)
        tok = batch * ctx
        lines.append(
            f"train {name:14s} tokens/s  neuratlas {tok / t_us:9,.0f}  transformers {tok / t_hf:9,.0f}  "
            f"ratio {t_hf / t_us:.2f}×"
        )
    # generation: greedy, batch 1, KV cache on both sides. Batch-1 decoding reads every weight once per token:
    # memory-bound. Also measured: the fast_layout switch off, and bf16 weights (half the bytes, but on CPUs
    # without AMX the bf16 matrix-vector kernels are compute-bound)
    hf.eval()
    ours.eval()
    prompt, n_new = x[:1, :16], 128  # a short generation would mostly time the set-up
    ours16 = copy.deepcopy(ours).to(torch.bfloat16)
    with torch.no_grad():
        want = hf.generate(prompt, max_new_tokens=n_new, do_sample=False, pad_token_id=0, eos_token_id=None)
        got, got16 = (m.generate(prompt, n_new, temperature=0) for m in (ours, ours16))
        t_hf = _timed(
            lambda: hf.generate(prompt, max_new_tokens=n_new, do_sample=False, pad_token_id=0, eos_token_id=None),
            1 if quick else 3,
        )
        t_us = _timed(lambda: ours.generate(prompt, n_new, temperature=0), 1 if quick else 3)
        t_16 = _timed(lambda: ours16.generate(prompt, n_new, temperature=0), 1 if quick else 3)
        t_rm = _timed(lambda: ours.generate(prompt, n_new, temperature=0, fast_layout=False), 1 if quick else 3)
    same = "identical" if got.tolist() == want.tolist() else "DIFFERENT"
    agree = (got16 == got).float().mean().item()
    lines.append(
        f"generate fp32 (greedy, KV cache, batch 1) tokens/s  neuratlas {n_new / t_us:7,.0f}  transformers "
        f"{n_new / t_hf:7,.0f}  ratio {t_hf / t_us:.2f}×; greedy tokens {same}"
    )
    lines.append(
        f"  switch off: generate(fast_layout=False) (plain F.linear) tokens/s {n_new / t_rm:7,.0f}  ratio "
        f"{t_hf / t_rm:.2f}×"
    )
    lines.append(
        f"generate bf16 weights (neuratlas generate --bf16) tokens/s {n_new / t_16:7,.0f}  ratio to transformers "
        f"fp32 {t_hf / t_16:.2f}×; tokens equal to fp32's: {agree:.1%} (a switch for CPUs whose bf16 kernels are "
        f"faster, e.g. AMX)"
    )
    cmd = f"neuratlas bench transformer{' --quick' if quick else ''}"
    lines.append(
        race_line(
            "GPT 6 × 384 generation, fp32, batch 1",
            f"transformers {n_new / t_hf:,.0f} tok/s",
            f"{n_new / t_us:,.0f} tok/s, tokens {same}",
            f"{t_hf / t_us:.2f}×",
            "≥ 1.5×, identical greedy tokens",
            t_hf / t_us >= 1.5 and same == "identical",
            cmd,
        )
    )
    # KV-cache memory: only the n_kv_head key/value heads are stored
    for h_kv, label in ((6, "MHA"), (2, "GQA"), (1, "MQA")):
        m = GPT(GPTConfig(vocab_size=vocab, max_seq_len=ctx, dim=dim, n_layer=n_layer, n_head=n_head, n_kv_head=h_kv))
        b = m.transformer.new_cache(1).bytes_per_token
        lines.append(
            f"KV cache {label} (n_kv_head={h_kv}): {b:,} bytes/token fp32, {b * ctx / 2**20:.2f} MiB per "
            f"{ctx}-token sequence"
        )
    lines.append(f"reproduce: neuratlas bench transformer{' --quick' if quick else ''}")
    return lines


BENCHMARKS.add(
    "transformer",
    bench_transformer,
    TransformerOptions,
    description="GPT training/generation tokens/s vs transformers' GPT2 (same size, same run); "
    "KV-cache bytes for MHA/GQA/MQA",
)
