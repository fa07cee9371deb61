"""Faults a real run meets, each in a subprocess through the CLI: SIGKILL at random points (inside a checkpoint
write included) then --resume, ending bit-identical to an uninterrupted run with the same metrics log;
SIGTERM saving and printing the resume command; a file-size limit (a full disk) failing the save with one
line and leaving the previous checkpoint intact."""

import csv
import os
import random
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from neuratlas.cli import main
from neuratlas.models.checkpoint import load_state, read_checkpoint, step_folders

# The child trains through neuratlas.cli.main. It announces each step, and inside each checkpoint write it
# announces where it is and waits a moment (between the weights and the state file, and between the renamed
# step folder and last.safetensors), so the parent can kill it exactly there.
CHILD = textwrap.dedent("""
    import os, sys, time
    from neuratlas.models import checkpoint as ck
    from neuratlas.training import callbacks as cb

    pause = float(os.environ.get("FAULT_PAUSE", "0"))
    save_state, link = ck.save_state, ck._link_or_copy

    def slow_state(path, state):
        print(f"MIDSAVE {state['step']}", flush=True)
        time.sleep(pause)
        return save_state(path, state)

    def slow_link(src, dst):
        print("LINK", flush=True)
        time.sleep(pause)
        return link(src, dst)

    ck.save_state, ck._link_or_copy = slow_state, slow_link
    on_step = cb.MetricsLogger.on_step

    def announce(self, trainer, logs):
        on_step(self, trainer, logs)
        print(f"STEP {trainer.step}", flush=True)
        time.sleep(pause / 5)

    cb.MetricsLogger.on_step = announce
    from neuratlas.cli import main
    sys.exit(main(sys.argv[1:]))
""")

TRAIN = [
    "--trainer.max_steps",
    "24",
    "--trainer.save_every",
    "3",
    "--trainer.eval_every",
    "8",
    "--trainer.log_every",
    "1",
    "--trainer.precision",
    "fp32",
    "--trainer.num_threads",
    "1",
    "--trainer.progress",
    "false",
    "--trainer.loggers",
    "csv",
    "--model.dropout",
    "0.2",
]


def child(tmp_path: Path, args: list[str], pause: float = 0.0, **kw) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "FAULT_PAUSE": str(pause), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw
    )


def start_or_resume(tmp_path: Path, run_dir: Path, pause: float) -> subprocess.Popen:
    ckpts = run_dir / "checkpoints"
    if step_folders(ckpts):
        return child(tmp_path, ["train", "--resume", str(run_dir)], pause)
    return child(
        tmp_path,
        [
            "train",
            "mlp-digits",
            *TRAIN,
            "--trainer.out_dir",
            str(run_dir.parent),
            "--trainer.run_name",
            run_dir.name,
            "--trainer.overwrite",
            "true",
        ],
        pause,
    )


def metrics(run_dir: Path) -> list[tuple[str, str, str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [
            (r["step"], r["split"], r["name"], r["value"])
            for r in csv.DictReader(f)
            if r["name"] not in ("time_s", "samples_per_s")
        ]


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_is_bit_identical(tmp_path, full):
    """Three kills by default (each a new process: ~10 s on a shared 2-core machine), ten in the full run."""
    n_kills = 10 if full else 3
    base = tmp_path / "runs" / "base"
    p = start_or_resume(tmp_path, base, 0.0)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err

    rng = random.Random(28)
    run = tmp_path / "runs" / "killed"
    kills = []
    for _ in range(n_kills + 2):
        p = start_or_resume(tmp_path, run, 0.15)
        if len(kills) < n_kills:  # then let it finish
            event = rng.choice(["STEP", "MIDSAVE", "LINK"])
            nth = rng.randint(1, 3)
            seen = 0
            for line in p.stdout:
                seen += line.startswith(event)
                if seen == nth:
                    p.send_signal(signal.SIGKILL)
                    kills.append(f"{event}#{nth} ({line.strip()})")
                    break
        out, err = p.communicate(timeout=300)
        if p.returncode == 0:
            break
        assert p.returncode == -signal.SIGKILL, err
    # a kill aimed at an event the rest of the run no longer reaches lets it finish early
    assert p.returncode == 0 and len(kills) >= min(n_kills, 2), (kills, err)
    a, b = (
        load_file(str(base / "checkpoints" / "last.safetensors")),
        load_file(str(run / "checkpoints" / "last.safetensors")),
    )
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), (k, kills)
    assert metrics(run) == metrics(base), kills  # the whole log, no row lost or duplicated
    assert read_checkpoint(run).step == 24
    assert not list((run / "checkpoints").glob(".step-*"))


@pytest.mark.usefixtures("one_thread")
def test_sigterm_saves_and_prints_the_resume_command(tmp_path):
    runs = tmp_path / "runs"
    p = child(
        tmp_path,
        [
            "train",
            "mlp-digits",
            *TRAIN[2:],
            "--trainer.max_steps",
            "100000",
            "--trainer.out_dir",
            str(runs),
            "--trainer.run_name",
            "t",
        ],
        0.05,
    )
    for line in p.stdout:
        if line.startswith("STEP 5"):
            p.send_signal(signal.SIGTERM)
            break
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "interrupted by SIGTERM at step" in out and f"neuratlas train --resume {runs / 't'}" in out
    assert "Traceback" not in err
    step = read_checkpoint(runs / "t", prefer="last").step
    assert step >= 5 and step_folders(runs / "t" / "checkpoints")[0].name == f"step-{step:09d}"
    assert main(["train", "--resume", str(runs / "t"), "--trainer.max_steps", str(step + 2)]) == 0
    assert read_checkpoint(runs / "t", prefer="last").step == step + 2


@pytest.mark.usefixtures("one_thread")
def test_full_disk_fails_the_save_with_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    runs = tmp_path / "runs"
    argv = ["train", "mlp-digits", *TRAIN[2:], "--trainer.max_steps", "4", "--trainer.out_dir", str(runs)]
    assert main([*argv, "--trainer.run_name", "d"]) == 0  # in this process: only the faulty run needs its own
    ckpts = runs / "d" / "checkpoints"
    before = {f.name: (f / "model.safetensors").read_bytes() for f in step_folders(ckpts)}
    state_size = (step_folders(ckpts)[0] / "state.pt").stat().st_size
    weights_size = (step_folders(ckpts)[0] / "model.safetensors").stat().st_size
    limit = (state_size + weights_size) // 2  # the weights fit, the trainer state does not
    assert weights_size < limit < state_size

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = child(tmp_path, ["train", "--resume", str(runs / "d"), "--trainer.max_steps", "8"], preexec_fn=small_files)
    out, err = full.communicate(timeout=120)
    assert full.returncode == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not write") and "state.pt" in lines[0], err
    assert "previous file there is unchanged" in lines[0]
    assert {f.name: (f / "model.safetensors").read_bytes() for f in step_folders(ckpts)} == before
    assert not list(ckpts.glob(".step-*"))  # the half-written folder is gone
    newest = step_folders(ckpts)[0]
    assert load_state(newest / "state.pt")["step"] == read_checkpoint(newest / "model.safetensors").step == 4
    # with room again, the run continues from the kept checkpoint
    assert main(["train", "--resume", str(runs / "d"), "--trainer.max_steps", "8"]) == 0
    assert read_checkpoint(runs / "d", prefer="last").step == 8
