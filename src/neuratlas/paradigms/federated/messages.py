"""Federated learning on Flower's Message API: a ``ServerApp`` and a ``ClientApp`` built from the same run
config, task, model, local steps (:func:`~neuratlas.paradigms.federated.core.local_steps`) and server-side
screening and aggregation (:class:`~neuratlas.paradigms.federated.core.ServerAggregator`) as the simulation.

Both apps read the whole run config from Flower's run config (key ``run``, the JSON of ``RunConfig.to_dict``)
and a client's shard from its node config (``partition-id``), so the server and every client agree on the
model, the split and the local training. :func:`serve` is the server's loop on a Flower ``Grid``: each round
it samples clients, sends them the global weights as an ``ArrayRecord``, waits at most
``federated.round_timeout`` seconds (a client that died or never answers costs one timeout, not the run),
screens what came back by client and rewrites ``history.json``.

:class:`InProcessGrid` runs ``ClientApp`` objects in threads of this process: the Message path end to end
without starting any Flower process. The same two apps run on Flower's engines through ``flwr run`` of one
generated Flower App: :func:`deploy_local` (the deployment engine: a SuperLink and SuperNode processes on
loopback) and :func:`simulate_flower` (the simulation engine: a SuperLink in simulation mode whose virtual
SuperNodes run the ClientApp in Ray workers).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuratlas.errors import NeuratlasError
from neuratlas.extras import require
from neuratlas.paradigms.federated.core import (
    ATTACKS,
    FederatedConfig,
    History,
    ServerAggregator,
    Update,
    client_seed,
    client_shards,
    evaluate,
    get_weights,
    invalid_update,
    local_steps,
    set_weights,
    write_json,
)
from neuratlas.paradigms.federated.flower import _flwr
from neuratlas.paradigms.federated.privacy import clip_update
from neuratlas.paradigms.federated.run import federated_setup, history_record
from neuratlas.training.config import RunConfig

log = logging.getLogger("neuratlas.paradigms.federated")


def run_from_context(context: Any) -> RunConfig:
    """The run config a Flower app was started with (``run`` in its run config)."""
    text = context.run_config.get("run")
    if not isinstance(text, str):
        raise NeuratlasError("the Flower run config has no 'run' (the JSON of the Neuratlas run config)")
    return RunConfig.from_dict(json.loads(text))


def secagg_when_asked(msg: Any, context: Any, call_next: Callable[[Any, Any], Any]) -> Any:
    """Flower's ``secaggplus_mod`` for the messages of a SecAgg+ round (they carry its config record), the
    plain handler for the others: one ClientApp serves runs with and without secure aggregation."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def make_client_app(attack: Callable[[int, int, list[np.ndarray]], list[np.ndarray]] | None = None):
    """A ``ClientApp`` whose ``train`` handler makes the run's local steps on shard ``partition-id``, clips
    its change when the run has DP (``federated.dp_clip``), and replies with the weights, the sample count
    and its id. Under SecAgg+ (:func:`secagg_when_asked`) the round's message is Flower's legacy fit
    instruction, and the reply a fit result that ``secaggplus_mod`` masks before it leaves.
    ``attack(client, round, weights)`` replaces what it sends (the fault tests)."""
    _flwr()
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    app = ClientApp(mods=[secagg_when_asked])
    states: dict[tuple[str, int], tuple] = {}  # one task/model/shard per (run, client) in this process

    def state(context: Any) -> tuple:
        client = int(context.node_config.get("partition-id", 0))
        key = (context.run_config.get("run", ""), client)
        if key not in states:
            run = run_from_context(context)
            fed, task, model = federated_setup(run)
            x, y = task.data.train
            shards = client_shards(fed, y, run.trainer.seed)
            if not 0 <= client < len(shards):
                raise NeuratlasError(f"partition-id must be in [0, {len(shards)}), got {client}")
            idx = torch.from_numpy(shards[client])
            mine = (x[idx].clone(), y[idx].clone())
            task.data.train = mine  # this client's own data; the rest is dropped
            states[key] = (run, fed, task, model, mine, client)
        return states[key]

    @app.train()
    def train(msg: Any, context: Any) -> Any:
        run, fed, task, model, mine, client = state(context)
        legacy = "fitins.parameters" in msg.content.array_records  # a SecAgg+ round
        if legacy:
            fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
            r, received = int(fitins.config["server-round"]), parameters_to_ndarrays(fitins.parameters)
        else:
            r, received = int(msg.content["config"]["server-round"]), msg.content["arrays"].to_numpy_ndarrays()
        fault = str(context.node_config.get("fault", ""))
        if fault.startswith(("exit@", "hang@")) and r >= int(fault[5:]):
            log.warning("client %d: %s in round %d", client, "dying" if fault[0] == "e" else "not answering", r)
            if fault[0] == "e":
                os._exit(3)
            time.sleep(10 * fed.round_timeout)
        set_weights(model, received)
        logs = local_steps(
            task, model, run, mine, fed.local_epochs, client_seed(run.trainer.seed, r, client), fed.local_mu
        )
        weights = get_weights(model)
        if fed.dp_clip > 0:  # the change is bounded before it leaves the client (privacy.py)
            weights = clip_update(received, weights, fed.dp_clip)[0]
        if attack is not None:
            weights = attack(client, r, weights)
        if fault := str(context.node_config.get("fault", "")):
            weights = node_fault(fault, r, weights)
        if legacy:  # SecAgg+ weighs by the sample count; DP's mean is uniform (weight 1 per client)
            samples = 1 if fed.dp_clip > 0 else len(mine[1])
            res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), samples, {"loss": logs["loss"]})
            return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)
        content = RecordDict(
            {
                "arrays": ArrayRecord(numpy_ndarrays=weights),
                "metrics": MetricRecord({"num-examples": len(mine[1]), "loss": logs["loss"]}),
                "client": ConfigRecord({"id": str(client)}),
            }
        )
        return Message(content, reply_to=msg)

    return app


def node_fault(fault: str, round_: int, weights: list[np.ndarray]) -> list[np.ndarray]:
    """What a SuperNode started with ``--node-config "fault='nan'"`` (or scale, shape) sends instead of its
    weights: the poisoned updates the fault tests check the server against."""
    return ATTACKS[fault](weights) if fault in ATTACKS else weights


def _update_of(reply: Any) -> Update:
    """The update in a reply; a reply that is malformed becomes an update the screening rejects by name."""
    content = reply.content
    client = str(content["client"]["id"]) if "client" in content else f"node {reply.metadata.src_node_id}"
    try:
        weights = content["arrays"].to_numpy_ndarrays()
        samples = int(content["metrics"]["num-examples"])
    except Exception as e:  # noqa: BLE001 - whatever a client sent, the round goes on without it
        return Update(client, f"unreadable: {e}", 0)  # type: ignore[arg-type]
    return Update(client, weights, samples)


def _client_order(update: Update) -> tuple[int, int, str]:
    """Clients by partition id (numerically), then any that sent no readable id."""
    return (0, int(update.client), "") if update.client.isdigit() else (1, 0, update.client)


def _payload_bytes(message: Any) -> int:
    """Bytes a reply carries: its arrays' buffers and the bytes, strings and numbers of its config and metric
    records (SecAgg+'s keys, shares and masked vectors included)."""
    content, total = message.content, 0
    for record in content.array_records.values():
        total += sum(len(a.data) for a in record.values())
    for record in [*content.config_records.values(), *content.metric_records.values()]:
        for value in record.values():
            for v in value if isinstance(value, list) else [value]:
                total += len(v) if isinstance(v, (bytes, str)) else 8
    return total


class _CountingGrid:
    """A ``Grid`` that counts the bytes of the replies it passes on (what clients upload under SecAgg+)."""

    def __init__(self, grid: Any) -> None:
        self.grid, self.bytes = grid, 0

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> Iterable[Any]:
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.bytes += sum(_payload_bytes(m) for m in replies if not m.has_error())
        return replies


def secure_round(
    grid: Any, round_: int, nodes: list[int], global_w: list[np.ndarray], fed: Any, max_weight: float
) -> tuple[list[np.ndarray] | None, int, int]:
    """One round under SecAgg+ (Flower's ``SecAggPlusWorkflow``): the clients in ``nodes`` train, mask
    their quantised weights × sample count, and the server unmasks only their weighted mean. Returns (that
    mean or None when the protocol stopped, how many clients it covers, bytes the clients uploaded).

    Quantisation: values are clipped to ±8 and mapped to 2²² levels (Flower's defaults), so the mean is
    exact to about 4·10⁻⁶ per weight; a client's weight (its sample count / ``max_weight``) is quantised
    the same way."""
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server import ServerConfig
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    class Node:  # what the workflow needs of a client proxy
        def __init__(self, node_id: int) -> None:
            self.node_id, self.cid = node_id, str(node_id)

    class OneRound:  # the two strategy calls the workflow makes: which clients, and the unmasked mean
        result: tuple[list[np.ndarray] | None, int] = (None, 0)

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list:
            return [(Node(n), FitIns(parameters, {"server-round": server_round})) for n in nodes]

        def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[None, dict]:
            if results:  # dequantised in float64; the model's dtypes where the count matches
                mean = parameters_to_ndarrays(results[0][1].parameters)
                if len(mean) == len(global_w):
                    mean = [m.astype(g.dtype) for m, g in zip(mean, global_w)]
                self.result = (mean, len(results))
            return None, {}

    strategy = OneRound()
    base = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(base, ServerConfig(num_rounds=1), strategy, SimpleClientManager())  # type: ignore[arg-type]
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: round_})
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters(global_w), keep_input=True
    )
    counting = _CountingGrid(grid)
    # every sampled client holds a share of each key and 2/3 of them rebuild it: a third may drop out
    workflow = SecAggPlusWorkflow(1.0, 2 / 3, max_weight=max_weight, timeout=fed.round_timeout)
    workflow(counting, context)  # type: ignore[arg-type]
    mean, count = strategy.result
    return mean, count, counting.bytes


def serve(
    grid: Any,
    run: RunConfig,
    out_dir: str | Path,
    min_clients: int = 1,
    on_round: Callable[[int, History, list[np.ndarray]], None] | None = None,
) -> History:
    """The server's rounds on a Flower ``Grid``; returns the history (also written to ``out_dir``).
    ``on_round(round, history, weights)`` runs after each round's evaluation."""
    _flwr()
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

    fed, task, model = federated_setup(run)
    seed = run.trainer.seed
    shards = client_shards(fed, task.data.train[1], seed)
    out = Path(out_dir)
    hist = History(f"flower {fed.label}")
    server = ServerAggregator(fed, seed, log.warning)
    global_w = get_weights(model)
    deadline = time.monotonic() + fed.round_timeout
    while len(list(grid.get_node_ids())) < min_clients:  # bounded: the first round waits no longer either
        if time.monotonic() > deadline:
            raise NeuratlasError(
                f"{len(list(grid.get_node_ids()))} of the {min_clients} clients connected "
                f"within {fed.round_timeout:g} s"
            )
        time.sleep(0.5)
    rng = np.random.default_rng(seed)
    hist.add(0, evaluate(task, model, run), fed)
    for r in range(1, fed.rounds + 1):
        nodes = sorted(grid.get_node_ids())  # Python ints: node ids are uint64, which numpy would round
        chosen = [nodes[i] for i in sorted(rng.choice(len(nodes), size=min(fed.per_round, len(nodes)), replace=False))]
        messages = [
            Message(
                RecordDict(
                    {"arrays": ArrayRecord(numpy_ndarrays=global_w), "config": ConfigRecord({"server-round": r})}
                ),
                dst_node_id=int(n),
                message_type=MessageType.TRAIN,
            )
            for n in chosen
        ]
        if fed.secure_aggregation:
            global_w = _secure_step(grid, r, chosen, global_w, fed, server, hist, max(map(len, shards)))
        else:
            replies = list(grid.send_and_receive(messages, timeout=fed.round_timeout))
            good = [m for m in replies if not m.has_error()]
            missing, timeout = len(messages) - len(good), fed.round_timeout
            if missing:
                log.warning("round %d: %d client(s) failed or did not answer within %g s", r, missing, timeout)
            # in client order, not arrival order: the mean's float sums, and so the run, do not depend on
            # which client answered first (and equal the in-process simulation's)
            updates = sorted((_update_of(m) for m in good), key=_client_order)
            hist.bytes_sent += sum(sum(a.nbytes for a in u.weights) for u in updates if isinstance(u.weights, list))
            global_w, rejected = server(r, global_w, updates, samples_limit=max(map(len, shards)), sampled=len(chosen))
            hist.rejected += [[r, c, why] for c, why in rejected]
        set_weights(model, global_w)
        hist.add(r, evaluate(task, model, run), fed)
        log.warning("%s", hist.round_line())
        write_json(out / "history.json", history_record(run, hist))
        if on_round:
            on_round(r, hist, global_w)
    return hist


def _secure_step(
    grid: Any,
    r: int,
    chosen: list[int],
    global_w: list[np.ndarray],
    fed: Any,
    server: ServerAggregator,
    hist: History,
    max_weight: int,
) -> list[np.ndarray]:
    """A SecAgg+ round, then the server's step on the unmasked mean. Screening by client cannot apply (no
    single update is ever seen); the mean itself is checked like an update."""
    mean, count, sent = secure_round(grid, r, chosen, global_w, fed, 1.0 if fed.dp_clip > 0 else max_weight)
    hist.bytes_sent += sent
    if count < len(chosen):
        missing, timeout = len(chosen) - count, fed.round_timeout
        log.warning("round %d: %d client(s) failed or did not answer within %g s", r, missing, timeout)
    why = "no client completed the protocol" if mean is None else invalid_update(global_w, mean)
    if why:
        log.warning("round %d: secure aggregation gave no usable mean (%s); the global model is unchanged", r, why)
        return global_w
    if fed.dp_clip > 0:  # DP's fixed denominator: clients that dropped out count as a zero change
        share = count / len(chosen)
        mean = [(g + (w.astype(np.float64) - g) * share).astype(g.dtype) for g, w in zip(global_w, mean)]
    return server.server_step(r, global_w, mean, len(chosen))


def make_server_app(out_dir: str | Path = "runs/federated", min_clients: int = 1):
    """A ``ServerApp`` running :func:`serve` with the run config it is started with."""
    _flwr()
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        serve(
            grid,
            run_from_context(context),
            context.run_config.get("out", str(out_dir)),
            int(context.run_config.get("min-clients", min_clients)),
        )

    return app


class InProcessGrid:
    """A Flower ``Grid`` for ``serve`` whose nodes are ``ClientApp`` objects called in threads of this
    process: a reply that does not come within the timeout is missing, an exception becomes an error reply,
    as with real SuperNodes."""

    def __init__(self, client_app: Any, run: RunConfig, clients: int) -> None:
        from flwr.app import Context, RecordDict
        from flwr.supercore.task_identity import TaskIdentity

        # what a SuperLink gives the ServerApp's process: the identity its instruction messages carry
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
        text = json.dumps(run.to_dict())
        self.app = client_app
        self.contexts = {
            k + 1: Context(
                run_id=1, node_id=k + 1, node_config={"partition-id": k}, state=RecordDict(), run_config={"run": text}
            )
            for k in range(clients)
        }
        self.pool = ThreadPoolExecutor(max_workers=clients)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> Iterable[Any]:
        from flwr.app import Error, Message

        messages = list(messages)
        # each node gets its own copy, as over a wire: SecAgg+ sends one content object to every node, and a
        # client's mod edits what it receives
        futures = {
            self.pool.submit(self.app, copy.deepcopy(m), self.contexts[m.metadata.dst_node_id]): m for m in messages
        }
        done, _ = wait(futures, timeout=timeout)
        replies = []
        for f in done:
            try:
                replies.append(f.result())
            except Exception as e:  # noqa: BLE001 - a crashed client is an error reply, as on a SuperNode
                replies.append(Message(Error(code=0, reason=str(e)), reply_to=futures[f]))
        return replies

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# --- deployment: a SuperLink and SuperNodes as separate processes ---------------------------------------

APP_TOML = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "neuratlas-federated"
version = "1.0.0"
description = "A Neuratlas federated run on Flower's deployment engine"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "neuratlas"

[tool.flwr.app.components]
serverapp = "neuratlas.paradigms.federated.app:server_app"
clientapp = "neuratlas.paradigms.federated.app:client_app"

[tool.flwr.app.config]
run = "{}"
out = "runs/federated"
min-clients = 1
"""


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    """Return once something listens on 127.0.0.1:``port``; a one-line error if ``proc`` exits or the time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NeuratlasError(f"flower-superlink exited with status {proc.returncode} (see its log)")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise NeuratlasError(f"flower-superlink did not listen on 127.0.0.1:{port} within {timeout:g} s")


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the SuperLink and SuperNodes start theirs in new sessions)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _stop(procs: list[subprocess.Popen]) -> None:
    pids = [q for p in procs for q in [p.pid, *_descendants(p.pid)]]
    for sig in (15, 9):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + 10
        while sig == 15 and time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.2)
    for p in procs:
        p.wait()


def _ray():
    """Ray, which Flower's simulation engine runs virtual SuperNodes on, or one line saying how to get it."""
    if sys.version_info < (3, 11):  # flwr 1.42's [simulation] extra brings ray only from Python 3.11 on
        try:
            return require("ray", "Flower's simulation engine")
        except NeuratlasError:
            raise NeuratlasError(
                "Flower's simulation engine needs ray, which flwr's [simulation] extra installs on Python ≥ 3.11 "
                f"(this is {sys.version_info.major}.{sys.version_info.minor}); use `neuratlas federated sim` "
                "or `deploy` here"
            ) from None
    return require("ray", "Flower's simulation engine", extra="federated")


def simulation_config(clients: int, cpus: int = 1, gpus_per_client: float = 0.0) -> list[str]:
    """``flwr run``'s ``--federation-config`` for Flower's simulation engine: ``clients`` virtual SuperNodes;
    Ray gets ``cpus`` CPUs and one per ClientApp, so at most ``cpus`` ClientApps train at a time (the
    others wait their turn) and nothing else of the machine is taken."""
    keys = {
        "num-supernodes": clients,
        "client-resources-num-cpus": 1,
        "client-resources-num-gpus": gpus_per_client,
        "init-args-num-cpus": cpus,
        "init-args-logging-level": '"WARNING"',
        "init-args-log-to-driver": "true",
        "verbose": "false",
    }
    return ["--federation-config", " ".join(f"{k}={v}" for k, v in keys.items())]


def simulate_flower(
    run: RunConfig, clients: int, out_dir: str | Path, port: int, timeout: float = 600.0, cpus: int = 1
) -> tuple[int, str]:
    """Run ``run`` on Flower's simulation engine: a ``flower-superlink --simulation`` on 127.0.0.1:``port``
    and ``flwr run`` of the same Flower App as :func:`deploy_local`, with ``clients`` virtual SuperNodes
    (node config ``partition-id=K``) whose ClientApps run in Ray workers (``cpus`` of them at a time, one
    CPU each). Every process (Ray's included) is stopped before returning, also on timeout. Returns (exit
    code, the log of ``flwr run`` with the server's lines)."""
    _flwr()
    _ray()
    if cpus < 1:
        raise NeuratlasError(f"--cpus must be ≥ 1, got {cpus}")
    gpus = 0.0
    if run.trainer.device != "cpu" and torch.cuda.is_available():  # the ClientApps share the GPU
        gpus = round(1 / cpus, 3)
    return _flwr_run(run, clients, out_dir, port, timeout, simulation=simulation_config(clients, cpus, gpus))


def deploy_local(
    run: RunConfig,
    clients: int,
    out_dir: str | Path,
    port: int,
    timeout: float = 600.0,
    faults: dict[int, str] | None = None,
) -> tuple[int, str]:
    """Run ``run`` on Flower's deployment engine on 127.0.0.1: a ``flower-superlink``, ``clients``
    ``flower-supernode`` processes (node config ``partition-id=K``) and ``flwr run`` of a Flower App whose
    components are :mod:`neuratlas.paradigms.federated.app`. Every process is stopped before returning,
    also on timeout. ``faults`` maps client -> nan | scale | shape | exit@R | hang@R. Returns (exit code of
    ``flwr run``, its log with the server's lines)."""
    _flwr()
    return _flwr_run(run, clients, out_dir, port, timeout, faults=faults)


def _finished(history: Path, rounds: int, since: float) -> bool:
    """Whether ``history`` was written by this run (not left by an earlier one) and holds its last round."""
    try:
        if history.stat().st_mtime < since:
            return False
        return json.loads(history.read_text())["rounds"][-1] == rounds
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return False


def _flwr_run(
    run: RunConfig,
    clients: int,
    out_dir: str | Path,
    port: int,
    timeout: float,
    faults: dict[int, str] | None = None,
    simulation: list[str] | None = None,
) -> tuple[int, str]:
    """``flwr run`` of the generated Flower App against a SuperLink started here on 127.0.0.1:``port``: in
    simulation mode with ``simulation`` as its federation config, else with ``clients`` SuperNode processes.
    Returns (exit code, the log of ``flwr run``); 1 when the ServerApp did not complete every round."""
    fed = run.section("federated", FederatedConfig)
    if not 1 <= clients <= fed.clients:
        raise NeuratlasError(
            f"--clients must be in [1, {fed.clients}]: the run splits its data into federated.clients = "
            f"{fed.clients} shards, one per client (got {clients})"
        )
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="flower-", dir=out))
    (work / "app").mkdir()
    (work / "app" / "pyproject.toml").write_text(APP_TOML)
    (work / "run.json").write_text(json.dumps(run.to_dict()))  # what the apps get, for a rerun by hand
    (work / "home").mkdir()
    (work / "home" / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    bindir = Path(sys.executable).parent  # the SuperLink and SuperNodes start Flower's other programs by name
    env = {
        **os.environ,
        "FLWR_HOME": str(work / "home"),
        "OMP_NUM_THREADS": "1",
        "PATH": os.pathsep.join([str(bindir), os.environ.get("PATH", "")]),
    }
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if env.get("PYTHONPATH"):  # the processes start in the app's folder: a relative entry would point elsewhere
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    ray_tmp = None
    if simulation is not None:
        # a Ray of its own (never a cluster RAY_ADDRESS names), its session files in a short temporary folder
        # (Ray's socket paths must stay under 108 characters) that goes when the run ends
        env.pop("RAY_ADDRESS", None)
        ray_tmp = tempfile.mkdtemp(prefix="ray-")
        env["RAY_TMPDIR"] = ray_tmp
    procs: list[subprocess.Popen] = []
    logs = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        f = open(work / f"{name}.log", "w")  # closed with the process below
        logs.append(f)
        procs.append(subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=work))
        return procs[-1]

    since = time.time() - 1
    try:
        start(
            "superlink",
            [
                str(bindir / "flower-superlink"),
                "--insecure",
                *(["--simulation"] if simulation is not None else []),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
                "--database",
                str(work / "superlink.db"),
            ],
        )
        _wait_for_port(port, procs[0], 120.0)
        for k in range(clients if simulation is None else 0):
            config = f"partition-id={k}" + (f" fault='{faults[k]}'" if faults and k in faults else "")
            start(
                f"supernode{k}",
                [
                    str(bindir / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{port}",
                    "--port",
                    str(port + 1 + k),
                    "--node-config",
                    config,
                ],
            )
        run_config = f"run='{json.dumps(run.to_dict())}' out='{out}' min-clients={clients}"
        flwr = start(
            "flwr-run",
            [
                str(bindir / "flwr"),
                "run",
                str(work / "app"),
                "local",
                "--run-config",
                run_config,
                *(simulation or []),
                "--stream",
            ],
        )
        try:
            code = flwr.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = -1
    finally:
        _stop(procs)
        for f in logs:
            f.close()
        if ray_tmp:
            shutil.rmtree(ray_tmp, ignore_errors=True)
    text = (work / "flwr-run.log").read_text()
    if code == 0 and not _finished(out / "history.json", fed.rounds, since):
        code = 1  # `flwr run` exits 0 even when the ServerApp failed
    return code, text
