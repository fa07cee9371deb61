"""The vanishing gradient, shown: how much the last output of a network still depends on an input k steps
back, for a vanilla RNN, an LSTM, a GRU and (for contrast) a causal Transformer, and what that means on a
long-range task.

1. Gradient profile: ``||∂ŷ_T / ∂x_{T-k}||`` for k = 0..T-1, averaged over a batch, at initialisation and
   after training on the adding problem; plotted on a log scale relative to k = 0. A tanh RNN's profile
   falls geometrically (it multiplies by the same Jacobian at every step); the LSTM's additive cell path
   and the GRU's interpolating update can keep it flat; attention reaches every step directly.
2. The adding problem (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016's variant): a sequence of
   (value in [0, 1], marker) pairs; two markers, one in each half; the target is the sum of the two marked
   values. Predicting 1 always gives MSE 1/6 ≈ 0.167; "solved" is |error| < 0.04 (Hochreiter's criterion).
   Each network gets the same steps, batch, optimiser and learning rate at every length.

The LSTM starts with forget-gate bias +3 (f ≈ 0.95: "remember by default", as Gers et al. and Jozefowicz
et al. advise; with PyTorch's default f ≈ 0.5 it sits on the 0.167 plateau for thousands of steps too).
One thread per run: these small sequential models are latency-bound (see recipes/rnn.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from neuratlas.bench import BENCHMARKS
from neuratlas.models.rnn import Recurrent
from neuratlas.plotting import panel_grid, save_png


def adding_batch(batch: int, length: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, 2) inputs (value, marker) and (B,) targets: the sum of the two marked values."""
    values = torch.rand(batch, length, generator=g)
    first = torch.randint(0, max(1, length // 2), (batch,), generator=g)
    second = torch.randint(length // 2, length, (batch,), generator=g)
    markers = torch.zeros(batch, length)
    rows = torch.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    return torch.stack([values, markers], dim=-1), (values * markers).sum(1)


class RecurrentAdder(nn.Module):
    def __init__(self, cell: str, hidden: int, forget_bias: float = 3.0) -> None:
        super().__init__()
        self.body = Recurrent(cell, 2, hidden, forget_bias=forget_bias if cell == "lstm" else 0.0)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)[0][:, -1])[:, 0]


def transformer_adder(hidden: int, length: int) -> nn.Module | None:
    """A 2-layer causal Transformer reading the same inputs (None if the transformer family is absent).
    No positional encoding: the markers say which values to add, so order does not matter."""
    try:
        from neuratlas.models.transformer import Transformer, TransformerConfig
    except ImportError:
        return None

    class TransformerAdder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            cfg = TransformerConfig(dim=hidden, n_layer=2, n_head=4, max_seq_len=length, positions="none")
            self.embed = nn.Linear(2, hidden)
            self.body = Transformer(cfg, causal=True)
            self.head = nn.Linear(hidden, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(self.embed(x))[:, -1])[:, 0]

    return TransformerAdder()


def gradient_profile(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Mean over the batch of ||∂ŷ/∂x_{T-1-k}|| for k = 0..T-1 (index k = distance from the last step)."""
    x = x.clone().requires_grad_(True)
    was = model.training
    model.eval()
    model(x).sum().backward()  # rows are independent, so this gives every sequence's own gradient
    model.train(was)
    norms = x.grad.norm(dim=-1).mean(0)  # (T,)
    return norms.flip(0).numpy()


def train_adder(
    model: nn.Module, length: int, steps: int, lr: float, batch: int, seed: int
) -> tuple[float, float, float]:
    """Train on fresh batches; return (test MSE, test accuracy |err| < 0.04, seconds) on 1,000 new sequences."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = adding_batch(batch, length, g)
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    seconds = time.perf_counter() - t0
    x, y = adding_batch(1000, length, torch.Generator().manual_seed(10_000 + length))
    model.eval()
    with torch.no_grad():
        err = model(x) - y
    return err.pow(2).mean().item(), (err.abs() < 0.04).float().mean().item(), seconds


def plot_profiles(profiles: dict[str, dict[str, np.ndarray]], length: int, path: Path) -> Path:
    colors = {
        "rnn": "tab:red",
        "lstm": "tab:blue",
        "gru": "tab:green",
        "transformer": "tab:purple",
        "lstm, forget bias 0": "lightsteelblue",
    }
    fig, axes = panel_grid(len(profiles), (5.5, 4), sharey=True)
    for ax, (title, curves) in zip(axes, profiles.items()):
        for name, prof in curves.items():
            rel = prof / max(prof[0], 1e-30)
            ax.semilogy(np.arange(len(rel)), np.maximum(rel, 1e-30), label=name, color=colors.get(name))
        ax.set_title(title)
        ax.set_xlabel("distance k from the last step")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("‖∂ŷ_T / ∂x_{T−k}‖  relative to k = 0")
    axes[0].legend()
    fig.suptitle(f"Gradient reaching inputs k steps back (adding problem inputs, T = {length})")
    fig.tight_layout()
    return save_png(fig, path)


@dataclass
class VanishingOptions:
    quick: bool = False  # shorter sequences and fewer steps, no Transformer
    lengths: list[int] | None = None  # sequence lengths T (default: 10,30,60 with --quick, else 10,50,100,200)
    steps: int | None = None  # training steps per cell and length (default: 500 with --quick, else 1,500)
    hidden: int = 32
    lr: float = 1e-2
    batch: int = 64
    seed: int = 0
    out: str = "runs/bench-vanishing"  # folder for the plots
    cells: list[Literal["rnn", "lstm", "gru", "transformer"]] | None = None  # default: all; no transformer with --quick
    threads: int = 1  # torch threads while it runs


def vanishing(options: VanishingOptions) -> list[str]:
    quick = options.quick
    lengths = options.lengths or ([10, 30, 60] if quick else [10, 50, 100, 200])
    steps = options.steps or (500 if quick else 1500)
    hidden, lr, batch, seed = options.hidden, options.lr, options.batch, options.seed
    out = Path(options.out)
    cells = options.cells or ["rnn", "lstm", "gru"] + ([] if quick else ["transformer"])
    threads = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    try:
        return _run(quick, lengths, steps, hidden, lr, batch, seed, out, cells)
    finally:
        torch.set_num_threads(threads)


def _build(name: str, hidden: int, length: int, seed: int) -> nn.Module | None:
    torch.manual_seed(seed)
    if name == "transformer":
        return transformer_adder(hidden, length)
    return RecurrentAdder(name, hidden)


def _run(quick, lengths, steps, hidden, lr, batch, seed, out, cells) -> list[str]:
    longest = max(lengths)
    probe, _ = adding_batch(64, longest, torch.Generator().manual_seed(123))
    at_init: dict[str, np.ndarray] = {}
    trained: dict[str, np.ndarray] = {}
    results: dict[tuple[str, int], tuple[float, float, float]] = {}
    for name in list(cells):
        model = _build(name, hidden, longest, seed)
        if model is None:
            cells.remove(name)
            continue
        at_init[name] = gradient_profile(model, probe)
    if "lstm" in cells:  # PyTorch's default LSTM init (forget gate ≈ 0.5) for comparison
        torch.manual_seed(seed)
        at_init["lstm, forget bias 0"] = gradient_profile(RecurrentAdder("lstm", hidden, 0.0), probe)
    for length in lengths:
        for name in cells:
            model = _build(name, hidden, length, seed)
            results[name, length] = train_adder(model, length, steps, lr, batch, seed)
            if length == longest:
                trained[name] = gradient_profile(model, probe)
    png = plot_profiles(
        {"at initialisation": at_init, f"after {steps} training steps": trained},
        longest,
        out / "vanishing-gradient.png",
    )

    lines = [
        f"vanishing gradient: {', '.join(cells)}; hidden {hidden}, adding problem, {steps} steps × batch "
        f"{batch}, Adam lr {lr}, grad clip 1, seed {seed}{' (quick)' if quick else ''}",
        "",
        f"gradient reaching the input k steps back, relative to k = 0 (T = {longest}):",
        "| model | " + " | ".join(f"k={k}" for k in _ks(longest)) + " |",
        "|---|" + "---|" * len(_ks(longest)),
    ]
    for label, profiles in (("init", at_init), ("trained", trained)):
        for name, prof in profiles.items():
            lines.append(f"| {name} ({label}) | " + " | ".join(f"{prof[k] / prof[0]:.1e}" for k in _ks(longest)) + " |")
    lines += [
        "",
        "adding problem, test accuracy (|error| < 0.04) / MSE on 1,000 new sequences; MSE of always "
        "predicting 1: 0.167",
        "| T | " + " | ".join(cells) + " |",
        "|---|" + "---|" * len(cells),
    ]
    for length in lengths:
        lines.append(
            f"| {length} | "
            + " | ".join(f"{results[n, length][1]:.1%} / {results[n, length][0]:.4f}" for n in cells)
            + " |"
        )
    secs = {n: sum(results[n, t][2] for t in lengths) for n in cells}
    lines += ["", "training time, all lengths: " + ", ".join(f"{n} {s:.0f}s" for n, s in secs.items()), f"plot: {png}"]
    return lines


def _ks(length: int) -> list[int]:
    ks = sorted({0, 1, 5, 10, 20, 50, 100, 200, length - 1})
    return [k for k in ks if k < length]


BENCHMARKS.add(
    "vanishing",
    vanishing,
    VanishingOptions,
    description="gradient vs distance for RNN/LSTM/GRU(/Transformer), adding problem by length",
)
