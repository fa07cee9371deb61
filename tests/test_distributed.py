"""Data-parallel (DDP) and sharded (FSDP2) training on CPU with gloo, 2 processes through torchrun: each equals
one process with the global batch, a sharded checkpoint resumes bit-exactly, a killed rank fails the job with
one line naming it, and 2 "nodes" rendezvous on loopback. Every subprocess has a time bound."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from neuratlas.config import parse_overrides
from neuratlas.errors import NeuratlasError
from neuratlas.models.checkpoint import resumable
from neuratlas.recipes import get_recipe
from neuratlas.training.trainer import Trainer

WORKER = str(Path(__file__).with_name("distributed_worker.py"))
QUIET = [
    "--trainer.progress",
    "false",
    "--trainer.loggers",
    "csv",
    "--trainer.precision",
    "fp32",
    "--trainer.time_limit",
    "null",
]
# no batch statistics (BatchNorm) and no dropout: a rank's half batch then gives exactly its share of the
# global batch's gradient
CNN = (
    "convnet-fashion-quick",
    [
        "--data.limit_train",
        "512",
        "--data.batch_size",
        "64",
        "--data.augment",
        "false",
        "--model.channels",
        "8,16",
        "--model.norm",
        "false",
        "--model.dropout",
        "0",
        "--trainer.channels_last",
        "false",
        "--data.eval_batch_size",
        "2000",
        "--trainer.max_steps",
        "4",
        "--trainer.eval_every",
        "4",
    ],
)
GPT = (
    "gpt-shakespeare-char-quick",
    [
        "--model.n_layer",
        "2",
        "--model.dim",
        "32",
        "--model.n_head",
        "2",
        "--data.batch_size",
        "8",
        "--data.block_size",
        "32",
        "--task.eval_tokens",
        "2048",
        "--trainer.max_steps",
        "6",
        "--trainer.eval_every",
        "3",
        "--schedule.warmup_steps",
        "2",
    ],
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _torchrun(launcher: list[str], spec: dict, timeout: float = 400) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, WORKER, json.dumps(spec)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def _weights(out: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(out / name / "checkpoints" / "last.safetensors"))


def _assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], exact: bool = False) -> None:
    assert got.keys() == want.keys()
    for k in want:
        if exact:
            assert torch.equal(got[k], want[k]), k
        else:
            # atol: Adam divides by √v, so a near-zero gradient summed in another order (two halves, then
            # averaged) moves its weight by up to ~lr·3e-3 differently (measured: 6e-6 on the GPT at lr 2e-3)
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("recipe,args", [CNN, GPT], ids=["cnn", "gpt"])
def test_ddp_and_fsdp_equal_one_process_with_the_global_batch(tmp_path, recipe, args):
    """k steps of DDP and of FSDP on 2 processes (each half of global batch i; gradients averaged) give the
    weights of 1 process with the global batch. The GPT also resumes its sharded checkpoint bit-exactly."""
    common = [*QUIET, *args, "--trainer.out_dir", str(tmp_path)]
    torch.set_num_threads(1)
    Trainer(get_recipe(recipe).run_config(parse_overrides([*common, "--trainer.run_name", "one"]))).fit()
    jobs = [
        {"args": ["--trainer.strategy", "ddp", "--trainer.run_name", "ddp"]},
        {"args": ["--trainer.strategy", "fsdp", "--trainer.run_name", "fsdp"]},
    ]
    if recipe == GPT[0]:  # dies at step 4 after the step-3 checkpoint, resumes from the shards
        jobs.append({"args": ["--trainer.strategy", "fsdp", "--trainer.run_name", "fsdp-resumed"], "crash_at": 4})
    _torchrun(
        ["--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port())],
        {"recipe": recipe, "args": common, "jobs": jobs},
    )
    one = _weights(tmp_path, "one")
    _assert_close(_weights(tmp_path, "ddp"), one)
    _assert_close(_weights(tmp_path, "fsdp"), one)
    assert (tmp_path / "fsdp" / "checkpoints" / "last.dcp" / ".metadata").is_file()  # the shards
    if recipe == GPT[0]:
        _assert_close(_weights(tmp_path, "fsdp-resumed"), _weights(tmp_path, "fsdp"), exact=True)
        # the consolidated checkpoint is what `eval` reads on one process: the FSDP run's config evaluates
        from neuratlas.models.checkpoint import read_checkpoint
        from neuratlas.training.config import RunConfig

        ckpt = read_checkpoint(tmp_path / "fsdp", prefer="last")
        assert RunConfig.from_dict(ckpt.run_config).trainer.strategy == "fsdp"
        val = Trainer(RunConfig.from_dict(ckpt.run_config), model=ckpt.build_model()).evaluate("val")
        want = json.loads((tmp_path / "one" / "result.json").read_text())["val"]["loss"]
        assert val["loss"] == pytest.approx(want, rel=1e-4)


@pytest.mark.slow
def test_two_nodes_on_loopback_equal_one_process(tmp_path):
    """Multi-node: 2 "nodes" of 1 process each meet through torchrun's c10d rendezvous on 127.0.0.1."""
    recipe, args = (
        "mlp-digits",
        [
            *QUIET,
            "--trainer.out_dir",
            str(tmp_path),
            "--trainer.max_steps",
            "5",
            "--trainer.eval_every",
            "5",
            "--model.dropout",
            "0",
            "--data.augment",
            "false",
        ],
    )
    torch.set_num_threads(1)
    Trainer(get_recipe(recipe).run_config(parse_overrides([*args, "--trainer.run_name", "one"]))).fit()
    port, spec = _free_port(), {"recipe": recipe, "args": args, "jobs": [{"args": ["--trainer.run_name", "nodes"]}]}
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node-rank",
                str(i),
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                "loopback",
                WORKER,
                json.dumps(spec),
            ],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        logs = [node.communicate(timeout=300)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(logs)[-4000:]
    _assert_close(_weights(tmp_path, "nodes"), _weights(tmp_path, "one"))


def _descendant_with_rank(root: int, rank: int) -> int | None:
    """The pid of the process under ``root`` whose environment says RANK=``rank`` (a torchrun worker)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    todo = [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            try:
                env = (Path("/proc") / str(child) / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in env:
                return child
            todo.append(child)
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker through /proc")
def test_a_killed_rank_fails_the_job_with_one_line_naming_it(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "neuratlas",
        "ddp",
        "--nproc",
        "2",
        "mlp-digits",
        *QUIET,
        "--trainer.out_dir",
        str(tmp_path),
        "--trainer.max_steps",
        "1000000",
        "--trainer.eval_every",
        "1000000",
        "--trainer.dist_timeout",
        "60",
    ]
    proc = subprocess.Popen(
        cmd, env={**_env(), "MASTER_PORT": str(_free_port())}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while not list(tmp_path.glob("*/config.json")):  # rank 0 is in the training loop
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.5)
        victim = _descendant_with_rank(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=180)  # fails, does not hang
    finally:
        proc.kill()
    assert proc.returncode == 2, err[-3000:]  # the CLI's code for an error it explains in one line
    assert err.strip().splitlines()[-1] == (
        "error: rank 1 of 2 was killed by SIGKILL; the other processes were "
        "stopped (its log is above; `neuratlas train mlp-digits` failed)"
    )


def test_strategies_need_the_right_number_of_processes(run_overrides):
    run = get_recipe("mlp-digits").run_config({**run_overrides, "trainer.strategy": "fsdp"})
    with pytest.raises(NeuratlasError, match="strategy fsdp needs several processes"):
        Trainer(run)


def test_fp16_scales_the_loss_and_resumes_exactly(run_overrides):
    """fp16 autocast with a gradient scaler (CPU autocast has fp16): the scale is logged and travels in the
    trainer state, so a crashed run resumes bit-exactly."""
    common = {
        **run_overrides,
        "trainer.max_steps": "12",
        "trainer.save_every": "5",
        "trainer.eval_every": "100",
        "trainer.precision": "fp16",
        "trainer.log_every": "1",
    }
    runs = {name: get_recipe("mlp-digits").run_config({**common, "trainer.run_name": name}) for name in "ab"}
    a = Trainer(runs["a"])
    assert a.scaler is not None and a.dtype == torch.float16
    a.fit()
    b = Trainer(runs["b"])
    with pytest.raises(KeyboardInterrupt):
        b.fit(crash_at=8)
    assert "scaler" in resumable(b.run_dir)[1]
    c = Trainer(runs["b"])
    c.fit(resume=b.run_dir)
    for (name, pa), pc in zip(a.model.state_dict().items(), c.model.state_dict().values()):
        assert torch.equal(pa, pc), name
    assert "loss_scale" in (a.run_dir / "metrics.csv").read_text()


def test_activation_checkpointing_gives_the_same_gradients(run_overrides):
    """Recomputing each block in backward changes memory, not the gradient."""
    from neuratlas.training.fsdp import blocks, checkpoint_activations

    over = {**run_overrides, **{k[2:]: v for k, v in zip(GPT[1][::2], GPT[1][1::2])}}
    grads, calls = [], []
    for ckpt in ("false", "true"):
        torch.manual_seed(0)
        trainer = Trainer(
            get_recipe(GPT[0]).run_config(
                {**over, "trainer.activation_checkpointing": ckpt, "trainer.precision": "fp32"}
            )
        )
        inner = next(next(blocks(trainer.model)).children())
        count = [0]
        inner.register_forward_hook(lambda *_, c=count: c.__setitem__(0, c[0] + 1))
        loss, _ = trainer.task.training_loss(trainer.train_model, trainer.task.train_batch(0))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters()})
        calls.append(count[0])
    assert len(list(blocks(trainer.model))) == 2
    assert calls == [1, 2]  # checkpointed: the block's layers run again in backward
    _assert_close(grads[1], grads[0])
    with pytest.raises(NeuratlasError, match="no repeated blocks"):
        checkpoint_activations(torch.nn.Linear(2, 2))
