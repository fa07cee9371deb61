"""Federated learning for real, on Flower (``flwr``): a server process and client processes talking gRPC.

A client trains with :func:`neuratlas.paradigms.federated.core.local_steps` (the task's batches and loss, the
run's optimizer), the code the simulation runs; the server combines updates with the simulation's
:class:`~neuratlas.paradigms.federated.core.ServerAggregator`, so every update is screened (shapes, dtypes,
finite values, norm against the round's median) and a bad one is rejected with a log line naming its
client, and the robust aggregators and FedAdam work the same here. The global model is evaluated on the test
set after every round and ``history.json`` is rewritten then, so a stopped server keeps its completed rounds.
Clients that drop out do not stop a round: Flower aggregates whatever arrived (``accept_failures``), and
``federated.round_timeout`` bounds the wait for a client that never answers.

Both sides are built from the same run config (a recipe name plus overrides), so they agree on the model,
the data split and the local training. Uses Flower's ``start_server`` / ``start_client`` entry points (gRPC
bidi transport), which flwr 1.x ships as deprecated shims.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from neuratlas.errors import NeuratlasError
from neuratlas.extras import require
from neuratlas.paradigms.federated.core import (
    ATTACKS,
    History,
    ServerAggregator,
    Update,
    client_seed,
    client_shards,
    evaluate,
    get_weights,
    local_steps,
    plot_histories,
    set_weights,
    write_json,
)
from neuratlas.paradigms.federated.privacy import clip_update
from neuratlas.paradigms.federated.run import federated_setup, history_record
from neuratlas.training.config import RunConfig

log = logging.getLogger("neuratlas.paradigms.federated")


def _flwr():
    """Flower, with its usage telemetry off unless the user turned it on (a privacy feature must not post
    events to a third party by default)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    return require("flwr", "the Flower deployment")


# --- client -------------------------------------------------------------------------------------------


def make_client(run: RunConfig, client_id: int, attack: str = "", drop_at_round: int = 0, hang_at_round: int = 0):
    """A Flower NumPyClient training on shard ``client_id`` of the run's split (only that shard is kept).
    For fault-tolerance checks: ``attack`` (nan | scale | shape) sends a poisoned update instead of the
    trained weights; ``drop_at_round`` makes the process die in the middle of that round's training, as a
    crashed device would; ``hang_at_round`` makes it stop answering from that round on (the server's round
    timeout must carry on without it)."""
    flwr = _flwr()
    fed, task, model = federated_setup(run)
    x, y = task.data.train
    shards = client_shards(fed, y, run.trainer.seed)
    if not 0 <= client_id < len(shards):
        raise NeuratlasError(f"client id must be in [0, {len(shards)}), got {client_id}")
    if attack and attack not in ATTACKS:
        raise NeuratlasError(f"unknown attack {attack!r}; choose from {', '.join(ATTACKS)}")
    idx = torch.from_numpy(shards[client_id])
    mine = (x[idx].clone(), y[idx].clone())  # this client's own data; the rest is dropped
    task.data.train = mine

    class NeuratlasClient(flwr.client.NumPyClient):
        def get_parameters(self, config):
            return get_weights(model)

        def fit(self, parameters, config):
            set_weights(model, parameters)
            r = int(config.get("server_round", 0))
            if drop_at_round and r >= drop_at_round:
                log.warning("client %d: dropping out in round %d", client_id, r)
                os._exit(3)
            if hang_at_round and r >= hang_at_round:
                log.warning("client %d: not answering from round %d", client_id, r)
                time.sleep(10 * fed.round_timeout)
            logs = local_steps(
                task, model, run, mine, fed.local_epochs, client_seed(run.trainer.seed, r, client_id), fed.local_mu
            )
            weights = get_weights(model)
            if fed.dp_clip > 0:  # the change is bounded before it leaves the client (privacy.py)
                weights = clip_update(parameters, weights, fed.dp_clip)[0]
            if attack:
                weights = ATTACKS[attack](weights)
            return weights, len(idx), {"loss": logs["loss"], "client": client_id}

        def evaluate(self, parameters, config):
            set_weights(model, parameters)
            m = evaluate(task, model, run, "train")
            return m["loss"], len(idx), {"accuracy": m["accuracy"]}

    return NeuratlasClient()


def run_client(
    run: RunConfig, address: str, client_id: int, attack: str = "", drop_at_round: int = 0, hang_at_round: int = 0
) -> None:
    flwr = _flwr()
    client = make_client(run, client_id, attack, drop_at_round, hang_at_round)
    flwr.client.start_client(
        server_address=address, client=client.to_client(), insecure=True, max_retries=30, max_wait_time=60.0
    )


# --- server -------------------------------------------------------------------------------------------


def run_server(run: RunConfig, address: str, min_clients: int, out_dir: str | Path) -> History:
    """Serve the run's rounds; evaluates the global model on the test set after each and rewrites
    ``history.json`` (and at the end ``accuracy.png``) in ``out_dir``."""
    flwr = _flwr()
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg

    fed, task, model = federated_setup(run)
    if fed.secure_aggregation:
        raise NeuratlasError(
            "secure_aggregation runs on Flower's Message API (neuratlas federated deploy, or neuratlas train); "
            "the legacy gRPC server has no SecAgg+"
        )
    shards = client_shards(fed, task.data.train[1], run.trainer.seed)
    samples_limit = max(map(len, shards))
    hist = History(f"flower {fed.label}")
    out = Path(out_dir)
    server = ServerAggregator(fed, run.trainer.seed, log.warning)
    state = {"weights": get_weights(model)}

    def evaluate_fn(server_round: int, parameters, config) -> tuple[float, dict[str, Any]]:
        set_weights(model, parameters)
        m = evaluate(task, model, run)
        hist.add(server_round, m, fed)
        write_json(out / "history.json", history_record(run, hist))
        log.warning("%s", hist.round_line())
        return m["loss"], {"accuracy": m["accuracy"]}

    class Screened(FedAvg):
        """FedAvg's sampling and bookkeeping; the aggregation is Neuratlas's screened one."""

        def aggregate_fit(self, server_round, results, failures):
            updates = []
            for proxy, res in results:
                client = str(res.metrics.get("client", proxy.cid))
                hist.bytes_sent += sum(len(t) for t in res.parameters.tensors)
                updates.append(Update(client, parameters_to_ndarrays(res.parameters), int(res.num_examples)))
            if failures:
                log.warning("round %d: %d client(s) failed or did not answer in time", server_round, len(failures))
            weights, rejected = server(server_round, state["weights"], updates, samples_limit)
            hist.rejected += [[server_round, c, why] for c, why in rejected]
            state["weights"] = weights
            return ndarrays_to_parameters(weights), {"rejected": len(rejected)}

    strategy = Screened(
        fraction_fit=fed.fraction,
        fraction_evaluate=0.0,
        min_fit_clients=min(min_clients, fed.per_round),
        min_evaluate_clients=0,
        min_available_clients=min_clients,
        evaluate_fn=evaluate_fn,
        on_fit_config_fn=lambda r: {"local_epochs": fed.local_epochs, "server_round": r},
        accept_failures=True,
        initial_parameters=ndarrays_to_parameters(state["weights"]),
    )
    config = flwr.server.ServerConfig(num_rounds=fed.rounds, round_timeout=fed.round_timeout)
    flwr.server.start_server(server_address=address, strategy=strategy, config=config)
    write_json(out / "history.json", history_record(run, hist))
    if hist.rounds:
        plot_histories([hist], out / "accuracy.png", "Flower deployment: global test accuracy")
    return hist


# --- a launcher: server and clients as separate processes on loopback ---------------------------------


def launch_local(
    run_args: list[str],
    clients: int,
    port: int,
    out_dir: str | Path,
    timeout: float = 300.0,
    attacks: dict[int, str] | None = None,
    drop: dict[int, int] | None = None,
    hang: dict[int, int] | None = None,
) -> tuple[int, str]:
    """Start ``neuratlas federated server`` and ``clients`` client processes on 127.0.0.1:port, wait for
    the server, then stop the clients. Returns (server exit code, server log). ``run_args``: the recipe
    (``--recipe NAME``) and ``--section.key value`` overrides, given to every process alike.

    For fault tests: ``attacks`` maps client id -> nan | scale | shape (a poisoned update), ``drop`` client
    id -> the round in which its process dies, ``hang`` client id -> the round from which it never answers."""
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "neuratlas", "federated"]
    log_path = Path(out_dir) / "server.log"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as server_log:
        server = subprocess.Popen(
            base + ["server", "--address", address, "--min-clients", str(clients), "--out", str(out_dir)] + run_args,
            stdout=server_log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        procs = []
        for k in range(clients):
            flags = [
                *(["--attack", attacks[k]] if attacks and k in attacks else []),
                *(["--drop-at-round", str(drop[k])] if drop and k in drop else []),
                *(["--hang-at-round", str(hang[k])] if hang and k in hang else []),
            ]
            procs.append(
                subprocess.Popen(
                    base + ["client", "--address", address, "--id", str(k)] + flags + run_args,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=env,
                )
            )
        try:
            code = server.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = -1
        finally:
            for p in procs + [server]:
                if p.poll() is None:
                    p.terminate()
            for p in procs + [server]:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
    return code, log_path.read_text()
