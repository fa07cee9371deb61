"""Graph tasks: node classification (Cora, public split), graph classification (molecules) and link
prediction (Cora's edges: negative sampling, AUC and hits@k — the recommendation and fraud set-ups).

Node-level tasks are full-batch: one step is one pass over the whole graph, whose normalised adjacency is
built once and cached. Graph classification batches many small graphs into one disconnected graph.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from neuratlas.data import load_dataset
from neuratlas.data.graphs import EdgeSplit, MoleculeData, NodeData, smiles_graph, split_edges
from neuratlas.data.loaders import seeded_generator
from neuratlas.errors import NeuratlasError
from neuratlas.layers.graph import as_features, batch_graphs
from neuratlas.tasks.base import TASKS, Task, model_device


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(-1) == y).float().mean().item()


# --- node classification ------------------------------------------------------------------------------------
@dataclass
class NodeClassificationConfig:
    label_smoothing: float = 0.0


class NodeClassification(Task):
    Config = NodeClassificationConfig
    metric = "accuracy"
    higher_is_better = True

    def __init__(self, cfg: NodeClassificationConfig, data_spec: dict[str, Any], seed: int = 0) -> None:
        super().__init__(cfg, data_spec, seed)
        self.data: NodeData = load_dataset(data_spec)
        if not isinstance(self.data, NodeData):
            raise NeuratlasError(f"node-classification needs a graph data set such as cora, not {data_spec['name']!r}")
        if not self.data.classes or not bool(self.data.train_mask.any()):
            raise NeuratlasError(
                f"{self.data.source}: no labelled training nodes; node classification needs "
                "a nodes file with a label column (graph-csv)"
            )
        self._on: torch.device | None = None

    def _placed(self) -> NodeData:
        if self._on != self.device:  # move once; the graph's adjacency cache then lives on the device
            d = self.data
            self.data = NodeData(
                as_features(d.x.to(self.device)),
                d.y.to(self.device),
                d.graph.to(self.device),
                d.train_mask.to(self.device),
                d.val_mask.to(self.device),
                d.test_mask.to(self.device),
                d.classes,
                d.source,
            )
            self._on = self.device
        return self.data

    def model_defaults(self) -> dict[str, Any]:
        return {"in_features": self.data.x.shape[1], "num_classes": len(self.data.classes)}

    @property
    def steps_per_epoch(self) -> int:
        return 1

    def train_batch(self, index: int) -> NodeData:
        return self._placed()

    def training_loss(self, model: nn.Module, batch: NodeData) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(batch.x, batch.graph)
        m = batch.train_mask
        return F.cross_entropy(out[m].float(), batch.y[m], label_smoothing=self.cfg.label_smoothing), {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, autocast: AbstractContextManager) -> dict[str, float]:
        d = self._placed()
        was = model.training
        model.eval()
        with autocast:
            out = model(d.x, d.graph).float()
        model.train(was)
        m = {"train": d.train_mask, "val": d.val_mask, "test": d.test_mask}[split]
        return {"loss": F.cross_entropy(out[m], d.y[m]).item(), "accuracy": _accuracy(out[m], d.y[m])}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"classes": self.data.classes, "dataset": self.data_spec["name"], "data": self.data_spec}

    def describe_data(self) -> str:
        d = self.data
        counts = [int(m.sum()) for m in (d.train_mask, d.val_mask, d.test_mask)]
        return f"{self.data_spec['name']} ({counts[0]}/{counts[1]}/{counts[2]:,} nodes)"

    def example_inputs(self, folder: Path) -> tuple[list[str], dict[str, str]]:
        return [str(int(i)) for i in self.data.test_mask.nonzero()[:2, 0]], {}

    @classmethod
    def predict(
        cls, model: nn.Module, extra: dict[str, Any], inputs: list[str], out_dir: str, options: dict[str, str]
    ) -> list[str]:
        """Classify nodes of the run's graph by id: ``neuratlas predict RUN 0 17 2500``."""
        d = load_dataset(extra["data"])
        nodes = node_ids(inputs, d.graph.num_nodes)
        dev = model_device(model)
        with torch.no_grad():
            probs = model(as_features(d.x.to(dev)), d.graph.to(dev)).float()[nodes].softmax(-1).cpu()
        return [f"node {n}: {extra['classes'][int(p.argmax())]} {float(p.max()):.1%}" for n, p in zip(nodes, probs)]


def node_ids(items: list[str], num_nodes: int) -> list[int]:
    """Node ids given on the command line, checked against the graph's size."""
    out = []
    for item in items:
        try:
            n = int(item)
        except ValueError:
            raise NeuratlasError(f"{item!r} is not a node id (a whole number)") from None
        if not 0 <= n < num_nodes:
            raise NeuratlasError(f"node {n} is outside the graph's {num_nodes:,} nodes")
        out.append(n)
    return out


# --- graph classification -----------------------------------------------------------------------------------
@dataclass
class GraphClassificationConfig:
    label_smoothing: float = 0.0


class GraphClassification(Task):
    Config = GraphClassificationConfig
    metric = "accuracy"
    higher_is_better = True

    def __init__(self, cfg: GraphClassificationConfig, data_spec: dict[str, Any], seed: int = 0) -> None:
        super().__init__(cfg, data_spec, seed)
        self.data: MoleculeData = load_dataset(data_spec)
        if not isinstance(self.data, MoleculeData):
            raise NeuratlasError(
                f"graph-classification needs a data set of small graphs such as "
                f"solubility-graphs, not {data_spec['name']!r}"
            )
        self.batch_size = min(self.data.cfg.batch_size, len(self.data.train))

    def model_defaults(self) -> dict[str, Any]:
        return {"in_features": self.data.num_features, "num_classes": len(self.data.classes)}

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data.train) // self.batch_size

    def train_batch(self, index: int):
        """Batch ``index`` of epoch ``index // steps_per_epoch``: a pure function of (seed, index)."""
        epoch, i = divmod(index, self.steps_per_epoch)
        perm = torch.randperm(len(self.data.train), generator=seeded_generator(self.seed, epoch))
        pick = perm[i * self.batch_size : (i + 1) * self.batch_size].tolist()
        return batch_graphs([self.data.train[j] for j in pick])

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        x, graph, y = batch
        out = model(x.to(self.device), graph.to(self.device)).float()
        return F.cross_entropy(out, y.to(self.device), label_smoothing=self.cfg.label_smoothing), {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, autocast: AbstractContextManager) -> dict[str, float]:
        samples = {"train": self.data.train, "val": self.data.val, "test": self.data.test}[split]
        was = model.training
        model.eval()
        outs, ys = [], []
        for i in range(0, len(samples), 256):
            x, graph, y = batch_graphs(samples[i : i + 256])
            with autocast:
                outs.append(model(x.to(self.device), graph.to(self.device)).float())
            ys.append(y.to(self.device))
        model.train(was)
        out, y = torch.cat(outs), torch.cat(ys)
        return {"loss": F.cross_entropy(out, y).item(), "accuracy": _accuracy(out, y)}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"classes": self.data.classes, "dataset": self.data_spec["name"]}

    def describe_data(self) -> str:
        d = self.data
        return f"{self.data_spec['name']} ({len(d.train)}/{len(d.val)}/{len(d.test)} graphs)"

    def example_inputs(self, folder: Path) -> tuple[list[str], dict[str, str]]:
        return ["CCO", "c1ccccc1O"], {}  # ethanol, phenol

    @classmethod
    def predict(
        cls, model: nn.Module, extra: dict[str, Any], inputs: list[str], out_dir: str, options: dict[str, str]
    ) -> list[str]:
        """Classify molecules given as SMILES strings: ``neuratlas predict RUN CCO 'c1ccccc1O'``."""
        x, graph, _ = batch_graphs([smiles_graph(s) for s in inputs])
        dev = model_device(model)
        with torch.no_grad():
            probs = model(x.to(dev), graph.to(dev)).float().softmax(-1).cpu()
        return [f"{s}: {extra['classes'][int(p.argmax())]} {float(p.max()):.1%}" for s, p in zip(inputs, probs)]


# --- link prediction ----------------------------------------------------------------------------------------
def roc_auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Probability that a random positive scores above a random negative (Mann-Whitney U, ties averaged)."""
    scores = torch.cat([pos, neg]).double()
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=scores.dtype)
    uniq, inv = torch.unique(scores, return_inverse=True)
    if len(uniq) < len(scores):  # average the ranks of tied scores
        ranks = (
            torch.zeros(len(uniq), dtype=scores.dtype).index_add_(0, inv, ranks)[inv]
            / torch.bincount(inv).to(scores.dtype)[inv]
        )
    n_pos, n_neg = len(pos), len(neg)
    return ((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


def hits_at_k(pos: torch.Tensor, neg: torch.Tensor, k: int) -> float:
    """OGB's hits@k: the share of positive edges scored above the k-th best negative."""
    if len(neg) < k:
        return 1.0
    threshold = neg.topk(k).values[-1]
    return (pos > threshold).float().mean().item()


@dataclass
class LinkPredictionConfig:
    val_frac: float = 0.05
    test_frac: float = 0.10
    negatives: int = 1  # negative pairs sampled per positive edge at each step
    hits_k: int = 20


class LinkPrediction(Task):
    """Encode nodes with a GNN over the training edges only; score a pair by the dot product of its
    embeddings; train with binary cross-entropy against freshly sampled non-edges."""

    Config = LinkPredictionConfig
    metric = "auc"
    higher_is_better = True

    def __init__(self, cfg: LinkPredictionConfig, data_spec: dict[str, Any], seed: int = 0) -> None:
        super().__init__(cfg, data_spec, seed)
        self.data: NodeData = load_dataset(data_spec)
        if not isinstance(self.data, NodeData):
            raise NeuratlasError(f"link-prediction needs a graph data set such as cora, not {data_spec['name']!r}")
        self.split: EdgeSplit = split_edges(self.data.graph, cfg.val_frac, cfg.test_frac, seed=0)
        self._on: torch.device | None = None

    def _placed(self) -> tuple[torch.Tensor, EdgeSplit]:
        if self._on != self.device:
            s = self.split
            self.x = as_features(self.data.x.to(self.device))
            self.split = EdgeSplit(
                s.train_graph.to(self.device),
                *(t.to(self.device) for t in (s.train_pos, s.val_pos, s.val_neg, s.test_pos, s.test_neg)),
            )
            self._on = self.device
        return self.x, self.split

    def model_defaults(self) -> dict[str, Any]:
        return {"in_features": self.data.num_features}

    @property
    def steps_per_epoch(self) -> int:
        return 1

    def train_batch(self, index: int) -> torch.Tensor:
        """Random node pairs as negatives (a pair that happens to be an edge is rare noise, as in PyG)."""
        n = self.data.graph.num_nodes
        count = self.split.train_pos.shape[1] * self.cfg.negatives
        return torch.randint(0, n, (2, count), generator=seeded_generator(self.seed, index))

    @staticmethod
    def score(z: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        return (z[pairs[0]] * z[pairs[1]]).sum(-1)

    def training_loss(self, model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        x, s = self._placed()
        z = model(x, s.train_graph).float()
        pos, neg = self.score(z, s.train_pos), self.score(z, batch.to(self.device))
        loss = F.binary_cross_entropy_with_logits(
            torch.cat([pos, neg]), torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
        )
        return loss, {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, autocast: AbstractContextManager) -> dict[str, float]:
        x, s = self._placed()
        was = model.training
        model.eval()
        with autocast:
            z = model(x, s.train_graph).float()
        model.train(was)
        if split == "train":
            pos_e, neg_e = s.train_pos, s.val_neg
        else:
            pos_e, neg_e = (s.val_pos, s.val_neg) if split == "val" else (s.test_pos, s.test_neg)
        pos, neg = self.score(z, pos_e).cpu(), self.score(z, neg_e).cpu()
        k = self.cfg.hits_k
        return {"auc": roc_auc(pos, neg), f"hits@{k}": hits_at_k(pos, neg, k)}

    def describe_data(self) -> str:
        s = self.split
        return f"{self.data_spec['name']} edges ({s.train_pos.shape[1]:,}/{s.val_pos.shape[1]}/{s.test_pos.shape[1]})"

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"data": self.data_spec, "val_frac": self.cfg.val_frac, "test_frac": self.cfg.test_frac}

    def example_inputs(self, folder: Path) -> tuple[list[str], dict[str, str]]:
        u, v = self.split.test_pos[:, 0].tolist()
        return [f"{u},{v}", "0,1"], {}

    @classmethod
    def predict(
        cls, model: nn.Module, extra: dict[str, Any], inputs: list[str], out_dir: str, options: dict[str, str]
    ) -> list[str]:
        """The probability of an edge between node pairs ``U,V`` of the run's graph, encoded over the training
        edges as in training: ``neuratlas predict RUN 0,633 5,12``."""
        d = load_dataset(extra["data"])
        split = split_edges(d.graph, extra["val_frac"], extra["test_frac"], seed=0)
        pairs = []
        for item in inputs:
            u, sep, v = item.partition(",")
            if not sep:
                raise NeuratlasError(f"{item!r}: give node pairs as U,V (e.g. 0,633)")
            pairs.append(node_ids([u, v], d.graph.num_nodes))
        dev = model_device(model)
        with torch.no_grad():
            z = model(as_features(d.x.to(dev)), split.train_graph.to(dev)).float()
            p = cls.score(z, torch.tensor(pairs, device=dev).t()).sigmoid().cpu()
        return [f"{u}–{v}: edge probability {float(q):.1%}" for (u, v), q in zip(pairs, p)]


TASKS.add(
    "node-classification",
    NodeClassification,
    NodeClassificationConfig,
    description="classify the nodes of one graph (full batch); accuracy on held-out nodes",
)
TASKS.add(
    "graph-classification",
    GraphClassification,
    GraphClassificationConfig,
    description="classify small graphs (molecules) in mini-batches; accuracy on held-out graphs",
)
TASKS.add(
    "link-prediction",
    LinkPrediction,
    LinkPredictionConfig,
    description="predict held-out edges from node embeddings; AUC and hits@k with sampled negatives",
)
