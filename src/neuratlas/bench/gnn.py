"""gnn: Neuratlas GCN against PyTorch Geometric's GCNConv on Cora (public split), same run, same loop.

Both train a two-layer GCN (hidden 16, dropout 0.5, Adam lr 0.01, weight decay 5e-4) for 200 epochs on the
same row-normalised features, seed by seed, interleaved so machine load hits both alike. Reported: test
accuracy (mean ± std over seeds) and the wall-time ratio. PyG is a peer to race, never a dependency.

Accuracy parity is checked two ways: Neuratlas' GCN on *dense* features draws exactly PyG's dropout masks, so
it must match PyG seed for seed (checked on the first two seeds: each check costs a PyG-speed run); the fast
sparse path draws its dropout masks over the stored values only, so its per-seed accuracies differ (same
distribution), and only the means over seeds are comparable. A seed's test accuracy varies by ~0.6 points, so
the difference of two means over n seeds has a standard error of ~0.6·√(2/n) points (0.3 at n = 10): it is
printed beside the difference.
"Same accuracy" in the race line: the means differ by ≤ 1 point and the dense control equals PyG.

Where Neuratlas' speed comes from: the normalised adjacency is built once (CSR, with its transpose for the
backward), the 98.7%-zero bag-of-words features stay sparse (dropout on the stored values only, one sparse
product for x W), and each layer is one sparse-dense product.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from neuratlas.bench import BENCHMARKS
from neuratlas.bench.races import race_line
from neuratlas.errors import NeuratlasError
from neuratlas.extras import require


def _train(model, x, graph_args, y, masks, epochs: int) -> tuple[float, float]:
    """The same 200-epoch loop for both: returns (test accuracy, seconds)."""
    train, _, test = masks
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    t0 = time.perf_counter()
    model.train()
    for _ in range(epochs):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x, *graph_args)[train], y[train])
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x, *graph_args).argmax(-1)[test] == y[test]).float().mean().item()
    return acc, time.perf_counter() - t0


def _pyg_gcn(in_features: int, num_classes: int, cached: bool):
    from torch_geometric.nn import GCNConv

    class PyGGCN(torch.nn.Module):  # PyG's examples/gcn.py
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = GCNConv(in_features, 16, cached=cached)
            self.conv2 = GCNConv(16, num_classes, cached=cached)

        def forward(self, x, edge_index):
            x = F.dropout(x, 0.5, self.training)
            x = F.relu(self.conv1(x, edge_index))
            x = F.dropout(x, 0.5, self.training)
            return self.conv2(x, edge_index)

    return PyGGCN()


@dataclass
class GNNOptions:
    quick: bool = False  # 3 seeds instead of 10
    seeds: int | None = None  # training seeds per side, ≥ 2 (default: 3 with --quick, else 10)
    epochs: int = 200
    pyg_cached: bool = True  # PyG's GCNConv caches the normalised adjacency, as ours does
    threads: int | None = None  # torch threads (default: torch's own choice)
    root: str | None = None  # a folder holding Planetoid's ind.cora.* files (default: the data set's source)


def bench_gnn(options: GNNOptions) -> list[str]:
    from neuratlas.data import load_dataset
    from neuratlas.layers.graph import Graph, as_features
    from neuratlas.models import create_model

    quick = options.quick
    seeds = options.seeds if options.seeds is not None else 3 if quick else 10
    if seeds < 2:
        raise NeuratlasError(f"the gnn benchmark compares means over seeds: --seeds must be ≥ 2, got {seeds}")
    epochs = options.epochs
    cached = options.pyg_cached
    if options.threads:
        torch.set_num_threads(options.threads)
    spec = {"name": "cora"}
    if options.root:
        spec["root"] = str(Path(options.root))
    data = load_dataset(spec)
    require("torch_geometric", "the gnn benchmark (it races PyTorch Geometric)")
    masks = (data.train_mask, data.val_mask, data.test_mask)
    n_cls = len(data.classes)
    ours_acc, ours_t, pyg_acc, pyg_t, dense_acc = [], [], [], [], []
    for seed in range(seeds):
        torch.manual_seed(seed)
        graph = Graph(data.graph.edge_index, data.graph.num_nodes)  # fresh: adjacency build is timed
        t0 = time.perf_counter()
        x = as_features(data.x)
        model = create_model("gcn", in_features=data.x.shape[1], num_classes=n_cls)
        acc, _ = _train(model, x, (graph,), data.y, masks, epochs)
        ours_acc.append(acc)
        ours_t.append(time.perf_counter() - t0)  # includes building the sparse structures
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        peer = _pyg_gcn(data.x.shape[1], n_cls, cached)
        acc, _ = _train(peer, data.x, (data.graph.edge_index,), data.y, masks, epochs)
        pyg_acc.append(acc)
        pyg_t.append(time.perf_counter() - t0)
        if seed >= 2:  # the control (dense features, PyG's dropout draws, untimed) costs a PyG run: 2 seeds
            continue
        torch.manual_seed(seed)
        model = create_model("gcn", in_features=data.x.shape[1], num_classes=n_cls)
        dense_acc.append(_train(model, data.x, (graph,), data.y, masks, epochs)[0])

    def fmt(a: list[float]) -> str:
        sd = statistics.stdev(a) if len(a) > 1 else 0.0
        return f"{100 * statistics.mean(a):.1f}% ± {100 * sd:.1f}"

    diff = statistics.mean(ours_acc) - statistics.mean(pyg_acc)  # independent draws: unpaired standard error
    se = ((statistics.variance(ours_acc) + statistics.variance(pyg_acc)) / seeds) ** 0.5
    equal = sum(a == b for a, b in zip(dense_acc, pyg_acc))
    ratio = sum(pyg_t) / sum(ours_t)
    best_ratio = min(pyg_t) / min(ours_t)
    return [
        f"GCN on Cora (public split 140/500/1000), {epochs} epochs, hidden 16, dropout 0.5, Adam lr 0.01, "
        f"wd 5e-4; {seeds} seeds; {torch.get_num_threads()} threads",
        f"  neuratlas gcn          test accuracy {fmt(ours_acc)}   {statistics.mean(ours_t):.2f} s per run",
        f"  PyG GCNConv (cached={cached})  test accuracy {fmt(pyg_acc)}   {statistics.mean(pyg_t):.2f} s per run",
        f"  control: neuratlas gcn on dense features (PyG's dropout draws) equals PyG's test accuracy in {equal} "
        f"of {len(dense_acc)} seeds",
        f"  accuracy difference (sparse − PyG): {100 * diff:+.2f} points, standard error {100 * se:.2f}",
        f"  speed: neuratlas is {ratio:.1f}× faster than PyG (total time; best-run ratio {best_ratio:.1f}×)",
        "  published (Kipf & Welling 2017): 81.5%",
        race_line(
            "GCN on Cora, 200 epochs",
            f"PyG {fmt(pyg_acc)}, {statistics.mean(pyg_t):.2f} s/run",
            f"{fmt(ours_acc)}, {statistics.mean(ours_t):.2f} s/run",
            f"{ratio:.1f}× faster",
            "same accuracy, ≥ 5× faster",
            ratio >= 5 and diff >= -0.01 and equal == len(dense_acc),
            "neuratlas bench gnn --root DIR",
        ),
    ]


BENCHMARKS.add(
    "gnn",
    bench_gnn,
    GNNOptions,
    description="GCN on Cora: accuracy and speed against PyTorch Geometric "
    "(--root DIR with ind.cora.*, --seeds N, --threads N, --quick)",
)
