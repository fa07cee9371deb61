"""Federated learning in one process: FedAvg (McMahan et al. 2017) and FedProx (Li et al. 2020).

Each client holds its own shard of the training set; per round the server samples a fraction of clients,
sends them the global weights, each trains ``local_epochs`` on its own data and sends back only its weights
and its sample count; the server averages them weighted by sample count. Raw data never leaves a client.
Non-IID shards follow a Dirichlet(α) over classes per client (Hsu et al. 2019): small α, skewed clients.

:func:`local_train` is the client's training code; the Flower deployment (``federated/flower.py``) calls
the very same function from real client processes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from neuratlas.data.transforms import normalize
from neuratlas.errors import NeuratlasError
from neuratlas.models import create_model
from neuratlas.plotting import pyplot, save_png

Weights = list[np.ndarray]

# --- splitting the data among clients -----------------------------------------------------------------


def iid_split(n: int, clients: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffle and cut into ``clients`` nearly equal shards."""
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(s) for s in np.array_split(perm, clients)]


def dirichlet_split(labels: np.ndarray, clients: int, alpha: float, seed: int = 0,
                    min_size: int = 10) -> list[np.ndarray]:
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
    raise NeuratlasError(f"could not draw a Dirichlet(α={alpha}) split with ≥ {min_size} samples per client; "
                         "raise alpha or lower the number of clients")


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
        first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b),
                     min(len(got), len(expected)))
        raise NeuratlasError(f"update has {len(got)} tensors, the model {len(expected)}; first mismatch at "
                             f"#{first}: {got[first] if first < len(got) else '-'} vs "
                             f"{expected[first] if first < len(expected) else '-'}")


def aggregate(results: list[tuple[Weights, int]]) -> Weights:
    """FedAvg: the average of client weights, weighted by their sample counts."""
    total = sum(n for _, n in results)
    if total <= 0:
        raise NeuratlasError("no samples to aggregate")
    return [sum(w[i].astype(np.float64) * (n / total) for w, n in results).astype(results[0][0][i].dtype)
            for i in range(len(results[0][0]))]


def dp_noise_update(global_w: Weights, client_w: Weights, clip: float) -> tuple[Weights, float]:
    """Clip a client's update (client - global) to L2 norm ``clip`` (DP-FedAvg, McMahan et al. 2018)."""
    delta = [c - g for c, g in zip(client_w, global_w)]
    norm = math.sqrt(sum(float((d.astype(np.float64) ** 2).sum()) for d in delta))
    scale = min(1.0, clip / max(norm, 1e-12))
    return [g + d * scale for g, d in zip(global_w, delta)], norm


# --- one client's training ----------------------------------------------------------------------------


@dataclass
class LocalConfig:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    prox_mu: float = 0.0  # FedProx: + mu/2 ||w - w_global||² keeps local models near the global one


def local_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: LocalConfig, mean: tuple[float, ...],
                std: tuple[float, ...], seed: int = 0) -> dict[str, float]:
    """Train ``model`` in place on one client's uint8 images; returns its mean loss."""
    g = torch.Generator().manual_seed(seed)
    anchor = [p.detach().clone() for p in model.parameters()] if cfg.prox_mu > 0 else None
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    model.train()
    total, count = 0.0, 0
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(max(1, len(x) // cfg.batch_size)):  # full batches (one short one if the shard is tiny)
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            loss = nn.functional.cross_entropy(model(normalize(x[idx], mean, std)), y[idx])
            total, count = total + loss.item(), count + 1
            if anchor is not None:
                drift = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
                loss = loss + cfg.prox_mu / 2 * drift
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return {"loss": total / max(count, 1)}


@torch.no_grad()
def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean, std,
                   batch: int = 2000) -> dict[str, float]:
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch):
        logits = model(normalize(x[i:i + batch], mean, std))
        loss += nn.functional.cross_entropy(logits, y[i:i + batch], reduction="sum").item()
        correct += (logits.argmax(-1) == y[i:i + batch]).sum().item()
    return {"accuracy": correct / len(x), "loss": loss / len(x)}


# --- the simulation -----------------------------------------------------------------------------------


@dataclass
class FederatedConfig:
    """One federated experiment; the fields are ``--fed.KEY`` overrides on the command line."""

    model: str = "lenet5"
    dataset: str = "fashion-mnist"
    clients: int = 10
    rounds: int = 10
    fraction: float = 0.5  # clients sampled per round
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    strategy: Literal["fedavg", "fedprox"] = "fedavg"
    prox_mu: float = 0.01
    alpha: float = 0.0  # Dirichlet α of the non-IID split; 0 = IID
    limit_train: int = 0  # use only the first N training images (quick runs)
    dp_clip: float = 0.0  # > 0: DP-FedAvg, clip each client's update to this L2 norm
    dp_noise: float = 0.0  # noise multiplier z: Gaussian std z·clip/m added to the averaged update
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in ("fedavg", "fedprox"):
            raise ValueError(f"strategy must be 'fedavg' or 'fedprox', got {self.strategy!r}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.clients < 1 or self.rounds < 1:
            raise ValueError("clients and rounds must be ≥ 1")

    @property
    def local(self) -> LocalConfig:
        mu = self.prox_mu if self.strategy == "fedprox" else 0.0
        return LocalConfig(self.local_epochs, self.batch_size, self.lr, self.momentum, mu)

    @property
    def per_round(self) -> int:
        return max(1, round(self.fraction * self.clients))


def load_federated_data(cfg: FederatedConfig):
    """(train images, labels), (test images, labels), mean, std of the data set (train = its train+val)."""
    from neuratlas.data import load_dataset

    d = load_dataset({"name": cfg.dataset, "val_size": 0, "split_seed": cfg.seed})
    x, y = d.train
    if cfg.limit_train:
        x, y = x[:cfg.limit_train], y[:cfg.limit_train]
    return (x, y), d.test, d.mean, d.std, len(d.classes)


def client_shards(cfg: FederatedConfig, labels: torch.Tensor) -> list[np.ndarray]:
    if cfg.alpha > 0:
        return dirichlet_split(labels.numpy(), cfg.clients, cfg.alpha, cfg.seed)
    return iid_split(len(labels), cfg.clients, cfg.seed)


@dataclass
class History:
    label: str
    rounds: list[int] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    bytes_sent: int = 0  # weights uploaded by clients (what travels instead of data)


def build_global_model(cfg: FederatedConfig, in_chans: int, num_classes: int) -> nn.Module:
    torch.manual_seed(cfg.seed)
    return create_model(cfg.model, num_classes=num_classes, in_chans=in_chans)


def simulate(cfg: FederatedConfig, data=None, shards: list[np.ndarray] | None = None, progress: bool = True,
             on_round: Callable[[int, dict, Weights], None] | None = None) -> History:
    """Run ``cfg.rounds`` of FedAvg/FedProx; the global model is evaluated on the test set after each."""
    (x, y), (xt, yt), mean, std, n_cls = data or load_federated_data(cfg)
    shards = shards if shards is not None else client_shards(cfg, y)
    model = build_global_model(cfg, x.shape[1], n_cls)
    global_w = get_weights(model)
    rng = np.random.default_rng(cfg.seed)
    tag = f"{cfg.strategy}{' non-IID α=' + str(cfg.alpha) if cfg.alpha else ' IID'}"
    hist = History(tag)
    t0 = time.perf_counter()
    for r in tqdm(range(1, cfg.rounds + 1), desc=tag, disable=not progress, leave=False):
        chosen = np.sort(rng.choice(len(shards), size=min(cfg.per_round, len(shards)), replace=False))
        results = []
        for k in chosen:
            set_weights(model, global_w)
            idx = torch.from_numpy(shards[k])
            seed = cfg.seed * 100_003 + r * 1009 + int(k)
            local_train(model, x[idx], y[idx], cfg.local, mean, std, seed=seed)
            w = get_weights(model)
            if cfg.dp_clip > 0:
                w, _ = dp_noise_update(global_w, w, cfg.dp_clip)
            hist.bytes_sent += sum(a.nbytes for a in w)
            results.append((w, len(idx)))
        global_w = aggregate(results)
        if cfg.dp_noise > 0 and cfg.dp_clip > 0:  # central Gaussian mechanism on the averaged update
            sigma = cfg.dp_noise * cfg.dp_clip / len(results)
            gen = np.random.default_rng(cfg.seed * 7 + r)
            global_w = [w + gen.normal(0, sigma, w.shape).astype(w.dtype) for w in global_w]
        set_weights(model, global_w)
        m = evaluate_model(model, xt, yt, mean, std)
        hist.rounds.append(r)
        hist.accuracy.append(m["accuracy"])
        hist.loss.append(m["loss"])
        if on_round:  # e.g. to checkpoint the global weights
            on_round(r, m, global_w)
    hist.seconds = time.perf_counter() - t0
    return hist


def centralised(cfg: FederatedConfig, data=None, progress: bool = True) -> History:
    """The same model, optimiser and total sample budget, trained on the pooled data; evaluated at the same
    points as the federated rounds (each 'round' = the samples one federated round processes)."""
    (x, y), (xt, yt), mean, std, n_cls = data or load_federated_data(cfg)
    model = build_global_model(cfg, x.shape[1], n_cls)
    per_round = int(len(x) * cfg.per_round / cfg.clients) * cfg.local_epochs
    hist = History("centralised")
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(cfg.seed)
    local = LocalConfig(1, cfg.batch_size, cfg.lr, cfg.momentum)
    for r in tqdm(range(1, cfg.rounds + 1), desc="centralised", disable=not progress, leave=False):
        idx = torch.randperm(len(x), generator=g)[:per_round]
        local_train(model, x[idx], y[idx], local, mean, std, seed=cfg.seed + r)
        m = evaluate_model(model, xt, yt, mean, std)
        hist.rounds.append(r)
        hist.accuracy.append(m["accuracy"])
        hist.loss.append(m["loss"])
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
