"""The data layer: sources (cache → offline → checksummed download → one-line hint), IDX, batching."""

import gzip
import hashlib
import struct

import numpy as np
import pytest
import torch

from neuratlas.data import DATASETS, load_dataset
from neuratlas.data.images import read_idx
from neuratlas.data.loaders import TensorBatches
from neuratlas.data.transforms import random_crop, random_erase, random_hflip
from neuratlas.errors import NeuratlasError
from neuratlas.sources import DataSource


def write_idx(path, arr: np.ndarray, truncate: int = 0):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(data[: len(data) - truncate])


def test_idx_roundtrip_and_truncation(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "ok.gz", arr)
    assert np.array_equal(read_idx(tmp_path / "ok.gz"), arr)
    write_idx(tmp_path / "bad.gz", arr, truncate=5)
    with pytest.raises(NeuratlasError, match="truncated"):
        read_idx(tmp_path / "bad.gz")


def test_source_order_and_checksummed_download(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURATLAS_CACHE", str(tmp_path / "cache"))
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "a.txt").write_text("hello")
    digest = hashlib.sha256(b"hello").hexdigest()
    offline = tmp_path / "offline"
    src = DataSource("toy", {"a.txt": digest}, "install toy-data", offline=[lambda: offline], base_url=remote.as_uri())
    # nothing offline, downloads disabled -> one-line hint
    with pytest.raises(NeuratlasError, match="toy: not found. install toy-data"):
        src.locate(download=False)
    # download (file:// stands in for the canonical address) lands in the cache, verified
    folder, how = src.locate(download=True)
    assert how.startswith("downloaded") and (folder / "a.txt").read_text() == "hello"
    assert src.locate(download=False)[1].startswith("cache")
    # an offline copy is used when the cache is empty
    (tmp_path / "cache" / "toy" / "a.txt").unlink()
    offline.mkdir()
    (offline / "a.txt").write_text("hello")
    assert src.locate(download=False)[1].startswith("offline")
    # a corrupted download is rejected, and nothing is left behind
    (remote / "a.txt").write_text("tampered")
    (offline / "a.txt").unlink()
    with pytest.raises(NeuratlasError, match="checksum mismatch"):
        src.locate(download=True)
    assert not (tmp_path / "cache" / "toy" / "a.txt").exists()


def test_fashion_mnist_is_real_and_split():
    d = load_dataset({"name": "fashion-mnist"})
    assert [len(s[0]) for s in (d.train, d.val, d.test)] == [55_000, 5_000, 10_000]
    assert d.train[0].dtype == torch.uint8 and d.shape == (1, 28, 28)
    assert torch.bincount(d.test[1]).tolist() == [1000] * 10  # the official balanced test set
    # the validation split is carved from train and disjoint from it
    tr = {hash(x.numpy().tobytes()) for x in d.train[0][:5000]}
    va = {hash(x.numpy().tobytes()) for x in d.val[0]}
    assert len(tr & va) < 5  # Fashion-MNIST has a handful of exact duplicate images


@pytest.mark.parametrize("name, n_test", [("mnist5k", 1000), ("digits", 359)])
def test_small_extras(name, n_test):
    d = load_dataset({"name": name})
    assert len(d.test[0]) == n_test and len(set(d.train[1].tolist())) == 10


def test_dataset_errors():
    with pytest.raises(NeuratlasError, match="unknown data set"):
        load_dataset({"name": "cifar10"})
    with pytest.raises(NeuratlasError, match="unknown option 'batchsize'"):
        load_dataset({"name": "digits", "batchsize": 3})
    assert "fashion-mnist" in DATASETS.names()


def test_batches_are_a_pure_function_of_seed_and_index():
    x = torch.arange(100)
    a, b = TensorBatches((x,), 16, seed=3), TensorBatches((x,), 16, seed=3)
    assert len(a) == 6
    assert torch.equal(a.get(13)[0], b.get(13)[0])
    epoch0 = torch.cat([a.get(i)[0] for i in range(6)])
    assert len(set(epoch0.tolist())) == 96  # no repeats within an epoch
    assert not torch.equal(a.get(0)[0], a.get(6)[0])  # a new permutation each epoch


def test_augmentations_keep_shape_and_content():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    y = random_crop(x, 2, g)
    assert y.shape == x.shape
    # a translation: every non-zero pixel of the crop comes from the source image, in order
    for i in range(2):
        nz = y[i][y[i] > 0]
        assert set(nz.tolist()) <= set(x[i].flatten().tolist())
    flipped = random_hflip(x, torch.Generator().manual_seed(1), p=1.0)
    assert torch.equal(flipped, x.flip(-1))
    erased = random_erase(x, torch.Generator().manual_seed(2), p=1.0)
    assert (erased == 0).any() and erased.shape == x.shape
