"""A federated run end to end: :func:`fit_federated` is what ``neuratlas train RECIPE`` and the tour call
(through ``neuratlas.paradigms.fit``) for a run config with a ``federated`` section."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import torch

from neuratlas.device import resolve_device
from neuratlas.errors import NeuratlasError
from neuratlas.models import count_parameters
from neuratlas.models.checkpoint import save_weights
from neuratlas.paradigms.federated.core import (
    FederatedConfig,
    History,
    Weights,
    centralised,
    plot_histories,
    set_weights,
    simulate,
    write_json,
)
from neuratlas.tasks import Task, build_task
from neuratlas.training.config import RunConfig
from neuratlas.training.trainer import FitResult, model_for_task

log = logging.getLogger("neuratlas.paradigms.federated")


def federated_setup(run: RunConfig) -> tuple[FederatedConfig, Task, torch.nn.Module]:
    """The run's federated section, its task (data loaded) and its model at the seeded initialisation; the
    simulation, the Flower server and every Flower client build them the same way."""
    fed = run.section("federated", FederatedConfig)
    torch.manual_seed(run.trainer.seed)
    from neuratlas.paradigms import PARADIGM_SECTIONS

    task_sections = {k: v for k, v in run.sections.items() if k not in PARADIGM_SECTIONS}
    task = build_task(run.task, run.data, run.trainer.seed, task_sections)
    data = getattr(task, "data", None)
    if getattr(task, "train_batches", None) is None or not isinstance(getattr(data, "train", None), tuple):
        raise NeuratlasError(
            f"federated runs split a task's (inputs, labels) training tensors among clients; "
            f"task {run.task['name']!r} has none"
        )
    torch.manual_seed(run.trainer.seed)
    task.device = resolve_device(run.trainer.device)
    return fed, task, model_for_task(run, task).to(task.device)


def history_record(run: RunConfig, hist: History) -> dict[str, Any]:
    return {"config": run.to_dict(), **vars(hist)}


def _secure_simulation(
    run: RunConfig, fed: FederatedConfig, run_dir: Path, on_round: Any, model: torch.nn.Module
) -> History:
    """SecAgg+ needs Flower's protocol: the run's ClientApps in threads of this process (``InProcessGrid``)
    with the Message API server loop, the same local training and sampling as the simulation."""
    from neuratlas.paradigms.federated.messages import InProcessGrid, make_client_app, serve

    grid = InProcessGrid(make_client_app(), run, fed.clients)
    t0 = time.perf_counter()
    try:
        hist = serve(grid, run, run_dir, fed.clients, on_round=on_round)
    finally:
        grid.close()
    hist.seconds = time.perf_counter() - t0
    return hist


def fit_federated(run: RunConfig, resume: str | Path | None = None, announce: bool = True) -> FitResult:
    """Simulate the run's federated rounds (and, unless ``federated.centralised`` is false, train the
    same model centrally on the pooled data with the same sample budget, for comparison). After every round
    ``history.json`` and the global model's checkpoint (``checkpoints/last.safetensors``, which ``neuratlas
    eval`` reads) are rewritten, so a stopped run keeps the rounds it completed."""
    if resume is not None:
        raise NeuratlasError(
            "a federated run does not resume; start it again (its history.json and last "
            "checkpoint hold the rounds it completed)"
        )
    fed, task, model = federated_setup(run)
    tc = run.trainer
    name = tc.run_name or f"{run.model['name']}-federated-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(tc.out_dir) / name
    init = copy.deepcopy(model.state_dict())
    # the global model is an ordinary model of the task: its checkpoint carries the run without the federated
    # section (so `neuratlas eval` and `predict` read it like any run's) and that section beside it
    plain = run.to_dict()
    extra = {"task": run.task["name"], **task.checkpoint_extra(), "federated": plain.pop("federated")}
    if announce:
        print(
            f"federated {fed.label}: {run.model['name']} on {task.describe_data()}, {fed.clients} clients, "
            f"{fed.per_round} per round, {fed.rounds} rounds → {run_dir}",
            flush=True,
        )

    def on_round(r: int, hist: History, weights: Weights) -> None:
        set_weights(model, weights)  # the simulation trains `model` itself; the Message loop its own copy
        write_json(run_dir / "history.json", history_record(run, hist))
        save_weights(run_dir / "checkpoints" / "last.safetensors", model, plain, extra, r)

    t0 = time.perf_counter()
    if fed.secure_aggregation:
        runs = [_secure_simulation(run, fed, run_dir, on_round, model)]
    else:
        runs = [simulate(fed, task, model, run, progress=tc.progress, on_round=on_round, log=log.warning)]
    if fed.centralised:
        pooled = model_for_task(run, task).to(task.device)
        pooled.load_state_dict(init)
        runs.append(centralised(fed, task, pooled, run, progress=tc.progress))
    seconds = time.perf_counter() - t0
    split = f"Dirichlet α={fed.alpha}" if fed.alpha else "IID"
    png = plot_histories(
        runs,
        run_dir / "curves.png",
        f"{run.model['name']} on {run.data['name']}: {fed.clients} clients ({split}), "
        f"{fed.per_round}/round, {fed.local_epochs} local epoch(s)",
    )
    write_json(run_dir / "histories.json", [vars(h) for h in runs])
    lines = [
        f"{'run':28s} " + " ".join(f"r{r:<5d}" for r in runs[0].rounds) + "  time",
        *[f"{h.label:28s} " + " ".join(f"{a:.4f}" for a in h.accuracy) + f"  {h.seconds:.0f}s" for h in runs],
        f"weights uploaded: {runs[0].bytes_sent / 1e6:.1f} MB (raw data: 0 bytes)",
        f"plot: {png}",
    ]
    if runs[0].rejected:
        lines.append(f"rejected updates: {len(runs[0].rejected)} (see history.json)")
    if fed.dp_clip > 0:
        eps = fed.epsilon(fed.rounds)
        lines.append(
            f"DP-FedAvg: update clip {fed.dp_clip:g}, noise multiplier {fed.dp_noise:g}, sampling rate "
            f"{fed.sampling_rate:g}: ε = {eps:.3g} at δ = {fed.dp_delta:g} after {fed.rounds} rounds"
        )
    if fed.secure_aggregation:
        lines.append("SecAgg+: the server saw only the masked sum of each round's updates")
    (run_dir / "summary.txt").write_text("\n".join(lines) + "\n")
    test = {"accuracy": runs[0].accuracy[-1], "loss": runs[0].loss[-1]}
    if fed.dp_clip > 0:
        test["epsilon"] = fed.epsilon(fed.rounds)
    if fed.centralised:
        test["centralised_accuracy"] = runs[1].accuracy[-1]
    n_train = len(task.data.train[1])
    result = FitResult(
        run_dir,
        fed.rounds,
        test=test,
        train_seconds=seconds,
        parameters=count_parameters(model),
        model=run.model["name"],
        data=f"{task.describe_data()} ({fed.clients} clients, {split})",
        metric="accuracy",
        higher_is_better=True,
        notes=lines,
        samples_per_second=n_train
        * fed.per_round
        / fed.clients
        * fed.local_epochs
        * fed.rounds
        / max(runs[0].seconds, 1e-9),
    )
    write_json(run_dir / "result.json", result.to_dict())
    return result
