"""Speed races of issue 10, each peer and Neuratlas back to back in one invocation:

- ``nanogpt``: nanoGPT's own ``train.py`` (from ``../shared/peers/nanogpt``) with its CPU "baby GPT" command,
  then Neuratlas' ``gpt-tinyshakespeare-baby`` recipe on the same data and split: val loss and wall time.
- ``mfu``: a GPT 6 × 384 training step's achieved FLOP/s against this machine's measured matmul peak.
- ``fashion-race``: Fashion-MNIST test accuracy reached within a wall-clock budget (60 s, and 10 min).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from neuratlas.bench import BENCHMARKS
from neuratlas.bench.report import _truthy
from neuratlas.errors import NeuratlasError

NANOGPT_BABY = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=100", "--block_size=64",
                "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
                "--lr_decay_iters=2000", "--dropout=0.0"]


def _find_peers(options: dict[str, str]) -> Path:
    candidates = [options.get("peers", ""), os.environ.get("NEURATLAS_PEERS", ""), "../shared/peers",
                  str(Path(__file__).resolve().parents[3] / ".." / "shared" / "peers")]
    for c in candidates:
        if c and (Path(c) / "nanogpt" / "train.py").is_file():
            return Path(c).resolve()
    raise NeuratlasError("nanoGPT peer not found: pass --peers DIR (a folder holding nanogpt/train.py)")


def _timed_run(cmd: list[str], cwd: Path | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise NeuratlasError(f"`{' '.join(cmd[:4])} …` failed: {r.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0, r.stdout


def race_nanogpt(options: dict[str, str]) -> list[str]:
    peers = _find_peers(options)
    text = options.get("text") or str(peers.parent / "data" / "tinyshakespeare" / "input.txt")
    if not Path(text).is_file():
        raise NeuratlasError(f"Tiny Shakespeare not found at {text}: pass --text FILE")
    iters = options.get("iters", "2000")
    work = Path(tempfile.mkdtemp(prefix="nanogpt-race-"))
    try:
        shutil.copytree(peers / "nanogpt", work / "nanogpt")
        data_dir = work / "nanogpt" / "data" / "shakespeare_char"
        shutil.copy(text, data_dir / "input.txt")  # else prepare.py would download it
        subprocess.run([sys.executable, "prepare.py"], cwd=data_dir, check=True, capture_output=True)
        args = [a if not a.startswith(("--max_iters", "--lr_decay_iters")) else a.split("=")[0] + "=" + iters
                for a in NANOGPT_BABY]
        peer_s, peer_out = _timed_run([sys.executable, "train.py", "config/train_shakespeare_char.py", *args,
                                       f"--out_dir={work / 'out'}"], cwd=work / "nanogpt")
        peer_val = float(re.findall(r"step \d+: train loss [\d.]+, val loss ([\d.]+)", peer_out)[-1])
        ours_s, ours_out = _timed_run([sys.executable, "-m", "neuratlas", "train", "gpt-tinyshakespeare-baby",
                                       "--trainer.max_steps", iters, "--trainer.eval_every", iters,
                                       "--trainer.out_dir", str(work / "ours"), "--trainer.progress", "false"])
        ours_val = float(re.search(r"val\s+loss: ([\d.]+)", ours_out).group(1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [f"char-level baby GPT, Tiny Shakespeare, {iters} iterations, {torch.get_num_threads()} threads",
            f"  nanoGPT train.py : val loss {peer_val:.4f} (20 random val batches), wall {peer_s:6.1f} s",
            f"  Neuratlas        : val loss {ours_val:.4f} (whole val split),      wall {ours_s:6.1f} s",
            f"  time ratio Neuratlas/nanoGPT: {ours_s / peer_s:.2f}× (target ≤ 0.5×), val loss "
            f"{'same or better' if ours_val <= peer_val + 0.01 else 'worse'}",
            "reproduce: neuratlas bench nanogpt"]


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """Best sustained FLOP/s of an n×n @ n×n matmul in ``dtype`` on this machine, now."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def race_mfu(options: dict[str, str]) -> list[str]:
    from neuratlas import create_model
    from neuratlas.models import count_parameters
    from neuratlas.training.precision import resolve_precision

    dtype = resolve_precision(options.get("precision", "auto"), torch.device("cpu"))
    batch, ctx = int(options.get("batch", 16)), int(options.get("context", 256))
    model = create_model("gpt-char", vocab_size=65, max_seq_len=ctx, dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    x = torch.randint(0, 65, (batch, ctx))
    cfg = model.cfg
    pos = model.embed.pos
    n = count_parameters(model) - (pos.weight.numel() if pos is not None else 0)  # non-embedding, as nanoGPT
    flops_per_step = (6 * n + 12 * cfg.n_layer * cfg.dim * ctx) * ctx * batch  # PaLM appendix B, as nanoGPT

    def step():
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1).float(), x.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    reps = 3 if _truthy(options.get("quick", "false")) else 10
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    achieved = flops_per_step * reps / (time.perf_counter() - t0)
    peak = matmul_peak(dtype or torch.float32)
    name = "bf16" if dtype else "fp32"
    return [f"GPT 6 × 384, batch {batch} × {ctx}, {name}, {torch.get_num_threads()} threads",
            f"  matmul peak ({name}, 2048², measured now): {peak / 1e9:8.1f} GFLOP/s",
            f"  training step achieved:                  {achieved / 1e9:8.1f} GFLOP/s",
            f"  MFU: {achieved / peak:.1%} (target ≥ 50%)",
            "reproduce: neuratlas bench mfu"]


def race_fashion(options: dict[str, str]) -> list[str]:
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    budgets = [("convnet-fashion-60s", 60.0, 0.92)]
    if not _truthy(options.get("quick", "false")):
        budgets.append(("convnet-fashion-10min", 600.0, 0.94))
    lines = [f"Fashion-MNIST (55k train, 10k test), {torch.get_num_threads()} threads"]
    out = tempfile.mkdtemp(prefix="fashion-race-")
    for recipe, seconds, target in budgets:
        run = get_recipe(recipe).run_config({"trainer.out_dir": out, "trainer.progress": "false",
                                             "trainer.tensorboard": "false"})
        trainer = Trainer(run)
        t0 = time.perf_counter()
        result = trainer.fit()
        wall = time.perf_counter() - t0
        acc = result.test["accuracy"]
        lines.append(f"  {recipe}: test accuracy {acc:.4f} after {result.train_seconds:.0f} s of training "
                     f"({wall:.0f} s with evaluation); target ≥ {target:.0%} within {seconds:.0f} s: "
                     f"{'met' if acc >= target and result.train_seconds <= seconds * 1.05 else 'not met'}")
    shutil.rmtree(out, ignore_errors=True)
    return lines + ["reproduce: neuratlas bench fashion-race"]


BENCHMARKS.add("nanogpt", race_nanogpt, description="nanoGPT train.py vs Neuratlas, baby GPT on Tiny Shakespeare: "
               "val loss and wall time, same run (--peers DIR)")
BENCHMARKS.add("mfu", race_mfu, description="GPT 6×384 training step FLOP/s vs the measured matmul peak (MFU)")
BENCHMARKS.add("fashion-race", race_fashion, description="Fashion-MNIST accuracy within 60 s (and 10 min)")
