"""data: an image folder of real photos-as-files against PIL decoding in a torch DataLoader, same resize.

    neuratlas bench data                   # 10,000 Fashion-MNIST images as PNG + JPEG files, 3 epochs
    neuratlas bench data --n 2000 --epochs 2

The folder (half PNG, half JPEG, a folder per class) is written to a scratch directory, then read both ways
into 32×32 uint8 batches of 256, shuffled, with the same bilinear resize:

- **baseline**: a ``Dataset`` whose ``__getitem__`` opens the file with Pillow, converts, resizes and makes
  a tensor, in ``DataLoader(num_workers=2, persistent_workers=True)`` (the common PyTorch recipe, its
  worker start-up paid once);
- **Neuratlas**: ``image-folder`` with an empty decode cache and its default reading processes (one per
  CPU from 4 CPUs, else one): files hashed and decoded once, cached;
  its epochs are index gathers on the uint8 tensor. A *later run* loads the same folder again (cache hit).

Reported: first-epoch and steady-state (mean of the later epochs) ratios, the later run's load, and the
loader's steady images/s against the convnet quick recipe's training images/s on this machine — the margin
by which training never waits on data.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neuratlas.bench import BENCHMARKS
from neuratlas.bench.races import race_line

SIZE = 32
BATCH = 256


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_folder(root: Path, n: int) -> int:
    """The first ``n`` Fashion-MNIST training images as files: even indices PNG, odd JPEG (quality 90)."""
    from PIL import Image

    from neuratlas.data import load_dataset

    d = load_dataset({"name": "fashion-mnist", "val_size": 0})
    x, y = d.train[0][:n, 0].numpy(), d.train[1][:n].numpy()
    for c in range(len(d.classes)):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(len(x)):
        img = Image.fromarray(x[i])
        if i % 2:
            img.save(root / f"class{y[i]}" / f"{i}.jpg", quality=90)
        else:
            img.save(root / f"class{y[i]}" / f"{i}.png")
    return len(x)


class PILFolder(torch.utils.data.Dataset):
    """The baseline: one file per item, decoded and resized in the worker processes."""

    def __init__(self, root: Path) -> None:
        self.items = []
        for c, folder in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
            self.items += [(p, c) for p in sorted(folder.iterdir())]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.items[i]
        with Image.open(path) as img:
            a = np.asarray(img.convert("L").resize((SIZE, SIZE), Image.BILINEAR))
        return torch.from_numpy(a.copy())[None], label


def baseline_epochs(root: Path, epochs: int, workers: int) -> list[float]:
    loader = torch.utils.data.DataLoader(
        PILFolder(root),
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    times = []
    t0 = time.perf_counter()
    for _ in range(epochs):
        n = 0
        for x, _ in loader:
            n += len(x)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        t0 = t1
    del loader
    return times


def neuratlas_epochs(root: Path, epochs: int) -> tuple[list[float], float, int]:
    """(epoch times, the first epoch's load share, decoded count); epoch 1 includes loading the folder."""
    from neuratlas.data import load_dataset
    from neuratlas.data.loaders import TensorBatches

    t0 = time.perf_counter()
    d = load_dataset(
        {
            "name": "image-folder",
            "root": str(root),
            "size": SIZE,
            "val_fraction": 0,
            "test_fraction": 0,
        }
    )
    load = time.perf_counter() - t0
    batches = TensorBatches(d.train, BATCH, seed=0, drop_last=False)
    times = []
    for epoch in range(epochs):
        n = 0
        for i in range(len(batches)):
            x, _ = batches.get(epoch * len(batches) + i)
            n += len(x)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        t0 = t1
    return times, load, d.decoded


def training_images_per_second(steps: int = 20) -> float:
    """The convnet quick recipe's training speed on Fashion-MNIST here (steps after 3 of warm-up)."""
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as out:
        run = get_recipe("convnet-fashion-quick").run_config(
            {
                "trainer.out_dir": out,
                "trainer.progress": "false",
                "trainer.loggers": "csv",
                "data.limit_train": "4096",
                "trainer.max_steps": str(steps + 3),
            }
        )
        trainer = Trainer(run)
        trainer.model.train()
        for _ in range(3):
            trainer.train_step()
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        return steps * trainer.task.batch_size / (time.perf_counter() - t0)


@dataclass
class DataBenchOptions:
    n: int = 10000  # image files written (half PNG, half JPEG) from Fashion-MNIST
    epochs: int = 3  # epochs read by each side (at least 2: the first and the steady state)
    workers: int = 2  # the baseline DataLoader's worker processes


def bench_data(options: DataBenchOptions) -> list[str]:
    n, epochs, workers = options.n, max(2, options.epochs), options.workers
    lines = [
        f"CPU: {cpu_name()} ({os.cpu_count()} cores); {n:,} Fashion-MNIST images as files (half PNG, half "
        f"JPEG), decoded to {SIZE}×{SIZE} grey, batches of {BATCH}, {epochs} epochs"
    ]
    with tempfile.TemporaryDirectory(prefix="neuratlas-bench-data-") as tmp:
        root = Path(tmp) / "images"
        write_folder(root, n)
        old = os.environ.get("NEURATLAS_CACHE")
        os.environ["NEURATLAS_CACHE"] = str(Path(tmp) / "cache")  # an empty decode cache: a cold first run
        try:
            base = baseline_epochs(root, epochs, workers)
            ours, load, decoded = neuratlas_epochs(root, epochs)
            later, later_load, later_decoded = neuratlas_epochs(root, 1)
        finally:
            if old is None:
                os.environ.pop("NEURATLAS_CACHE", None)
            else:
                os.environ["NEURATLAS_CACHE"] = old
    train_ips = training_images_per_second()
    steady_base, steady_ours = float(np.mean(base[1:])), float(np.mean(ours[1:]))
    first = base[0] / ours[0]
    steady = steady_base / steady_ours
    loader_ips = n / steady_ours
    lines += [
        f"baseline (PIL in DataLoader, {workers} workers): first epoch {base[0]:.2f} s, later epochs "
        f"{steady_base:.3f} s ({n / steady_base:,.0f} images/s)",
        f"Neuratlas image-folder: first epoch {ours[0]:.2f} s ({load:.2f} s of it hashing and decoding "
        f"{decoded:,} files once), later epochs {steady_ours:.4f} s ({loader_ips:,.0f} images/s)",
        f"a later run: load {later_load:.2f} s ({later_decoded} files decoded), first epoch {later[0]:.2f} s "
        f"({base[0] / later[0]:.1f}× the baseline's first epoch)",
        f"convnet-fashion-quick trains at {train_ips:,.0f} images/s here: the loader's steady state is "
        f"{loader_ips / train_ips:,.0f}× that",
        race_line(
            "data: first epoch",
            "PIL + DataLoader(2 workers)",
            "image-folder (cold cache)",
            f"{first:.2f}×",
            "≥1×",
            first >= 1,
            "neuratlas bench data",
        ),
        race_line(
            "data: later epochs",
            "PIL + DataLoader(2 workers)",
            "image-folder",
            f"{steady:,.0f}×",
            "≥10×",
            steady >= 10,
            "neuratlas bench data",
        ),
        race_line(
            "data: loader vs training",
            "convnet quick training images/s",
            "image-folder steady images/s",
            f"{loader_ips / train_ips:,.0f}×",
            "≥3×",
            loader_ips >= 3 * train_ips,
            "neuratlas bench data",
        ),
    ]
    return lines


BENCHMARKS.add(
    "data",
    bench_data,
    DataBenchOptions,
    description="an image folder (10,000 files) read by image-folder vs PIL in a "
    "DataLoader with 2 workers: first epoch, later epochs, loader vs training speed",
)
