"""Parity and speed of an exported graph against the eager model, on the same inputs.

Parity is the max absolute difference over every output; it is checked on the inputs the graph was traced
with and on a batch one smaller (so a batch axis that silently became a constant fails the check). Speed is
a ratio against eager PyTorch measured in the same process, both on the same number of threads.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from neuratlas.export.parts import Inputs, Part

TOLERANCE = 1e-4  # fp32


@dataclass
class Check:
    part: str
    file: str
    max_abs_diff: float
    speed_ratio: float  # exported runtime's speed / eager's (> 1: faster)
    runtime: str
    samples: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= TOLERANCE

    def line(self) -> str:
        verdict = "ok" if self.ok else f"ABOVE the {TOLERANCE:g} tolerance"
        line = (
            f"{self.file}: max |{self.runtime} − eager| {self.max_abs_diff:.2e} ({verdict}) on {self.samples} samples"
        )
        if self.speed_ratio == self.speed_ratio:  # not NaN: timed
            n = torch.get_num_threads()
            line += f"; {self.runtime} runs at {self.speed_ratio:.2f}× eager's speed ({n} thread{'s' * (n > 1)})"
        return line


def flat(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in flat(o)]


def max_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    if len(a) != len(b):
        return float("inf")
    d = 0.0
    for x, y in zip(a, b):
        x, y = torch.as_tensor(x).float(), torch.as_tensor(y).float()
        if x.shape != y.shape:
            return float("inf")
        if x.numel():
            d = max(d, float((x - y).abs().max()))
    return d


def smaller_batch(part: Part) -> Inputs | None:
    """The part's inputs with every ``batch`` axis one shorter (None when the batch is 1)."""
    out = []
    for t, axes in zip(part.inputs, part.dynamic):
        axis = next((a for a, n in axes.items() if n == "batch"), None)
        if axis is None:
            out.append(t)
            continue
        if t.shape[axis] < 2:
            return None
        out.append(t.narrow(axis, 0, t.shape[axis] - 1))
    return tuple(out)


@torch.no_grad()
def eager(part: Part, inputs: Inputs) -> list[torch.Tensor]:
    return flat(part.module(*inputs))


def seconds_per_call(fn: Callable[[], object], budget: float = 0.5) -> float:
    """Median wall time of ``fn`` over repeats filling about ``budget`` seconds (after one warm-up call)."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-6)
    times = []
    for _ in range(max(3, min(50, int(budget / once)))):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def check(
    part: Part, file: str, runtime: str, run: Callable[[Inputs], list[torch.Tensor]], timing: bool = True
) -> Check:
    """Compare ``run`` (the exported graph) with the eager part on its inputs and a batch one smaller; with
    ``timing``, also measure its speed against eager's on the full inputs."""
    diff = max_diff(run(part.inputs), eager(part, part.inputs))
    small = smaller_batch(part)
    if small is not None:
        diff = max(diff, max_diff(run(small), eager(part, small)))
    ratio = float("nan")
    if timing:
        with torch.no_grad():
            t_eager = seconds_per_call(lambda: part.module(*part.inputs))
        ratio = t_eager / seconds_per_call(lambda: run(part.inputs))
    n = part.inputs[0].shape[next(iter(part.dynamic[0]), 0)] if part.inputs[0].ndim else 1
    return Check(part.name, file, diff, ratio, runtime, int(n))


def cpu_name() -> str:
    """The CPU's model name (speed ratios are quoted with it)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
