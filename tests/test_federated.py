"""Federated learning (splits, aggregation, FedAvg/FedProx simulation, a real Flower deployment on loopback)
and data-parallel training (2-process DDP equals 1 process with the same global batch)."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from neuratlas.errors import NeuratlasError
from neuratlas.models import create_model
from neuratlas.paradigms.federated.core import (
    FederatedConfig,
    aggregate,
    check_shapes,
    dirichlet_split,
    get_weights,
    iid_split,
    local_train,
    set_weights,
    simulate,
)

HAS_FLWR = importlib.util.find_spec("flwr") is not None


pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_iid_split_is_a_partition():
    shards = iid_split(1003, 7, seed=1)
    allidx = np.concatenate(shards)
    assert sorted(allidx.tolist()) == list(range(1003))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_dirichlet_split_properties():
    labels = np.repeat(np.arange(10), 500)
    shards = dirichlet_split(labels, 10, alpha=0.1, seed=0)
    allidx = np.concatenate(shards)
    assert sorted(allidx.tolist()) == list(range(len(labels)))  # a partition: nothing lost, nothing shared
    assert min(map(len, shards)) >= 10
    # small alpha: each client is dominated by few classes; large alpha: close to uniform
    skewed = np.mean([np.bincount(labels[s], minlength=10).max() / len(s) for s in shards])
    flat_shards = dirichlet_split(labels, 10, alpha=100.0, seed=0)
    flat = np.mean([np.bincount(labels[s], minlength=10).max() / len(s) for s in flat_shards])
    assert skewed > 0.5 > 0.2 > flat
    assert [len(s) for s in dirichlet_split(labels, 10, alpha=0.1, seed=0)] == [len(s) for s in shards]
    with pytest.raises(NeuratlasError, match="alpha"):
        dirichlet_split(labels, 10, alpha=0.0)


def test_weighted_aggregation():
    a = [np.ones((2, 2), np.float32), np.zeros(3, np.float32)]
    b = [np.full((2, 2), 4.0, np.float32), np.full(3, 2.0, np.float32)]
    out = aggregate([(a, 30), (b, 10)])
    np.testing.assert_allclose(out[0], 1.75)
    np.testing.assert_allclose(out[1], 0.5)
    assert out[0].dtype == np.float32


def test_fedavg_of_identical_clients_equals_one_client():
    torch.manual_seed(0)
    x = torch.randint(0, 255, (64, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (64,))
    cfg = FederatedConfig(model="lenet5", clients=1, rounds=1, fraction=1.0, batch_size=16)

    def one_client(seed: int) -> list[np.ndarray]:
        torch.manual_seed(cfg.seed)
        m = create_model("lenet5", num_classes=10, in_chans=1)
        local_train(m, x, y, cfg.local, (0.5,), (0.5,), seed=seed)
        return get_weights(m)

    w = one_client(7)
    for a, b in zip(aggregate([(w, 64), (one_client(7), 64)]), w):  # identical updates average to themselves
        np.testing.assert_array_equal(a, b)
    # one simulated round with that client is exactly its local training (seed as simulate derives it)
    got = {}
    hist = simulate(cfg, ((x, y), (x, y), (0.5,), (0.5,), 10), [np.arange(64)], progress=False,
                    on_round=lambda r, m, weights: got.setdefault("w", weights))
    for a, b in zip(got["w"], one_client(cfg.seed * 100_003 + 1 * 1009 + 0)):
        np.testing.assert_array_equal(a, b)
    assert hist.bytes_sent == sum(a.nbytes for a in w)  # only weights travel


def test_set_weights_rejects_wrong_shapes():
    model = create_model("lenet5", num_classes=10, in_chans=1)
    w = get_weights(model)
    set_weights(model, w)
    bad = [a[..., :1] if a.ndim > 1 else a for a in w]
    with pytest.raises(NeuratlasError, match="first mismatch"):
        check_shapes(model, bad)


def test_dp_fedavg_clips_client_updates():
    from neuratlas.paradigms.federated.core import dp_noise_update

    g = [np.zeros((3, 4), np.float32), np.zeros(2, np.float32)]
    c = [np.full((3, 4), 2.0, np.float32), np.full(2, 2.0, np.float32)]
    clipped, norm = dp_noise_update(g, c, clip=1.0)
    assert norm == pytest.approx(2.0 * np.sqrt(14))
    assert np.sqrt(sum((w.astype(np.float64) ** 2).sum() for w in clipped)) == pytest.approx(1.0, rel=1e-5)
    same, _ = dp_noise_update(g, c, clip=100.0)  # within the bound: unchanged
    np.testing.assert_allclose(same[0], c[0])


def test_fedprox_term_keeps_clients_closer():
    torch.manual_seed(0)
    x = torch.randint(0, 255, (128, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (128,))
    drift = {}
    for mu in (0.0, 1.0):
        torch.manual_seed(0)
        m = create_model("lenet5", num_classes=10, in_chans=1)
        start = [p.detach().clone() for p in m.parameters()]
        cfg = FederatedConfig(strategy="fedprox", prox_mu=mu, batch_size=16, lr=0.1, local_epochs=2)
        local = cfg.local
        local_train(m, x, y, local, (0.5,), (0.5,), seed=0)
        drift[mu] = sum(((p - s) ** 2).sum().item() for p, s in zip(m.parameters(), start))
    assert drift[1.0] < drift[0.0]


@pytest.mark.slow
def test_fedavg_simulation_learns_on_fashion_mnist(full):
    if full:
        cfg = FederatedConfig(clients=10, rounds=20, fraction=0.5, alpha=0.5, batch_size=32)
    else:  # bounded: 5 IID clients of 1,200 images, 3 of them per round, 3 rounds of 2 local epochs
        cfg = FederatedConfig(clients=5, rounds=3, fraction=0.6, limit_train=6000, local_epochs=2, batch_size=32)
    hist = simulate(cfg, progress=False)
    assert hist.accuracy[-1] > hist.accuracy[0] and hist.accuracy[-1] > (0.8 if full else 0.5), hist.accuracy


@pytest.mark.slow
@pytest.mark.skipif(not HAS_FLWR, reason="pip install 'neuratlas[federated]' (flwr)")
def test_flower_server_and_clients_on_loopback(tmp_path):
    """A real Flower server and 3 client processes over gRPC on 127.0.0.1: the global model improves; a
    client that sends wrongly shaped updates is rejected with a log line, and a client that dies in the
    middle of round 2 does not stop the round."""
    from neuratlas.paradigms.federated.flower import launch_local

    args = ["--fed.clients", "3", "--fed.rounds", "2", "--fed.fraction", "1.0", "--fed.limit_train", "3000",
            "--fed.batch_size", "32"]
    code, log = launch_local(args, clients=3, port=_free_port(), out_dir=tmp_path, corrupt=(1,), drop={2: 2},
                             timeout=240, round_timeout=90)
    assert code == 0, log[-2000:]
    accs = [float(line.rsplit(" ", 1)[1]) for line in log.splitlines() if "global test accuracy" in line]
    assert len(accs) == 3, log[-2000:]  # round 0 (initial weights), 1, 2
    assert accs[-1] > accs[0] + 0.1, accs
    assert "rejected update from client 1" in log
    assert "received 2 results and 1 failures" in log  # round 2: client 2 died mid-round
    assert (tmp_path / "accuracy.png").is_file() and (tmp_path / "history.json").is_file()


def test_ddp_two_processes_equal_one_process_with_the_global_batch(tmp_path):
    """torchrun-style 2-process DDP (gloo, loopback) takes exactly the steps of 1 process with the global
    batch: each rank takes half of global batch i and DDP averages the gradients."""
    from safetensors.torch import load_file

    common = ["train", "mlp-digits", "--model.dropout", "0", "--data.augment", "false",
              "--trainer.max_steps", "6", "--trainer.precision", "fp32", "--trainer.progress", "false",
              "--trainer.loggers", "csv", "--trainer.out_dir", str(tmp_path), "--data.batch_size", "64",
              "--trainer.eval_every", "6", "--optimizer.lr", "0.01"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(_free_port())}
    from neuratlas.config import parse_overrides
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    overrides = parse_overrides([*common[2:], "--trainer.run_name", "one"])
    Trainer(get_recipe("mlp-digits").run_config(overrides)).fit()  # one process, in this one
    ddp = subprocess.run([sys.executable, "-m", "neuratlas", "ddp", "--nproc", "2", "mlp-digits", *common[2:],
                          "--trainer.run_name", "two"], env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, (ddp.stdout + ddp.stderr)[-3000:]
    one = load_file(str(tmp_path / "one" / "checkpoints" / "last.safetensors"))
    two = load_file(str(tmp_path / "two" / "checkpoints" / "last.safetensors"))
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5)
    assert "val" in (tmp_path / "two" / "result.json").read_text()  # rank 0 wrote the run's files
