"""``neuratlas bench minilm``: the all-MiniLM-L6-v2 sentence encoder, Neuratlas' BERT against
``transformers``' ``BertModel`` on the same real weights and the same tokenized, padded batches of real
sentences (Rotten Tomatoes review snippets), back to back in one process.

Printed: the largest difference of the hidden states (real tokens), sentences/s of both in fp32, and
Neuratlas' bf16 mode (bf16 weights, fp32 attention kernel and pooling) with the cosine of its sentence
embeddings to the fp32 ones. Neuratlas' speed comes from running the per-token layers on real tokens only
(``unpad``, a switch of the model: ``--unpad false`` measures without it); both sides see the same batches.
``--sort true`` sorts the sentences by length first, which leaves little padding to skip (the peer's best case).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass

import torch

from neuratlas.bench import BENCHMARKS
from neuratlas.bench.races import race_line
from neuratlas.extras import require


def _batches(n: int, batch: int, by_length: bool, max_len: int = 128) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` snippets, tokenized, in file order or sorted by length (little padding left, for either
    side), each batch padded to its longest sentence."""
    from neuratlas.data.text import encode_padded, rotten_tomatoes_rows
    from neuratlas.text.tokenizers import HFTokenizer
    from neuratlas.weights import PRETRAINED

    texts = rotten_tomatoes_rows()[0][:n]
    tok = HFTokenizer.from_file(str(PRETRAINED["all-MiniLM-L6-v2"].locate()[0] / "tokenizer.json"))
    ids, mask = encode_padded(tok, texts, max_len)
    if by_length:
        order = mask.sum(1).argsort(stable=True)
        ids, mask = ids[order], mask[order]
    out = []
    for i in range(0, len(texts), batch):
        t = int(mask[i : i + batch].sum(1).max())
        out.append((ids[i : i + batch, :t].contiguous(), mask[i : i + batch, :t].contiguous()))
    return out


def _sentences_per_s(encode, batches, repeats: int) -> float:
    encode(*batches[0])  # warm-up, for both sides
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for ids, mask in batches:
            encode(ids, mask)
        best = min(best, time.perf_counter() - t0)
    return sum(len(ids) for ids, _ in batches) / best


@dataclass
class MiniLMOptions:
    quick: bool = False  # fewer sentences, one timing instead of the best of three
    sentences: int | None = None  # Rotten Tomatoes snippets encoded (default: 1,024 with --quick, else 4,096)
    batch: int = 256
    unpad: bool = True  # ours drops the padding tokens inside the encoder
    sort: bool = False  # batch sentences of similar length together


def bench_minilm(options: MiniLMOptions) -> list[str]:
    transformers = require("transformers", "this benchmark (it races `transformers`)")
    from neuratlas import create_model
    from neuratlas.models.bert import mean_pool
    from neuratlas.weights import PRETRAINED

    quick = options.quick
    n = options.sentences or (1024 if quick else 4096)
    batch, repeats = options.batch, 1 if quick else 3
    unpad = options.unpad
    by_length = options.sort
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = PRETRAINED["all-MiniLM-L6-v2"].locate()[0]
    hf = transformers.BertModel.from_pretrained(str(folder), attn_implementation="sdpa").eval()
    ours = create_model("minilm-l6", unpad=unpad).eval()
    ours_bf16 = copy.deepcopy(ours).to(torch.bfloat16)
    batches = _batches(n, batch, by_length)
    real = sum(int(m.sum()) for _, m in batches)
    padded = sum(m.numel() for _, m in batches)

    def hf_embed(ids, mask):
        return mean_pool(hf(input_ids=ids, attention_mask=mask).last_hidden_state, mask)

    def ours_embed(ids, mask):
        return mean_pool(ours.encode(ids, mask), mask)

    def ours_bf16_embed(ids, mask):
        return mean_pool(ours_bf16.encode(ids, mask).float(), mask)

    with torch.inference_mode():
        worst, cos = 0.0, 1.0
        for ids, mask in batches:
            ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
            worst = max(worst, (ours.encode(ids, mask) - ref)[mask.bool()].abs().max().item())
            e32, e16 = (torch.nn.functional.normalize(f(ids, mask), dim=-1) for f in (ours_embed, ours_bf16_embed))
            cos = min(cos, (e32 * e16).sum(-1).min().item())
        s_hf = _sentences_per_s(hf_embed, batches, repeats)
        s_us = _sentences_per_s(ours_embed, batches, repeats)
        s_16 = _sentences_per_s(ours_bf16_embed, batches, repeats)
    return [
        f"all-MiniLM-L6-v2 (real weights), {n:,} Rotten Tomatoes snippets "
        f"{'sorted by length' if by_length else 'in file order'} in batches of {batch} padded to the batch's "
        f"longest ({real:,} real of {padded:,} token positions); {torch.get_num_threads()} threads",
        f"  hidden states, real tokens: max |Neuratlas − transformers| = {worst:.2e} (target ≤ 1e-4: "
        f"{'met' if worst <= 1e-4 else 'not met'})",
        f"  fp32 sentences/s  transformers BertModel {s_hf:8,.0f}  Neuratlas {s_us:8,.0f}  ratio {s_us / s_hf:.2f}× "
        f"(target ≥ 1.2×: {'met' if s_us / s_hf >= 1.2 else 'not met'}; unpad={unpad})",
        f"  bf16 Neuratlas    {s_16:8,.0f} sentences/s  ratio to transformers fp32 {s_16 / s_hf:.2f}× (target ≥ 3× "
        f"on CPUs with native bf16 matmul: {'met' if s_16 / s_hf >= 3 else 'not met'}); worst sentence-embedding "
        f"cosine to fp32 {cos:.5f} (target ≥ 0.999: {'met' if cos >= 0.999 else 'not met'})",
        race_line(
            "MiniLM encoder inference, fp32",
            f"transformers {s_hf:,.0f} sent/s",
            f"{s_us:,.0f} sent/s",
            f"{s_us / s_hf:.2f}×",
            "outputs ≤ 1e-4, ≥ 1.2×",
            worst <= 1e-4 and s_us / s_hf >= 1.2,
            "neuratlas bench minilm",
        ),
        race_line(
            "MiniLM encoder inference, bf16 mode",
            f"transformers fp32 {s_hf:,.0f} sent/s",
            f"{s_16:,.0f} sent/s (cosine {cos:.5f})",
            f"{s_16 / s_hf:.2f}×",
            "≥ 3×, cosine ≥ 0.999",
            s_16 / s_hf >= 3 and cos >= 0.999,
            "neuratlas bench minilm",
        ),
        f"reproduce: neuratlas bench minilm{' --quick' if quick else ''}",
    ]


BENCHMARKS.add(
    "minilm",
    bench_minilm,
    MiniLMOptions,
    description="MiniLM sentence encoder (real weights) vs transformers' "
    "BertModel: output difference, sentences/s fp32 and bf16",
)
