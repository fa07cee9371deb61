"""Parity and speed of an exported graph against the eager model, on the same inputs.

Parity is the max absolute difference over every output; it is checked on the inputs the graph was traced
with and on a batch one smaller (so a batch axis that silently became a constant fails the check). Speed is
a ratio against eager PyTorch measured in the same process, both on the same number of threads, or both on
the same GPU (``device``; each call waits for the GPU to finish).
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from neuratlas.export.parts import Inputs, Part

TOLERANCE = 1e-4  # fp32, on outputs up to 1 in size; relative to the output's largest value above that


@dataclass
class Check:
    part: str
    file: str
    max_abs_diff: float
    speed_ratio: float  # exported runtime's speed / eager's (> 1: faster)
    runtime: str
    samples: int
    max_scaled_diff: float = float("nan")  # per output: max |a − b| / max(1, max |b|)
    device: str = "cpu"  # where both ran

    @property
    def ok(self) -> bool:
        scaled = self.max_abs_diff if self.max_scaled_diff != self.max_scaled_diff else self.max_scaled_diff
        return scaled <= TOLERANCE

    def line(self) -> str:
        verdict = "ok" if self.ok else f"ABOVE the {TOLERANCE:g} tolerance"
        scaled = ""
        if self.max_abs_diff > TOLERANCE and self.max_scaled_diff == self.max_scaled_diff:
            scaled = f", {self.max_scaled_diff:.1e} relative to the output's scale"
        line = (
            f"{self.file}: max |{self.runtime} − eager| {self.max_abs_diff:.2e}{scaled} ({verdict}) on "
            f"{self.samples} samples"
        )
        if self.speed_ratio == self.speed_ratio:  # not NaN: timed
            n = torch.get_num_threads()
            where = f"{n} thread{'s' * (n > 1)}" if self.device == "cpu" else self.device
            line += f"; {self.runtime} runs at {self.speed_ratio:.2f}× eager's speed ({where})"
        elif self.device != "cpu":
            line += f" ({self.device})"
        return line


def flat(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in flat(o)]


def max_diff(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], scaled: bool = False) -> float:
    """max |a − b| over every output (``scaled``: each output's divided by max(1, its largest |b|), for
    outputs such as box coordinates in pixels, whose fp32 rounding grows with their size)."""
    if len(a) != len(b):
        return float("inf")
    d = 0.0
    for x, y in zip(a, b):
        x, y = torch.as_tensor(x).float().cpu(), torch.as_tensor(y).float().cpu()  # a runtime may answer on the host
        if x.shape != y.shape:
            return float("inf")
        if x.numel():
            err = float((x - y).abs().max())
            d = max(d, err / max(1.0, float(y.abs().max())) if scaled else err)
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


def seconds_per_call(fn: Callable[[], object], budget: float = 0.5, device: torch.device | None = None) -> float:
    """Median wall time of ``fn`` over repeats filling about ``budget`` seconds (after one warm-up call); on a
    GPU each call ends when the GPU has finished its work."""
    if device is not None and device.type in ("cuda", "mps"):
        call, sync = fn, getattr(torch, device.type).synchronize

        def fn() -> None:
            call()
            sync()

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
    part: Part,
    file: str,
    runtime: str,
    run: Callable[[Inputs], list[torch.Tensor]],
    timing: bool = True,
    device: torch.device | None = None,
) -> Check:
    """Compare ``run`` (the exported graph) with the eager part on its inputs and a batch one smaller; with
    ``timing``, also measure its speed against eager's on the full inputs. ``device``: where the part and
    its inputs are (the CPU by default)."""
    got, want = run(part.inputs), eager(part, part.inputs)
    diff, scaled = max_diff(got, want), max_diff(got, want, scaled=True)
    small = smaller_batch(part)
    if small is not None:
        got, want = run(small), eager(part, small)
        diff, scaled = max(diff, max_diff(got, want)), max(scaled, max_diff(got, want, scaled=True))
    ratio = float("nan")
    if timing:
        with torch.no_grad():
            t_eager = seconds_per_call(lambda: part.module(*part.inputs), device=device)
        ratio = t_eager / seconds_per_call(lambda: run(part.inputs), device=device)
    n = part.inputs[0].shape[next(iter(part.dynamic[0]), 0)] if part.inputs[0].ndim else 1
    return Check(part.name, file, diff, ratio, runtime, int(n), scaled, str(device or "cpu"))


@contextlib.contextmanager
def on_device(model: nn.Module, device: torch.device | None):
    """``model`` on ``device`` for the length of the block (None: where it is), back where it was after:
    the files are traced where the model lives, checks may run elsewhere."""
    home = next(model.parameters(), torch.empty(0)).device
    try:
        yield model.to(device or home)
    finally:
        model.to(home)


def device_name(device: torch.device | None = None) -> str:
    """The GPU's name for a CUDA device, else the CPU's (speed ratios are quoted with it)."""
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device is not None and device.type == "mps":
        return "Apple MPS"
    return cpu_name()


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
