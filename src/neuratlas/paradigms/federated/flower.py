"""Federated learning for real, on Flower (``flwr``): a server process and client processes talking gRPC.

The client's training is :func:`neuratlas.paradigms.federated.core.local_train`, the same code the simulation runs.
The server runs Flower's FedAvg or FedProx with a server-side evaluation of the global model on the test set
after every round, and rejects (with one log line) any client update whose tensor shapes do not fit the
model, instead of crashing the round. Clients that drop out do not stop a round: Flower aggregates whatever
arrived (``accept_failures``) once ``min_fit_clients`` were sampled, and ``round_timeout`` bounds the wait.

Uses Flower's long-standing ``start_server`` / ``start_client`` entry points (gRPC bidi transport), which
flwr 1.42 still ships (deprecated in favour of the SuperLink/SuperNode CLI, which needs a Flower app project).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuratlas.errors import NeuratlasError
from neuratlas.extras import require
from neuratlas.paradigms.federated.core import (
    FederatedConfig,
    History,
    build_global_model,
    check_shapes,
    client_shards,
    evaluate_model,
    get_weights,
    load_federated_data,
    local_train,
    plot_histories,
    set_weights,
)

log = logging.getLogger("neuratlas.paradigms.federated")


def _flwr():
    return require("flwr", "the Flower deployment")


# --- client -------------------------------------------------------------------------------------------


def make_client(cfg: FederatedConfig, client_id: int, corrupt: bool = False, drop_at_round: int = 0):
    """A Flower NumPyClient training on shard ``client_id`` of the configured split (only that shard is
    kept). For fault-tolerance checks: ``corrupt`` sends wrongly shaped updates; ``drop_at_round`` makes
    the process die in the middle of that round's training, as a crashed device would."""
    flwr = _flwr()
    (x, y), _, mean, std, n_cls = load_federated_data(cfg)
    shards = client_shards(cfg, y)
    if not 0 <= client_id < len(shards):
        raise NeuratlasError(f"client id must be in [0, {len(shards)}), got {client_id}")
    idx = torch.from_numpy(shards[client_id])
    x, y = x[idx].clone(), y[idx].clone()  # this client's own data; the rest is dropped
    model = build_global_model(cfg, x.shape[1], n_cls)

    class NeuratlasClient(flwr.client.NumPyClient):
        def get_parameters(self, config):
            return get_weights(model)

        def fit(self, parameters, config):
            set_weights(model, parameters)
            local = cfg.local
            local.epochs = int(config.get("local_epochs", local.epochs))
            local.prox_mu = float(config.get("proximal_mu", local.prox_mu))
            seed = cfg.seed * 100_003 + int(config.get("server_round", 0)) * 1009 + client_id
            if drop_at_round and int(config.get("server_round", 0)) >= drop_at_round:
                log.warning("client %d: dropping out in round %s", client_id, config.get("server_round"))
                os._exit(3)
            logs = local_train(model, x, y, local, mean, std, seed=seed)
            weights = get_weights(model)
            if corrupt:
                weights = [w[..., :1] if w.ndim > 1 else w for w in weights]
            return weights, len(x), {"loss": logs["loss"], "client": client_id}

        def evaluate(self, parameters, config):
            set_weights(model, parameters)
            m = evaluate_model(model, x, y, mean, std)
            return m["loss"], len(x), {"accuracy": m["accuracy"]}

    return NeuratlasClient()


def run_client(cfg: FederatedConfig, address: str, client_id: int, corrupt: bool = False,
               drop_at_round: int = 0) -> None:
    flwr = _flwr()
    client = make_client(cfg, client_id, corrupt, drop_at_round)
    flwr.client.start_client(server_address=address, client=client.to_client(), insecure=True,
                             max_retries=30, max_wait_time=60.0)


# --- server -------------------------------------------------------------------------------------------


def _checked(base: type) -> type:
    """A Flower strategy class that drops client updates whose shapes do not fit the model, with a log
    line naming the client, instead of failing the aggregation."""
    from flwr.common import parameters_to_ndarrays

    class Checked(base):
        def __init__(self, *args, reference: list[np.ndarray], **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.reference = reference

        def aggregate_fit(self, server_round, results, failures):
            kept = []
            for proxy, res in results:
                shapes = [a.shape for a in parameters_to_ndarrays(res.parameters)]
                want = [a.shape for a in self.reference]
                if shapes != want:
                    bad = next((i for i, (a, b) in enumerate(zip(shapes, want)) if a != b), len(shapes))
                    log.warning("round %d: rejected update from client %s: tensor #%d has shape %s, the "
                                "model expects %s", server_round, res.metrics.get("client", proxy.cid), bad,
                                shapes[bad] if bad < len(shapes) else "-",
                                want[bad] if bad < len(want) else "-")
                    failures.append((proxy, res))
                    continue
                kept.append((proxy, res))
            if not kept:
                log.warning("round %d: no valid update; the global model is unchanged", server_round)
                return None, {}
            return super().aggregate_fit(server_round, kept, failures)

    Checked.__name__ = f"Checked{base.__name__}"
    return Checked


def run_server(cfg: FederatedConfig, address: str, min_clients: int, out_dir: str | Path,
               round_timeout: float = 120.0) -> History:
    """Serve ``cfg.rounds`` rounds; evaluates the global model on the test set after each; writes
    ``history.json`` and ``accuracy.png`` to ``out_dir``."""
    flwr = _flwr()
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy import FedAvg, FedProx

    _, (xt, yt), mean, std, n_cls = load_federated_data(cfg)
    model = build_global_model(cfg, xt.shape[1], n_cls)
    init = get_weights(model)
    hist = History(f"flower {cfg.strategy}")

    def evaluate_fn(server_round: int, parameters, config) -> tuple[float, dict[str, Any]]:
        set_weights(model, parameters)
        m = evaluate_model(model, xt, yt, mean, std)
        hist.rounds.append(server_round)
        hist.accuracy.append(m["accuracy"])
        hist.loss.append(m["loss"])
        log.warning("round %d: global test accuracy %.4f", server_round, m["accuracy"])
        return m["loss"], {"accuracy": m["accuracy"]}

    kwargs: dict[str, Any] = dict(
        fraction_fit=cfg.fraction, fraction_evaluate=0.0, min_fit_clients=min(min_clients, cfg.per_round),
        min_evaluate_clients=0, min_available_clients=min_clients, evaluate_fn=evaluate_fn,
        on_fit_config_fn=lambda r: {"local_epochs": cfg.local_epochs, "server_round": r},
        accept_failures=True, initial_parameters=ndarrays_to_parameters(init), reference=init)
    if cfg.strategy == "fedprox":
        strategy = _checked(FedProx)(proximal_mu=cfg.prox_mu, **kwargs)
    else:
        strategy = _checked(FedAvg)(**kwargs)
    config = flwr.server.ServerConfig(num_rounds=cfg.rounds, round_timeout=round_timeout)
    flwr.server.start_server(server_address=address, strategy=strategy, config=config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps({"rounds": hist.rounds, "accuracy": hist.accuracy,
                                                  "loss": hist.loss}, indent=2))
    if hist.rounds:
        plot_histories([hist], out / "accuracy.png", "Flower deployment: global test accuracy")
    return hist


def check_update(cfg: FederatedConfig, weights: list[np.ndarray]) -> None:
    """Raise a NeuratlasError if ``weights`` do not fit the configured model (for callers outside Flower)."""
    _, (xt, _), _, _, n_cls = load_federated_data(cfg)
    check_shapes(build_global_model(cfg, xt.shape[1], n_cls), weights)


# --- a launcher: server and clients as separate processes on loopback ---------------------------------


def launch_local(cfg_args: list[str], clients: int, port: int, out_dir: str | Path,
                 corrupt: tuple[int, ...] = (), timeout: float = 300.0, extra_clients: int = 0,
                 drop: dict[int, int] | None = None, round_timeout: float = 120.0) -> tuple[int, str]:
    """Start ``neuratlas federated server`` and ``clients`` client processes on 127.0.0.1:port, wait for
    the server, then stop the clients. Returns (server exit code, server log); ``cfg_args``: ``--fed.KEY V``.

    ``extra_clients`` start beyond ``clients`` (the server waits for ``clients``); ``corrupt`` lists client
    ids that send wrongly shaped updates; ``drop`` maps client id -> the round in which it dies."""
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "neuratlas", "federated"]
    log_path = Path(out_dir) / "server.log"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as server_log:
        server = subprocess.Popen(base + ["server", "--address", address, "--min-clients", str(clients),
                                          "--out", str(out_dir), "--round-timeout", str(round_timeout)] + cfg_args,
                                  stdout=server_log, stderr=subprocess.STDOUT, env=env)
        procs = []
        for k in range(clients + extra_clients):
            flags = (["--corrupt"] if k in corrupt else []) + \
                (["--drop-at-round", str(drop[k])] if drop and k in drop else [])
            procs.append(subprocess.Popen(base + ["client", "--address", address, "--id", str(k)] + flags
                                          + cfg_args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          env=env))
        try:
            code = server.wait(timeout=timeout)
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
