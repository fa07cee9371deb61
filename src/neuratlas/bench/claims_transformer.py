"""Claims 3, 4, 5 and 7: the transformer switches of Table 2, measured on character-level Shakespeare.

Every variant is the same GPT class with one switch changed, trained with the same data, seed and steps.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import nn

from neuratlas import create_model
from neuratlas.bench.report import ClaimResult, budget, line_plot, markdown_table, register_claim, train_variant
from neuratlas.device import autocast, resolve_precision
from neuratlas.errors import NeuratlasError
from neuratlas.models import count_parameters

RECIPE = "gpt-shakespeare-char-quick"  # baby GPT (4 × 128), Shakespeare characters


def _lm(overrides: dict[str, str], steps: int, out: Path, name: str):
    base = {
        "trainer.max_steps": str(steps),
        "trainer.eval_every": str(steps),
        "trainer.time_limit": "none",
        "trainer.log_every": str(max(1, steps // 20)),
        "task.eval_tokens": "32768",
    }
    return train_variant(RECIPE, {**base, **overrides}, out, name)


def norm_claim(quick: bool, out: Path) -> ClaimResult:
    steps = budget(200, 1500, quick)
    lrs = (1e-3, 3e-3, 1e-2) if quick else (1e-3, 3e-3, 1e-2, 3e-2)
    depths = (4, 12)
    rows, series = [], {}
    for depth in depths:
        for norm in ("post_layernorm", "pre_rmsnorm"):
            xs, ys = [], []
            for lr in lrs:
                name = f"{norm}-L{depth}-lr{lr:g}"
                try:
                    _, res = _lm(
                        {
                            "model.norm": norm,
                            "model.n_layer": str(depth),
                            "optimizer.lr": str(lr),
                            "schedule.warmup_steps": "0",
                        },
                        steps,
                        out,
                        name,
                    )
                    loss = res.val["loss"]
                except NeuratlasError:  # NaN/inf loss: the trainer stops and says so
                    loss = float("nan")
                diverged = not math.isfinite(loss) or loss > 3.0  # worse than a unigram model (~3.3 nats)
                rows.append({"norm": norm, "layers": depth, "lr": lr, "val loss": round(loss, 4), "diverged": diverged})
                xs.append(lr)
                ys.append(loss if math.isfinite(loss) else 4.2)
            series[f"{norm} ×{depth}"] = (xs, ys)
    plot = line_plot(
        series,
        out / "norm_val_loss_vs_lr.png",
        f"val loss after {steps} steps, no warmup",
        "learning rate",
        "val loss (nats/char; 4.2 = diverged)",
        logx=True,
    )
    div = {n: sum(r["diverged"] for r in rows if r["norm"] == n) for n in ("post_layernorm", "pre_rmsnorm")}
    best = {
        n: min(r["val loss"] for r in rows if r["norm"] == n and not r["diverged"])
        for n in div
        if any(not r["diverged"] for r in rows if r["norm"] == n)
    }
    fewer = div["pre_rmsnorm"] < div["post_layernorm"]
    lower = "pre_rmsnorm" in best and best["pre_rmsnorm"] <= best.get("post_layernorm", float("inf"))
    holds = fewer or (div["pre_rmsnorm"] == div["post_layernorm"] and lower)
    nan = float("nan")
    verdict = (
        f"{'holds' if holds else 'not shown'}: diverged runs post-LN {div['post_layernorm']}/{len(rows) // 2}, "
        f"pre-RMSNorm {div['pre_rmsnorm']}/{len(rows) // 2}; best val loss post-LN "
        f"{best.get('post_layernorm', nan):.3f} vs pre-RMSNorm {best.get('pre_rmsnorm', nan):.3f}"
    )
    return ClaimResult(
        "3. Pre-RMSNorm trains more stably than Post-LayerNorm",
        rows,
        verdict,
        [plot],
        notes=f"{steps} steps each, batch 16 × 64 characters, AdamW, no warmup (where post-LN is known to be fragile).",
    )


def gqa_claim(quick: bool, out: Path) -> ClaimResult:
    device = torch.device("cpu")
    dtype = resolve_precision("auto", device)
    contexts = (256, 1024) if quick else (256, 1024, 2048)
    new = 16 if quick else 64
    rows = []
    for n_kv in (6, 2, 1):
        model = create_model(
            "gpt-char", n_kv_head=n_kv, max_seq_len=max(contexts) + new, vocab_size=65, dropout=0.0
        ).eval()
        label = {6: "MHA (6 KV heads)", 2: "GQA (2 KV heads)", 1: "MQA (1 KV head)"}[n_kv]
        row = {"attention": label, "parameters": count_parameters(model)}
        for ctx in contexts:
            cache = model.transformer.new_cache(1, ctx + new)
            row[f"KV cache MB @{ctx}"] = round((cache.k.nbytes + cache.v.nbytes) / 2**20, 2)
            prompt = torch.randint(0, 65, (1, ctx))
            with autocast(device, dtype):
                model.generate(prompt, 2, temperature=0.0)  # warm-up
                t0 = time.perf_counter()
                model.generate(prompt, new, temperature=0.0)
            row[f"tokens/s @{ctx}"] = round(new / (time.perf_counter() - t0), 1)
        rows.append(row)
    steps = budget(300, 2000, quick)
    quality = []
    for n_kv in (4, 2, 1):
        _, res = _lm({"model.n_kv_head": str(n_kv)}, steps, out, f"kv{n_kv}")
        quality.append({"KV heads (of 4)": n_kv, "val loss": round(res.val["loss"], 4), "parameters": res.parameters})
    mha, mqa = rows[0], rows[-1]
    c = contexts[-1]
    verdict = (
        f"memory holds: the cache shrinks {mha[f'KV cache MB @{c}'] / mqa[f'KV cache MB @{c}']:.0f}× from MHA "
        f"to MQA; generation at {c} tokens runs {mqa[f'tokens/s @{c}'] / mha[f'tokens/s @{c}']:.2f}× MHA's "
        f"speed; quality cost {quality[-1]['val loss'] - quality[0]['val loss']:+.3f} nats (MQA vs MHA)"
    )
    plot = line_plot(
        {r["attention"]: (list(contexts), [r[f"tokens/s @{c}"] for c in contexts]) for r in rows},
        out / "gqa_tokens_per_s.png",
        "greedy generation, batch 1",
        "prompt length (tokens)",
        "tokens/s",
        logx=True,
    )
    return ClaimResult(
        "4. Grouped-query attention shrinks the KV cache and speeds inference",
        rows,
        verdict,
        [plot],
        notes="Model: 6 layers × 384, 6 query heads, batch 1, greedy decoding of "
        f"{new} tokens after a prompt of the stated length, {'bf16' if dtype else 'fp32'}, same run.\n\n"
        f"Quality (baby GPT, 4 query heads, {steps} steps, same data and seed):\n\n" + markdown_table(quality),
    )


@torch.no_grad()
def _loss_by_position(model: nn.Module, val: torch.Tensor, length: int, n_windows: int) -> torch.Tensor:
    """Mean next-token loss at each position of ``n_windows`` windows of ``length`` tokens."""
    starts = torch.arange(n_windows) * length
    idx = starts[:, None] + torch.arange(length + 1)
    chunk = val[idx]
    model.eval()
    logits = model(chunk[:, :-1]).float()
    return nn.functional.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none").mean(0)


def rope_claim(quick: bool, out: Path) -> ClaimResult:
    steps = budget(400, 3000, quick)
    train_ctx, test_ctx = 64, 256
    rows, series = [], {}
    for pos in ("rope", "sinusoidal", "learned"):
        trainer, res = _lm({"model.positions": pos, "model.max_seq_len": str(test_ctx)}, steps, out, pos)
        val = trainer.task.data.val
        losses = _loss_by_position(trainer.model, val, test_ctx, 24 if quick else 96)
        buckets = [(0, train_ctx), (train_ctx, 2 * train_ctx), (2 * train_ctx, test_ctx)]
        row = {"positions": pos}
        for a, b in buckets:
            row[f"val loss @ positions {a}-{b - 1}"] = round(losses[a:b].mean().item(), 4)
        rows.append(row)
        series[pos] = (
            list(range(test_ctx)),
            torch.nn.functional.avg_pool1d(losses[None, None], 8, 1, 4)[0, 0, :test_ctx].tolist(),
        )
    plot = line_plot(
        series,
        out / "rope_loss_by_position.png",
        f"trained on {train_ctx} tokens, tested on {test_ctx}",
        "position in window",
        "val loss (nats/char)",
    )
    beyond = list(rows[0])[-1]
    rope, sin = rows[0][beyond], rows[1][beyond]
    verdict = (
        f"{'holds' if rope < sin else 'not shown'}: beyond the training context (positions "
        f"{2 * train_ctx}-{test_ctx - 1}) RoPE scores {rope:.3f} vs sinusoidal {sin:.3f} and learned "
        f"{rows[2][beyond]:.3f} nats/char"
    )
    return ClaimResult(
        "5. RoPE handles positions beyond the training context better than sinusoidal",
        rows,
        verdict,
        [plot],
        notes=f"{steps} steps at context {train_ctx}; learned positions past "
        f"{train_ctx} were never trained, the contrast case.",
    )


def parallel_claim(quick: bool, out: Path) -> ClaimResult:
    """Training tokens/s of equal-size LSTM and GPT. With one sequence per batch nothing but the time axis
    can be spread over the cores, which is where the claim bites; with 16 sequences the batch already gives
    the LSTM parallel work, and a 2-core CPU is saturated either way."""
    from neuratlas.bench.report import throughput

    device = torch.device("cpu")
    dtype = resolve_precision("auto", device)
    rows = []
    for batch in (1, 16):
        for block in (64, 256) if quick else (64, 256, 512):
            lstm = create_model("lstm-lm", vocab_size=65)
            gpt = create_model(
                "gpt-char-baby", vocab_size=65, max_seq_len=block, dim=160, n_layer=4, n_head=4, dropout=0.0
            )
            for name, model in (("LSTM 2 × 256", lstm), ("GPT 4 × 160", gpt)):
                opt = torch.optim.AdamW(model.parameters(), 1e-3, fused=True)
                x = torch.randint(0, 65, (batch, block))

                def step(model=model, opt=opt, x=x):
                    with autocast(device, dtype):
                        logits = model(x)
                        logits = logits[0] if isinstance(logits, tuple) else logits
                        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), x.flatten())
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)

                tps = throughput(step, batch * block, min_seconds=1.5 if quick else 5.0)
                rows.append(
                    {
                        "batch": batch,
                        "context": block,
                        "model": name,
                        "parameters": count_parameters(model),
                        "training tokens/s": round(tps),
                    }
                )
    ratio: dict[tuple[int, int], float] = {}
    for r in rows:
        if r["model"].startswith("GPT"):
            lstm = next(
                q
                for q in rows
                if q["model"].startswith("LSTM") and (q["batch"], q["context"]) == (r["batch"], r["context"])
            )
            ratio[(r["batch"], r["context"])] = r["training tokens/s"] / lstm["training tokens/s"]
    for r in rows:
        r["GPT ÷ LSTM"] = round(ratio[(r["batch"], r["context"])], 2)
    one = {c: v for (b, c), v in ratio.items() if b == 1}
    many = {c: v for (b, c), v in ratio.items() if b > 1}
    verdict = (
        f"{'holds' if min(one.values()) > 1 else 'not shown'} for one sequence at a time: GPT trains "
        + ", ".join(f"{v:.1f}× the LSTM's tokens/s at context {c}" for c, v in one.items())
        + "; with a batch of 16 it is "
        + ", ".join(f"{v:.1f}× at {c}" for c, v in many.items())
        + " (the batch already parallelises the LSTM on 2 cores)"
    )
    series = {f"{r['model']}, batch {r['batch']}": ([], []) for r in rows}
    for r in rows:
        xs, ys = series[f"{r['model']}, batch {r['batch']}"]
        xs.append(r["context"])
        ys.append(r["training tokens/s"])
    plot = line_plot(
        series,
        out / "parallel_tokens_per_s.png",
        "training tokens/s, equal-size models",
        "context",
        "tokens/s",
        logy=True,
        logx=True,
    )
    return ClaimResult(
        "7. Transformers parallelise where RNNs cannot",
        rows,
        verdict,
        [plot],
        notes=f"Equal-size models (≈1M parameters), {'bf16' if dtype else 'fp32'}, the LSTM on "
        "torch's fused kernel; one process, measured back to back. The time axis is the only "
        "parallel work at batch 1: the LSTM walks it step by step, the GPT in one matmul.",
    )


register_claim("norms", "3. Pre-RMSNorm vs Post-LayerNorm stability", norm_claim, 3)
register_claim("gqa", "4. Grouped-query attention: KV-cache memory, speed, quality", gqa_claim, 4)
register_claim("rope", "5. RoPE vs sinusoidal beyond the training context", rope_claim, 5)
register_claim("parallel", "7. Transformers parallelise where RNNs cannot", parallel_claim, 7)
