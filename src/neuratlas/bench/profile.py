"""``neuratlas bench profile``: where the time of a race goes, as ``torch.profiler`` tables (operators by
self CPU time), so a missed speed target comes with its profile.

``--what`` names what to profile, comma-separated: a recipe name (its training step exactly as the trainer
runs it: ``Trainer.train_step``), ``mfu`` (the MFU race's GPT 6 × 384 step) or
``generate`` (batch-1 greedy decoding of a GPT 6 × 384 with the KV cache, as in the generation race).
The table counts operator time only (Python between operators is missing: batch-1 decoding shows 194 of
its 265 ms) and the profiler adds a little per operator, so the un-profiled time is printed beside it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.profiler import ProfilerActivity, profile

from neuratlas.bench import BENCHMARKS


def _recipe_step(recipe: str, out: str) -> Callable[[], object]:
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    run = get_recipe(recipe).run_config({"trainer.out_dir": out, "trainer.progress": "false", "trainer.loggers": "csv"})
    trainer = Trainer(run)
    trainer.model.train()
    return trainer.train_step  # the trainer's own step: clipping, weight average and schedule included


def _decode_step() -> Callable[[], None]:
    from neuratlas.models.gpt import GPT
    from neuratlas.weights import gpt2_config

    # the generation race's model: GPT-2's switches (tanh-GELU, biases, tied embeddings) at 6 × 384
    model = GPT(gpt2_config({"vocab_size": 65, "n_positions": 256, "n_embd": 384, "n_layer": 6, "n_head": 6})).eval()
    prompt = torch.randint(0, 65, (1, 16))
    return lambda: model.generate(prompt, 128, temperature=0)  # 128 tokens per call


def _target(name: str, out: str) -> tuple[Callable[[], object], str]:
    if name == "mfu":
        from neuratlas.bench.races import MFUOptions, mfu_setup

        _, dtype, step, _ = mfu_setup(MFUOptions())
        return (lambda: step(dtype)), "training step"
    if name == "generate":
        return _decode_step(), "128 generated tokens"
    return _recipe_step(name, out), "training step"  # an unknown recipe: get_recipe's error names it


@dataclass
class ProfileOptions:
    # what to profile: a recipe's training step, mfu (the MFU race's step) or generate (KV-cached decoding)
    what: list[str] = field(default_factory=lambda: ["gpt-tinyshakespeare-baby", "mfu", "generate"])
    rows: int = 15  # operators listed per table
    steps: int = 5  # profiled repetitions


def bench_profile(options: ProfileOptions) -> list[str]:
    names = options.what
    rows, reps = options.rows, options.steps
    lines = []
    with tempfile.TemporaryDirectory() as out:
        for name in names:
            fn, unit = _target(name.strip(), out)
            for _ in range(3):  # warm-up: first-call allocations, plans and measurements
                fn()
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            plain = (time.perf_counter() - t0) / reps
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(reps):
                    fn()
            averages = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in averages) / reps / 1e3
            lines += [
                f"--- {name}: {plain * 1e3:.1f} ms per {unit} un-profiled, {total:.1f} ms of operator self "
                f"time per {unit} under the profiler ({reps} runs, {torch.get_num_threads()} threads)",
                averages.table(sort_by="self_cpu_time_total", row_limit=rows),
            ]
    return lines + [f"reproduce: neuratlas bench profile --what {','.join(names)}"]


BENCHMARKS.add(
    "profile",
    bench_profile,
    ProfileOptions,
    description="torch.profiler tables of the races' hot loops (--what RECIPE|mfu|generate,… --rows N --steps N)",
)
