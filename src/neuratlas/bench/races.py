"""Speed races, each peer and Neuratlas back to back in one invocation:

- ``nanogpt``: nanoGPT's own ``train.py`` (bundled unchanged in ``bench/peers/nanogpt``) with its CPU "baby GPT"
  command, then Neuratlas' ``gpt-tinyshakespeare-baby`` recipe on the same data and split: val loss and wall time.
- ``mfu``: a GPT 6 × 384 training step's achieved FLOP/s against this machine's measured matmul peak.
- ``fashion-race``: Fashion-MNIST test accuracy reached within a wall-clock budget (60 s, and 10 min).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch

from neuratlas.bench import BENCHMARKS
from neuratlas.config import to_dict
from neuratlas.errors import NeuratlasError

NANOGPT_BABY = [
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=100",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--max_iters=2000",
    "--lr_decay_iters=2000",
    "--dropout=0.0",
]


NANOGPT_10MIN = [
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=10",
    "--block_size=128",
    "--batch_size=32",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=256",
    "--dropout=0.0",
]
RACE = "RACE |"  # marks the one summary line of a race; `bench speed` gathers them into its table


def race_line(race: str, peer: str, ours: str, ratio: str, target: str, met: bool, command: str) -> str:
    return f"{RACE} {race} | {peer} | {ours} | {ratio} | {target} | {'met' if met else 'NOT met'} | `{command}`"


@dataclass
class NanoGPTOptions:
    peers: str = ""  # a folder holding nanogpt/train.py (default: $NEURATLAS_PEERS, else the bundled copy)
    text: str = ""  # Tiny Shakespeare's input.txt (default: the bundled copy)


@dataclass
class NanoGPT10MinOptions(NanoGPTOptions):
    budget: float = 600.0  # wall-clock seconds for each side


@dataclass
class MFUOptions:
    quick: bool = False  # 3 timed steps instead of 10
    batch: int = 16
    context: int = 256
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where the CPU has it natively


@dataclass
class FashionRaceOptions:
    quick: bool = False  # the 60-second race only (not the 10-minute one too)


SPEED_RACES = ["nanogpt", "nanogpt-10min", "mfu", "fashion-race", "gnn", "minilm", "transformer"]


@dataclass
class SpeedOptions:
    quick: bool = False  # each race's short form, and no 10-minute GPT race
    only: list[str] = field(default_factory=list)  # only these races (comma-separated names)
    peers: str = ""  # a folder holding nanogpt/train.py (default: $NEURATLAS_PEERS, else the bundled copy)
    text: str = ""  # Tiny Shakespeare's input.txt (default: the bundled copy)
    # a single race's own options; on the command line --RACE.KEY VALUE, e.g. --mfu.batch 2
    races: dict[str, dict[str, Any]] = field(default_factory=dict)


PEERS = Path(__file__).resolve().parent / "peers"  # nanoGPT's files, copied unchanged (MIT; see its README)


def _find_peers(peers: str = "") -> Path:
    """The folder holding ``nanogpt/train.py``: ``--peers DIR``, ``$NEURATLAS_PEERS``, else the bundled copy."""
    for c in (peers, os.environ.get("NEURATLAS_PEERS", ""), str(PEERS)):
        if c and (Path(c) / "nanogpt" / "train.py").is_file():
            return Path(c).resolve()
    raise NeuratlasError("nanoGPT peer not found: pass --peers DIR (a folder holding nanogpt/train.py)")


def _timed_run(cmd: list[str], cwd: Path | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise NeuratlasError(f"`{' '.join(cmd[:4])} …` failed: {r.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0, r.stdout


def _nanogpt_workdir(options: NanoGPTOptions, prefix: str) -> tuple[Path, Path]:
    """A scratch copy of the nanoGPT peer with Tiny Shakespeare prepared: (work folder, its data folder)."""
    from neuratlas.data.text import TINY_SHAKESPEARE

    peers = _find_peers(options.peers)
    text = options.text or str(TINY_SHAKESPEARE.locate()[0] / "input.txt")
    if not Path(text).is_file():
        raise NeuratlasError(f"Tiny Shakespeare not found at {text}: pass --text FILE")
    work = Path(tempfile.mkdtemp(prefix=prefix))
    shutil.copytree(peers / "nanogpt", work / "nanogpt")
    data_dir = work / "nanogpt" / "data" / "shakespeare_char"
    shutil.copy(text, data_dir / "input.txt")  # else prepare.py would download it
    subprocess.run([sys.executable, "prepare.py"], cwd=data_dir, check=True, capture_output=True)
    return work, data_dir


def _rescore_nanogpt(ckpt: Path, text: Path, recipe: str = "gpt-tinyshakespeare-baby") -> tuple[float, int]:
    """nanoGPT's saved checkpoint scored by Neuratlas' evaluator on the whole val split (fp32), so both sides
    are judged by the same evaluation; returns (val loss, nanoGPT's iteration of that checkpoint)."""
    from neuratlas.recipes import get_recipe
    from neuratlas.tasks import build_task
    from neuratlas.weights import load_nanogpt

    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    # the recipe's split and evaluator, on windows of nanoGPT's own context (each side scored at its block size)
    run = get_recipe(recipe).run_config({"data.block_size": str(saved["model_args"]["block_size"])})
    task = build_task(run.task, run.data, run.trainer.seed)
    if task.data.tokenizer.chars != sorted(set(text.read_text())):
        raise NeuratlasError("the character vocabularies differ; cannot score nanoGPT's checkpoint")
    model = load_nanogpt(ckpt).eval()
    step = int(saved["iter_num"])
    return task.evaluate(model, "val", contextlib.nullcontext())["loss"], step


def race_nanogpt(options: NanoGPTOptions) -> list[str]:
    work, data_dir = _nanogpt_workdir(options, "nanogpt-race-")
    try:
        peer_s, peer_out = _timed_run(
            [
                sys.executable,
                "train.py",
                "config/train_shakespeare_char.py",
                *NANOGPT_BABY,
                f"--out_dir={work / 'out'}",
            ],
            cwd=work / "nanogpt",
        )
        peer_est = float(re.findall(r"step \d+: train loss [\d.]+, val loss ([\d.]+)", peer_out)[-1])
        peer_val, peer_step = _rescore_nanogpt(work / "out" / "ckpt.pt", data_dir / "input.txt")
        lines = [
            f"char-level baby GPT (4 × 128, context 64, batch 12), Tiny Shakespeare 90/10 split, "
            f"{torch.get_num_threads()} threads; val loss on the whole val split by one evaluator",
            f"  nanoGPT train.py, 2,000 iterations : val {peer_val:.4f} (its checkpoint of iteration "
            f"{peer_step}; its own 20-batch estimate {peer_est:.4f}), wall {peer_s:6.1f} s",
        ]
        for recipe in ("gpt-tinyshakespeare-baby", "gpt-tinyshakespeare-baby-fast"):
            ours_s, ours_out = _timed_run(
                [
                    sys.executable,
                    "-m",
                    "neuratlas",
                    "train",
                    recipe,
                    "--trainer.out_dir",
                    str(work / "ours"),
                    "--trainer.progress",
                    "false",
                ]
            )
            ours_val = float(re.search(r"val\s+loss: ([\d.]+)", ours_out).group(1))
            steps = re.search(r"for ([\d,]+) steps", ours_out).group(1)
            verdict = "met" if ours_val <= peer_val and ours_s <= 0.5 * peer_s else "not met"
            lines.append(
                f"  Neuratlas {recipe} ({steps} steps): val {ours_val:.4f}, wall {ours_s:6.1f} s"
                f" → time ratio {ours_s / peer_s:.2f}× (target ≤ 0.5× at same or better val: {verdict})"
            )
            lines.append(
                race_line(
                    f"baby GPT, Tiny Shakespeare ({recipe}, {steps} steps)",
                    f"nanoGPT val {peer_val:.4f} in {peer_s:.1f} s",
                    f"val {ours_val:.4f} in {ours_s:.1f} s",
                    f"{ours_s / peer_s:.2f}× time",
                    "≤ 0.5× time, val ≤ peer",
                    verdict == "met",
                    "neuratlas bench nanogpt",
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return lines + [
        "  (wall = whole process, start-up and evaluation included, for both)",
        "reproduce: neuratlas bench nanogpt",
    ]


def nanogpt_budget_schedule(budget: float, per_iter: float) -> dict[str, int]:
    """nanoGPT's iterations fitted to a wall-clock budget, given its seconds per iteration on this machine.

    Evaluated (and checkpointed) at the start and at the last iteration, so the rescored model is final.
    nanoGPT's cosine divides by (lr_decay_iters - warmup_iters): its config's 100 warm-up iterations would crash
    a run fitted to exactly 100 (short budgets), so warm-up is at most half the run."""
    iters = max(20, int((budget - 15) / per_iter))
    return {"max_iters": iters, "lr_decay_iters": iters, "warmup_iters": min(100, iters // 2), "eval_interval": iters}


def race_nanogpt_10min(options: NanoGPT10MinOptions) -> list[str]:
    """Best char-level GPT in a wall-clock budget: nanoGPT's 10-minute configuration (4 × 256, block 128, batch 32)
    with as many iterations as fit the budget on this machine (probed first) vs Neuratlas' budgeted recipe."""
    budget = options.budget
    work, data_dir = _nanogpt_workdir(options, "nanogpt-10min-")
    try:
        cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", *NANOGPT_10MIN]
        # probe: nanoGPT's own ms/iteration on this machine (it has no time limit), then fit the run into budget
        _, probe = _timed_run(
            [*cmd, "--max_iters=12", "--log_interval=1", "--eval_interval=1000", f"--out_dir={work / 'probe'}"],
            cwd=work / "nanogpt",
        )
        ms = sorted(float(t) for t in re.findall(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", probe)[1:])
        per_iter = ms[len(ms) // 2] / 1000 * 1.05  # median, plus its two 20-batch evaluations
        schedule = nanogpt_budget_schedule(budget, per_iter)
        iters = schedule["max_iters"]
        peer_s, _ = _timed_run(
            [*cmd, *(f"--{k}={v}" for k, v in schedule.items()), f"--out_dir={work / 'out'}"], cwd=work / "nanogpt"
        )
        peer_val, peer_step = _rescore_nanogpt(
            work / "out" / "ckpt.pt", data_dir / "input.txt", "gpt-tinyshakespeare-10min"
        )
        ours_s, ours_out = _timed_run(
            [
                sys.executable,
                "-m",
                "neuratlas",
                "train",
                "gpt-tinyshakespeare-10min",
                "--trainer.time_limit",
                str(budget - 30),
                "--trainer.out_dir",
                str(work / "ours"),
                "--trainer.progress",
                "false",
            ]
        )
        ours_val = float(re.search(r"val\s+loss: ([\d.]+)", ours_out).group(1))
        steps = re.search(r"done in [\d.]+s \([^)]*\), ([\d,]+) steps", ours_out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [
        f"best char-level GPT in {budget:.0f} s, Tiny Shakespeare 90/10, whole val split by one evaluator",
        f"  nanoGPT (4 × 256, block 128, batch 32, {iters} iterations fitted to the budget): val {peer_val:.4f} "
        f"(checkpoint of iteration {peer_step}), wall {peer_s:.0f} s",
        f"  Neuratlas gpt-tinyshakespeare-10min ({steps.group(1) if steps else '?'} steps): val {ours_val:.4f}, "
        f"wall {ours_s:.0f} s",
        race_line(
            f"best char GPT in {budget / 60:.0f} min",
            f"nanoGPT val {peer_val:.4f}",
            f"val {ours_val:.4f}",
            f"{peer_val - ours_val:+.3f} nats",
            "val ≤ 1.47",
            ours_val <= 1.47,
            "neuratlas bench nanogpt-10min",
        ),
        "reproduce: neuratlas bench nanogpt-10min",
    ]


# Where a CPU's matmul peak lies depends on the shape: on the AMX Xeon of 2026-12-02, skinny products with
# K = 384 ran at up to 3.9 TFLOP/s in bf16 while 2048² ran at 2.3 (the operands' panels fit in L2). The peak
# is the best of these shapes, so an MFU is never flattered by a slow reference product.
PEAK_SHAPES: tuple[tuple[int, int, int], ...] = (
    (2048, 2048, 2048),
    (4096, 384, 1152),
    (8192, 384, 1152),
    (4096, 1024, 1024),
    (2048, 512, 2048),
)


def matmul_rate(dtype: torch.dtype, m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """Best FLOP/s of one (m × k) @ (k × n) product in ``dtype`` over ``seconds`` of back-to-back runs."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * m * k * n / (time.perf_counter() - t0))
    return best


def matmul_peak(
    dtype: torch.dtype, shapes: tuple[tuple[int, int, int], ...] = PEAK_SHAPES, seconds: float = 1.0
) -> tuple[float, str]:
    """This machine's matmul peak in ``dtype``, now: (best FLOP/s over ``shapes``, that shape as "M×K×N")."""
    rates = {"×".join(map(str, shape)): matmul_rate(dtype, *shape, seconds=seconds) for shape in shapes}
    best = max(rates, key=rates.__getitem__)
    return rates[best], best


def mfu_setup(options: MFUOptions):
    """The MFU race's GPT 6 × 384 (batch 16 × 256 unless overridden): (FLOPs per step, the autocast dtype or
    None for fp32, ``step(dtype)`` running one training step, the model)."""
    from neuratlas import create_model
    from neuratlas.device import keep_freed_memory, resolve_precision
    from neuratlas.models import count_parameters

    keep_freed_memory()  # as the trainer does
    dtype = resolve_precision(options.precision, torch.device("cpu"))
    batch, ctx = options.batch, options.context
    model = create_model("gpt-char", vocab_size=65, max_seq_len=ctx, dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), 1e-4, fused=True)
    x = torch.randint(0, 65, (batch, ctx))
    cfg = model.cfg
    pos = model.embed.pos
    n = count_parameters(model) - (pos.weight.numel() if pos is not None else 0)  # non-embedding, as nanoGPT
    flops_per_step = (6 * n + 12 * cfg.n_layer * cfg.dim * ctx) * ctx * batch  # PaLM appendix B, as nanoGPT

    def step(dtype: torch.dtype | None) -> None:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1).float(), x.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return flops_per_step, dtype, step, model


def _median_seconds(fn, reps: int = 7) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[reps // 2]


def product_ceiling(
    model: torch.nn.Module, tokens: int, ctx: int, dtype: torch.dtype
) -> dict[str, tuple[float, float]]:
    """Time one training step's matrix products alone, each in its own shape, one after another:
    {kind: (FLOPs, seconds)} for the linear layers' forward, input-gradient and weight-gradient products
    (``x Wᵀ``, ``g W``, ``gᵀ x`` as autograd computes them) and the attention's six batched products.
    Their sum is the step's time if everything else were free: the ceiling on its MFU with these kernels."""
    out: dict[str, tuple[float, float]] = {}

    def add(kind: str, flops: float, fn) -> None:
        f, t = out.get(kind, (0.0, 0.0))
        out[kind] = (f + flops, t + _median_seconds(fn))

    for lin in (m for m in model.modules() if isinstance(m, torch.nn.Linear)):
        n_out, n_in = lin.weight.shape
        x, g = torch.randn(tokens, n_in, dtype=dtype), torch.randn(tokens, n_out, dtype=dtype)
        w = torch.randn(n_out, n_in, dtype=dtype)
        flops = 2.0 * tokens * n_in * n_out
        add("forward", flops, lambda x=x, w=w: torch.nn.functional.linear(x, w))
        add("input gradients", flops, lambda g=g, w=w: g @ w)
        add("weight gradients", flops, lambda g=g, x=x: g.t() @ x)
    cfg = model.cfg  # type: ignore[attr-defined]
    bh, hd = tokens // ctx * cfg.n_head, cfg.dim // cfg.n_head
    q, k = torch.randn(bh, ctx, hd, dtype=dtype), torch.randn(bh, ctx, hd, dtype=dtype)
    p = torch.randn(bh, ctx, ctx, dtype=dtype)
    flops = 2.0 * bh * ctx * ctx * hd
    for _ in range(cfg.n_layer):  # forward: QKᵀ, PV; backward: dP = dO Vᵀ, dV = Pᵀ dO, dQ = dS K, dK = dSᵀ Q
        for fn in (
            lambda: q @ k.transpose(1, 2),
            lambda: p @ q,
            lambda: q @ k.transpose(1, 2),
            lambda: p.transpose(1, 2) @ q,
            lambda: p @ q,
            lambda: p.transpose(1, 2) @ q,
        ):
            add("attention", flops, fn)
    return out


def race_mfu(options: MFUOptions) -> list[str]:
    flops_per_step, dtype, step, model = mfu_setup(options)
    batch, ctx = options.batch, options.context
    reps = 3 if options.quick else 10

    def flops_per_second(dtype: torch.dtype | None) -> float:
        for _ in range(2):
            step(dtype)
        t0 = time.perf_counter()
        for _ in range(reps):
            step(dtype)
        return flops_per_step * reps / (time.perf_counter() - t0)

    achieved = flops_per_second(dtype)
    peak, shape = matmul_peak(dtype or torch.float32)
    square = matmul_rate(dtype or torch.float32, 2048, 2048, 2048)
    name = "bf16" if dtype else "fp32"
    lines = [
        f"GPT 6 × 384, batch {batch} × {ctx}, {name}, {torch.get_num_threads()} threads",
        f"  matmul peak ({name}, best of {len(PEAK_SHAPES)} shapes, measured now): {peak / 1e9:8.1f} GFLOP/s "
        f"at {shape} (2048²: {square / 1e9:.0f})",
        f"  training step achieved:                  {achieved / 1e9:8.1f} GFLOP/s",
        f"  MFU: {achieved / peak:.1%} (target ≥ 50%; against the 2048² figure: {achieved / square:.1%})",
    ]
    parts = product_ceiling(model, batch * ctx, ctx, dtype or torch.float32)
    products = sum(t for _, t in parts.values())
    lines.append(
        f"  the step's matrix products alone, timed one by one in their shapes: {products * 1e3:.0f} ms of "
        f"the {flops_per_step / achieved * 1e3:.0f} ms step; even with everything else free, MFU ≤ "
        f"{flops_per_step / products / peak:.1%}"
    )
    lines += [
        f"    {kind:17s} {f / 1e9:6.1f} GFLOP in {t * 1e3:6.1f} ms = {f / t / 1e9:6.0f} GFLOP/s"
        for kind, (f, t) in parts.items()
    ]
    if dtype is not None:  # context: the same step in fp32 against the fp32 peak
        fp32, (fp32_peak, _) = flops_per_second(None), matmul_peak(torch.float32)
        lines.append(
            f"  (fp32, for comparison: {fp32 / 1e9:.1f} GFLOP/s = {fp32 / fp32_peak:.1%} of the fp32 peak "
            f"{fp32_peak / 1e9:.0f} GFLOP/s; the {name} step is {achieved / fp32:.2f}× faster)"
        )
    return [
        *lines,
        race_line(
            "GPT 6 × 384 training step",
            f"matmul peak {peak / 1e9:.0f} GFLOP/s ({name})",
            f"{achieved / 1e9:.0f} GFLOP/s",
            f"MFU {achieved / peak:.1%}",
            "≥ 50% MFU",
            achieved / peak >= 0.5,
            "neuratlas bench mfu",
        ),
        "reproduce: neuratlas bench mfu",
    ]


def race_fashion(options: FashionRaceOptions) -> list[str]:
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    budgets = [("convnet-fashion-60s", 60.0, 0.92)]
    if not options.quick:
        budgets.append(("convnet-fashion-10min", 600.0, 0.94))
    lines = [f"Fashion-MNIST (55k train, 10k test), {torch.get_num_threads()} threads"]
    out = tempfile.mkdtemp(prefix="fashion-race-")
    for recipe, seconds, target in budgets:
        run = get_recipe(recipe).run_config(
            {"trainer.out_dir": out, "trainer.progress": "false", "trainer.loggers": "csv"}
        )
        trainer = Trainer(run)
        t0 = time.perf_counter()
        result = trainer.fit()
        wall = time.perf_counter() - t0
        acc = result.test["accuracy"]
        met = acc >= target and result.train_seconds <= seconds  # final validation and checkpoint included
        lines.append(
            race_line(
                f"Fashion-MNIST in {seconds:.0f} s ({recipe})",
                "—",
                f"test {acc:.4f} in {result.train_seconds:.0f} s",
                "—",
                f"≥ {target:.0%} in {seconds:.0f} s",
                met,
                "neuratlas bench fashion-race",
            )
        )
        lines.append(
            f"  {recipe}: test accuracy {acc:.4f} after {result.train_seconds:.0f} s of training "
            f"({wall:.0f} s with evaluation); target ≥ {target:.0%} within {seconds:.0f} s: "
            f"{'met' if met else 'not met'}"
        )
    shutil.rmtree(out, ignore_errors=True)
    return lines + ["reproduce: neuratlas bench fashion-race"]


def speed(options: SpeedOptions) -> list[str]:
    """Every speed race in one invocation; ends with one table line per race."""
    quick = options.quick
    names = [n for n in SPEED_RACES if n != "nanogpt-10min" or not quick]
    if options.only:
        names = [n for n in names if n in options.only]
    unknown = sorted(set(options.races) - set(SPEED_RACES))
    if unknown:
        raise NeuratlasError(f"bench speed: no race {unknown[0]!r}; the races are {', '.join(SPEED_RACES)}")
    cpu = (
        next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            "unknown CPU",
        )
        if Path("/proc/cpuinfo").is_file()
        else "unknown CPU"
    )
    (peak32, at32), (peak16, at16) = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    head = [
        f"machine: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; matmul peak (best of "
        f"{len(PEAK_SHAPES)} shapes) fp32 {peak32 / 1e9:.0f} GFLOP/s at {at32}, bf16 {peak16 / 1e9:.0f} GFLOP/s "
        f"at {at16} (measured now)"
    ]
    out, table = list(head), []
    shared = {k: v for k, v in to_dict(options).items() if k not in ("only", "races") and v}
    for name in names:
        entry = BENCHMARKS.get(name)
        own = {f.name for f in fields(entry.config_class)}
        opts = {**{k: v for k, v in shared.items() if k in own}, **options.races.get(name, {})}
        print(f"--- {name}", flush=True)
        try:
            lines = entry.builder(entry.config(**opts)) or []
        except NeuratlasError as e:
            lines = [f"  skipped: {e}"]
        for line in lines:
            print(line, flush=True)
        table += [ln.removeprefix(RACE).strip() for ln in lines if ln.startswith(RACE)]
    out += ["", "| race | peer | Neuratlas | ratio | target | verdict | command |", "|---|---|---|---|---|---|---|"]
    return out + [f"| {row} |" for row in table]


BENCHMARKS.add(
    "speed",
    speed,
    SpeedOptions,
    description="every speed race back to back; one table line per "
    "race (--quick skips the 10-minute GPT race; --only a,b; --RACE.KEY VALUE sets a race's option)",
)
BENCHMARKS.add(
    "nanogpt-10min",
    race_nanogpt_10min,
    NanoGPT10MinOptions,
    description="best char-level GPT in 10 minutes: nanoGPT's "
    "10-minute configuration vs Neuratlas' budgeted recipe (--budget S)",
)
BENCHMARKS.add(
    "nanogpt",
    race_nanogpt,
    NanoGPTOptions,
    description="nanoGPT train.py vs Neuratlas, baby GPT on Tiny Shakespeare: "
    "val loss and wall time, same run (--peers DIR)",
)
BENCHMARKS.add(
    "mfu", race_mfu, MFUOptions, description="GPT 6×384 training step FLOP/s vs the measured matmul peak (MFU)"
)
BENCHMARKS.add(
    "fashion-race", race_fashion, FashionRaceOptions, description="Fashion-MNIST accuracy within 60 s (and 10 min)"
)
