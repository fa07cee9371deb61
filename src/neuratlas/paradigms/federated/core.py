"""Federated learning in one process: FedAvg (McMahan et al. 2017), FedProx (Li et al. 2020) and FedAdam
(Reddi et al. 2021), with every client update validated and robust aggregation to choose.

A federated run is an ordinary run config (model, data, task, optimizer, trainer) plus a ``federated``
section (:class:`FederatedConfig`). Each client holds its own shard of the training set; per round the server
samples a fraction of clients, sends them the global weights, each makes ``local_epochs`` of the task's own
training steps on its shard with the run's optimizer (``neuratlas.optim.build_optimizer``, so every
``--optimizer.*`` option applies) and sends back only its weights and its sample count. The server screens
every update (:func:`screen_updates`: tensor count, shapes, dtypes, finite values, and the update's norm
against the round's median), rejects a bad one by client name and aggregates the rest. Raw data never
leaves a client. Non-IID shards follow a Dirichlet(α) over classes per client (Hsu et al. 2019).

:func:`local_steps` is the client's training code; the Flower deployment (``federated/flower.py``) calls
the very same function from real client processes, and the same :func:`screen_updates` and
:class:`ServerAggregator` on the server.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from neuratlas.data.loaders import TensorBatches
from neuratlas.device import autocast, resolve_precision
from neuratlas.errors import NeuratlasError
from neuratlas.optim import build_optimizer
from neuratlas.paradigms.federated.privacy import add_noise, clip_update, epsilon_spent
from neuratlas.plotting import pyplot, save_png
from neuratlas.tasks import Task

Weights = list[np.ndarray]

# --- splitting the data among clients -----------------------------------------------------------------


def iid_split(n: int, clients: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffle and cut into ``clients`` nearly equal shards."""
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(s) for s in np.array_split(perm, clients)]


def dirichlet_split(
    labels: np.ndarray, clients: int, alpha: float, seed: int = 0, min_size: int = 10
) -> list[np.ndarray]:
    """Per class, share its samples among clients in proportions drawn from Dirichlet(α·1).

    Redraws (as the niid-bench reference does) until every client has at least ``min_size`` samples.
    """
    if alpha <= 0:
        raise NeuratlasError(f"Dirichlet alpha must be > 0, got {alpha}")
    labels = np.asarray(labels)
    if clients * min_size > len(labels):
        raise NeuratlasError(f"{len(labels)} samples cannot give {clients} clients {min_size} each")
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        shards: list[list[int]] = [[] for _ in range(clients)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for k, part in enumerate(np.split(idx, cuts)):
                shards[k].extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            return [np.sort(np.array(s, dtype=np.int64)) for s in shards]
    raise NeuratlasError(
        f"could not draw a Dirichlet(α={alpha}) split with ≥ {min_size} samples per client; "
        "raise alpha or lower the number of clients"
    )


# --- what travels: weights as numpy arrays ------------------------------------------------------------


def get_weights(model: nn.Module) -> Weights:
    """Every float tensor of the state dict (parameters and BN statistics), in state-dict order."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values() if v.is_floating_point()]


def set_weights(model: nn.Module, weights: Weights) -> None:
    keys = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    check_shapes(model, weights)
    state = {k: torch.from_numpy(np.asarray(w)) for k, w in zip(keys, weights)}
    model.load_state_dict(state, strict=False)


def check_shapes(model: nn.Module, weights: Weights) -> None:
    """Raise a one-line NeuratlasError when ``weights`` do not fit ``model``."""
    expected = [tuple(v.shape) for v in model.state_dict().values() if v.is_floating_point()]
    got = [tuple(np.shape(w)) for w in weights]
    if got != expected:
        first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        raise NeuratlasError(
            f"update has {len(got)} tensors, the model {len(expected)}; first mismatch at "
            f"#{first}: {got[first] if first < len(got) else '-'} vs "
            f"{expected[first] if first < len(expected) else '-'}"
        )


# --- the federated section of a run ---------------------------------------------------------------


@dataclass
class FederatedConfig:
    """The ``federated`` section of a run (``--federated.KEY value``); the rest of the run (model, data,
    optimizer, trainer seed) is the ordinary run config."""

    clients: int = 10
    rounds: int = 10
    fraction: float = 0.5  # clients sampled per round
    local_epochs: int = 1  # passes over its own shard a client makes per round
    strategy: Literal["fedavg", "fedprox", "fedadam"] = "fedavg"
    prox_mu: float = 0.01  # FedProx: + mu/2 ||w - w_global||² keeps local models near the global one
    server_lr: float = 0.01  # FedAdam: the server optimizer's step (Reddi et al. tune it per task)
    server_betas: tuple[float, float] = (0.9, 0.99)  # FedAdam
    server_tau: float = 1e-3  # FedAdam: adaptivity (the ε of Adam; Reddi et al. use 1e-3)
    # how the screened updates are combined: the sample-weighted mean (FedAvg), or robust aggregators that
    # bound what a few poisoned clients can do: coordinate-wise median, trimmed mean, or the mean of updates
    # whose change is clipped to the round's median norm
    aggregation: Literal["mean", "median", "trimmed-mean", "norm-clip"] = "mean"
    trim: float = 0.2  # trimmed-mean: fraction of values cut at each end, per coordinate
    # an update whose change from the global weights has a norm above this × the round's median is rejected
    # (with 3 or more updates; 0 turns the check off)
    reject_norm: float = 10.0
    alpha: float = 0.0  # Dirichlet α of the non-IID split; 0 = IID
    # DP-FedAvg (privacy.py): each client clips its change to L2 norm dp_clip (> 0 turns DP on), the server
    # averages the sampled clients' changes with uniform weights and adds N(0, (dp_noise·dp_clip/m)²); the
    # (ε, dp_delta) spent so far is reported every round
    dp_clip: float = 0.0
    dp_noise: float = 0.0  # noise multiplier z (0: clipping only, no privacy guarantee: ε = ∞)
    dp_delta: float = 1e-5  # the δ at which ε is reported
    # SecAgg+ (Flower's secaggplus_mod / SecAggPlusWorkflow): the server learns only the sum of the
    # sampled clients' weights, never one client's; runs on Flower's Message API
    secure_aggregation: bool = False
    round_timeout: float = 120.0  # deployment: seconds a round waits for its clients
    centralised: bool = True  # also train the centralised comparison (same model, data and sample budget)

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.clients < 1 or self.rounds < 1 or self.local_epochs < 1:
            raise ValueError("clients, rounds and local_epochs must be ≥ 1")
        if not 0 <= self.trim < 0.5:
            raise ValueError(f"trim must be in [0, 0.5), got {self.trim}")
        for name in ("prox_mu", "server_lr", "server_tau", "reject_norm", "alpha", "dp_clip", "dp_noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {value}")
        if not 0 < self.dp_delta < 1:
            raise ValueError(f"dp_delta must be in (0, 1), got {self.dp_delta}")
        if self.dp_noise > 0 and self.dp_clip <= 0:
            raise ValueError("dp_noise needs dp_clip > 0: the noise is calibrated to the clipping norm")
        if self.dp_clip > 0 and self.aggregation != "mean":
            raise ValueError(
                f"dp_clip cannot apply with aggregation {self.aggregation!r}: the noise is calibrated to the "
                "mean of clipped updates (one client moves it by at most dp_clip / m)"
            )
        if self.secure_aggregation:
            if self.aggregation != "mean":
                raise ValueError(
                    f"secure_aggregation cannot apply with aggregation {self.aggregation!r}: the server sees only "
                    "the sum of the updates, and a robust aggregator needs every client's own update"
                )
            if self.per_round < 2:
                raise ValueError(
                    f"secure_aggregation needs at least 2 clients per round (fraction × clients = {self.per_round})"
                )
        if self.round_timeout <= 0:
            raise ValueError(f"round_timeout must be > 0 seconds, got {self.round_timeout}")

    @property
    def per_round(self) -> int:
        return max(1, round(self.fraction * self.clients))

    @property
    def local_mu(self) -> float:
        return self.prox_mu if self.strategy == "fedprox" else 0.0

    @property
    def label(self) -> str:
        robust = "" if self.aggregation == "mean" else f" {self.aggregation}"
        dp = f" DP C={self.dp_clip:g} z={self.dp_noise:g}" if self.dp_clip > 0 else ""
        sa = " SecAgg+" if self.secure_aggregation else ""
        return f"{self.strategy}{robust}{dp}{sa}{' non-IID α=' + str(self.alpha) if self.alpha else ' IID'}"

    @property
    def sampling_rate(self) -> float:
        """The fraction of clients a round samples: the q of the privacy accounting."""
        return min(self.per_round, self.clients) / self.clients

    def epsilon(self, rounds: int) -> float | None:
        """ε at ``dp_delta`` spent after ``rounds`` rounds (``inf`` with clipping but no noise), or None without DP."""
        if self.dp_clip <= 0:
            return None
        return epsilon_spent(self.sampling_rate, self.dp_noise, rounds, self.dp_delta)


def client_shards(fed: FederatedConfig, labels: torch.Tensor, seed: int = 0) -> list[np.ndarray]:
    if fed.alpha > 0:
        return dirichlet_split(labels.numpy(), fed.clients, fed.alpha, seed)
    return iid_split(len(labels), fed.clients, seed)


def client_seed(seed: int, round_: int, client: int) -> int:
    """The seed of one client's batches in one round (large odd strides: no two (round, client) collide)."""
    return seed * 100_003 + round_ * 1009 + client


# --- screening and aggregating updates ----------------------------------------------------------------


@dataclass
class Update:
    client: str  # the name the server logs when it rejects the update
    weights: Weights
    samples: int


def invalid_update(reference: Weights, weights: Any) -> str:
    """Why ``weights`` cannot be an update of a model with weights ``reference`` ('' when it can)."""
    if not isinstance(weights, (list, tuple)):
        return f"it is a {type(weights).__name__}, not a list of arrays"
    if len(weights) != len(reference):
        return f"it has {len(weights)} tensors, the model {len(reference)}"
    for i, (w, r) in enumerate(zip(weights, reference)):
        if not isinstance(w, np.ndarray):
            return f"tensor #{i} is a {type(w).__name__}, not an array"
        if w.shape != r.shape:
            return f"tensor #{i} has shape {w.shape}, the model expects {r.shape}"
        if w.dtype != r.dtype:
            return f"tensor #{i} is {w.dtype}, the model's is {r.dtype}"
        if not np.isfinite(w).all():
            return f"tensor #{i} holds {int((~np.isfinite(w)).sum())} non-finite values"
    return ""


def update_norm(global_w: Weights, weights: Weights) -> float:
    return math.sqrt(sum(float(((w.astype(np.float64) - g) ** 2).sum()) for w, g in zip(weights, global_w)))


def screen_updates(
    global_w: Weights, updates: list[Update], reject_norm: float = 10.0, samples_limit: int = 0
) -> tuple[list[Update], list[tuple[str, str]]]:
    """Split ``updates`` into the valid ones and (client, reason) for each rejected one.

    An update is rejected when it does not fit the model (count, shape, dtype), holds NaN/inf, claims no or
    more than ``samples_limit`` samples (when > 0), or (with 3 or more updates) moves the model more than
    ``reject_norm`` × the round's median norm: a client that scales its weights ×1e4 is named and left out
    instead of dragging the average away."""
    kept, rejected = [], []
    for u in updates:
        why = invalid_update(global_w, u.weights)
        if not why and not (isinstance(u.samples, (int, np.integer)) and u.samples > 0):
            why = f"it claims {u.samples!r} samples"
        if not why and samples_limit and u.samples > samples_limit:
            why = f"it claims {u.samples} samples, more than the {samples_limit} a client holds"
        (rejected.append((u.client, why)) if why else kept.append(u))
    if reject_norm > 0 and len(kept) >= 3:
        norms = [update_norm(global_w, u.weights) for u in kept]
        limit = reject_norm * max(float(np.median(norms)), 1e-12)
        rejected += [
            (u.client, f"its change has norm {n:.3g}, more than {reject_norm:g}× the round's median")
            for u, n in zip(kept, norms)
            if n > limit
        ]
        kept = [u for u, n in zip(kept, norms) if n <= limit]
    return kept, rejected


def aggregate(results: list[tuple[Weights, int]]) -> Weights:
    """FedAvg: the average of client weights, weighted by their sample counts."""
    total = sum(n for _, n in results)
    if total <= 0:
        raise NeuratlasError("no samples to aggregate")
    return [
        sum(w[i].astype(np.float64) * (n / total) for w, n in results).astype(results[0][0][i].dtype)
        for i in range(len(results[0][0]))
    ]


def robust_aggregate(global_w: Weights, updates: list[Update], how: str, trim: float = 0.2) -> Weights:
    """Combine screened updates: ``mean`` (FedAvg), coordinate-wise ``median``, ``trimmed-mean`` (cut
    ``trim`` of the values at each end per coordinate; Yin et al. 2018), or ``norm-clip`` (each update's
    change clipped to the round's median norm, then the weighted mean; Sun et al. 2019)."""
    if not updates:
        raise NeuratlasError("no valid update to aggregate")
    if how == "mean":
        return aggregate([(u.weights, u.samples) for u in updates])
    if how == "norm-clip":
        norms = [update_norm(global_w, u.weights) for u in updates]
        bound = float(np.median(norms))
        clipped = [
            ([g + (w - g) * min(1.0, bound / max(n, 1e-12)) for w, g in zip(u.weights, global_w)], u.samples)
            for u, n in zip(updates, norms)
        ]
        return aggregate(clipped)
    out = []
    for i, ref in enumerate(global_w):
        stack = np.stack([u.weights[i].astype(np.float64) for u in updates])
        if how == "median":
            value = np.median(stack, axis=0)
        elif how == "trimmed-mean":
            cut = int(trim * len(updates))
            value = np.sort(stack, axis=0)[cut : len(updates) - cut].mean(axis=0)
        else:
            raise NeuratlasError(f"unknown aggregation {how!r}; choose mean, median, trimmed-mean or norm-clip")
        out.append(value.astype(ref.dtype))
    return out


class ServerAggregator:
    """The server's side of a round, the same in the simulation and the Flower deployment: screen the
    updates, aggregate them, then apply the strategy's server step (FedAdam's adaptive step; FedAvg and
    FedProx take the aggregate as it is) and, with DP, the Gaussian noise."""

    def __init__(self, fed: FederatedConfig, seed: int = 0, log: Callable[[str], None] | None = None) -> None:
        self.fed, self.seed, self.log = fed, seed, log or (lambda line: None)
        self.m: Weights | None = None
        self.v: Weights | None = None

    def __call__(
        self,
        round_: int,
        global_w: Weights,
        updates: list[Update],
        samples_limit: int = 0,
        sampled: int | None = None,
    ) -> tuple[Weights, list[tuple[str, str]]]:
        """``sampled``: how many clients the round asked (the DP mean's fixed denominator; default: the
        number of updates)."""
        fed = self.fed
        kept, rejected = screen_updates(global_w, updates, fed.reject_norm, samples_limit)
        for client, why in rejected:
            self.log(f"round {round_}: rejected update from client {client}: {why}")
        if not kept:
            self.log(f"round {round_}: no valid update; the global model is unchanged")
            return global_w, rejected
        if fed.dp_clip > 0:
            # clients clip their own change; clipping again here costs nothing for those that did and holds
            # the bound for one that did not. Uniform weights and the fixed denominator `sampled` keep one
            # client's influence on the mean at most dp_clip / sampled, the sensitivity the noise is made for
            m = max(sampled or len(kept), len(kept))
            clipped = [clip_update(global_w, u.weights, fed.dp_clip)[0] for u in kept]
            mean = aggregate([(w, 1) for w in clipped])
            new = [(g + (w.astype(np.float64) - g) * (len(kept) / m)).astype(g.dtype) for g, w in zip(global_w, mean)]
            return self.server_step(round_, global_w, new, m), rejected
        new = robust_aggregate(global_w, kept, fed.aggregation, fed.trim)
        return self.server_step(round_, global_w, new, len(kept)), rejected

    def server_step(self, round_: int, global_w: Weights, new: Weights, sampled: int) -> Weights:
        """After the combination of the round's updates (here, or under secure aggregation by Flower's
        SecAgg+ unmasking): DP's Gaussian noise on the mean, then the strategy's server step."""
        fed = self.fed
        if fed.dp_noise > 0 and fed.dp_clip > 0:  # the Gaussian mechanism on the mean of clipped changes
            new = add_noise(new, fed.dp_noise, fed.dp_clip, sampled, self.seed * 7 + round_)
        if fed.strategy == "fedadam":  # the mean change is a pseudo-gradient for a server-side Adam
            delta = [n.astype(np.float64) - g for n, g in zip(new, global_w)]
            b1, b2 = fed.server_betas
            self.m = [b1 * m + (1 - b1) * d for m, d in zip(self.m or [0 * d for d in delta], delta)]
            self.v = [b2 * v + (1 - b2) * d * d for v, d in zip(self.v or [0 * d for d in delta], delta)]
            new = [
                (g + fed.server_lr * m / (np.sqrt(v) + fed.server_tau)).astype(g.dtype)
                for g, m, v in zip(global_w, self.m, self.v)
            ]
        return new


# --- one client's training ----------------------------------------------------------------------------


def local_steps(
    task: Task,
    model: nn.Module,
    run: Any,
    tensors: tuple[torch.Tensor, ...],
    epochs: int,
    seed: int,
    prox_mu: float = 0.0,
) -> dict[str, float]:
    """Train ``model`` in place on one client's samples: ``epochs`` passes of the task's own batches
    (its augmentation included) and its own ``training_loss``, with ``run.optimizer`` built by
    ``build_optimizer``, ``run.trainer.grad_clip`` and the run's precision. Returns the mean training loss."""
    batches = TensorBatches(tensors, task.batch_size, seed=seed, transform=task.train_batches.transform)
    anchor = [p.detach().clone() for p in model.parameters()] if prox_mu > 0 else None
    optimizer = build_optimizer(model, run.optimizer)
    clip = run.trainer.grad_clip
    model.train()
    total, count = 0.0, 0
    for index in range(epochs * len(batches)):
        with precision(task, run):
            loss, _ = task.training_loss(model, batches.get(index))
        total, count = total + loss.item(), count + 1
        if anchor is not None:
            drift = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
            loss = loss + prox_mu / 2 * drift
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    return {"loss": total / max(count, 1)}


def precision(task: Task, run: Any) -> AbstractContextManager:
    """Autocast as the trainer does for ``run.trainer.precision`` on the task's device."""
    return autocast(task.device, resolve_precision(run.trainer.precision, task.device))


def evaluate(task: Task, model: nn.Module, run: Any, split: str = "test") -> dict[str, float]:
    """The task's metrics on ``split``, in eval mode without gradients, at the run's precision (as the
    trainer scores a run, so `neuratlas eval` of the global model gives the same figures)."""
    model.eval()
    with torch.no_grad():
        return task.evaluate(model, split, precision(task, run))


# --- the simulation -----------------------------------------------------------------------------------


@dataclass
class History:
    label: str
    rounds: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    bytes_sent: int = 0  # weights uploaded by clients (what travels instead of data)
    rejected: list[list[Any]] = field(default_factory=list)  # [round, client, reason] per rejected update
    # DP runs: the ε spent after each round (null in JSON where it is infinite: clipping without noise)
    epsilon: list[float | None] = field(default_factory=list)
    delta: float | None = None

    def add(self, round_: int, metrics: dict[str, float], fed: FederatedConfig | None = None) -> None:
        """Record a round's test metrics and, with DP, the privacy spent once ``round_`` rounds are done."""
        self.rounds.append(round_)
        self.accuracy.append(metrics["accuracy"])
        self.loss.append(metrics["loss"])
        eps = fed.epsilon(round_) if fed is not None else None
        if eps is not None:
            self.delta = fed.dp_delta
            self.epsilon.append(eps if math.isfinite(eps) else None)

    def round_line(self) -> str:
        """The last round in one line: test accuracy and, with DP, the privacy spent so far."""
        line = f"round {self.rounds[-1]}: global test accuracy {self.accuracy[-1]:.4f}"
        if self.delta is not None:
            eps = self.epsilon[-1]
            line += f", privacy spent ε = {'∞ (no noise)' if eps is None else f'{eps:.3g}'} at δ = {self.delta:g}"
        return line


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (a temporary file renamed), so a stopped server leaves the rounds it
    completed readable, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# An update a simulated client sends instead of its trained weights (the attacks the server must survive).
ATTACKS: dict[str, Callable[[Weights], Weights]] = {
    "nan": lambda w: [np.full_like(a, np.nan) for a in w],
    "scale": lambda w: [a * np.float32(1e4) for a in w],
    "shape": lambda w: [a[..., :1] if a.ndim > 1 else a for a in w],
}


def simulate(
    fed: FederatedConfig,
    task: Task,
    model: nn.Module,
    run: Any,
    progress: bool = True,
    on_round: Callable[[int, History, Weights], None] | None = None,
    attackers: dict[int, str] | None = None,
    log: Callable[[str], None] | None = None,
) -> History:
    """Run ``fed.rounds`` rounds on ``task``'s training set split among clients; the global ``model`` is
    evaluated on the test split after each. ``attackers`` maps client index -> an :data:`ATTACKS` name (the
    fault tests)."""
    seed = run.trainer.seed
    x, y = task.data.train
    shards = client_shards(fed, y, seed)
    global_w = get_weights(model)
    server = ServerAggregator(fed, seed, log)
    rng = np.random.default_rng(seed)
    hist = History(fed.label)
    t0 = time.perf_counter()
    for r in tqdm(range(1, fed.rounds + 1), desc=hist.label, disable=not progress, leave=False):
        chosen = np.sort(rng.choice(len(shards), size=min(fed.per_round, len(shards)), replace=False))
        updates = []
        for k in chosen:
            set_weights(model, global_w)
            idx = torch.from_numpy(shards[k])
            local_steps(
                task, model, run, (x[idx], y[idx]), fed.local_epochs, client_seed(seed, r, int(k)), fed.local_mu
            )
            w = get_weights(model)
            if fed.dp_clip > 0:  # the client bounds its own change before it leaves (privacy.py)
                w = clip_update(global_w, w, fed.dp_clip)[0]
            if attackers and int(k) in attackers:
                w = ATTACKS[attackers[int(k)]](w)
            hist.bytes_sent += sum(a.nbytes for a in w)
            updates.append(Update(str(int(k)), w, len(idx)))
        global_w, rejected = server(r, global_w, updates, samples_limit=max(map(len, shards)), sampled=len(chosen))
        hist.rejected += [[r, c, why] for c, why in rejected]
        set_weights(model, global_w)
        hist.add(r, evaluate(task, model, run), fed)
        if fed.dp_clip > 0 and log:
            log(hist.round_line())
        if on_round:  # e.g. to write the history and checkpoint the global weights
            on_round(r, hist, global_w)
    hist.seconds = time.perf_counter() - t0
    return hist


def centralised(fed: FederatedConfig, task: Task, model: nn.Module, run: Any, progress: bool = True) -> History:
    """The same model, optimiser and total sample budget, trained on the pooled data; evaluated at the same
    points as the federated rounds (each 'round' = the samples one federated round processes)."""
    x, y = task.data.train
    per_round = int(len(x) * fed.per_round / fed.clients) * fed.local_epochs
    hist = History("centralised")
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(run.trainer.seed)
    for r in tqdm(range(1, fed.rounds + 1), desc="centralised", disable=not progress, leave=False):
        idx = torch.randperm(len(x), generator=g)[:per_round]
        local_steps(task, model, run, (x[idx], y[idx]), 1, run.trainer.seed + r)
        hist.add(r, evaluate(task, model, run))
    hist.seconds = time.perf_counter() - t0
    return hist


def plot_histories(histories: list[History], path, title: str = "") -> str:
    """Test accuracy per round, one line per run (PNG)."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.0))
    for h in histories:
        ax.plot(h.rounds, h.accuracy, marker="o", ms=3, label=f"{h.label} ({h.accuracy[-1]:.3f})")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return str(save_png(fig, path))
