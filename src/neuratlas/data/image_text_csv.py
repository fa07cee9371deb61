"""A user's image–caption pairs for CLIP: a CSV with an image path column and a caption column.

Each distinct caption is a *group* (images sharing a caption are positives of each other); held-out images
are carved by fraction with a seed, and zero-shot accuracy on them is retrieving each image's own caption
among the split's captions. Images go through the same decode cache as the classification folders; the
result is the :class:`ImageTextSplits` the bundled caption data sets give, so every CLIP recipe takes it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from neuratlas.data.image_files import (
    ImageStore,
    Resize,
    channel_stats,
    choose_policy,
    list_bad,
    mode_counts,
    need_file,
    size_range,
    warn,
)
from neuratlas.data.image_text import ImageTextConfig, ImageTextSplits, caption_table
from neuratlas.data.inspect import DataReport, contact_sheet
from neuratlas.data.registry import register_dataset
from neuratlas.errors import NeuratlasError


@dataclass
class ImageTextCSVConfig(ImageTextConfig):
    """The bundled caption data sets' batching and augmentation options, plus where the pairs are."""

    path: str = ""  # the CSV file; image paths in it are relative to it
    image_column: str = "image"
    caption_column: str = "caption"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    size: int | None = None  # decode every image to size×size (None: a shared size ≤ 128 kept, else 64)
    resize: Resize = "crop"
    channels: int | None = None
    max_chars: int = 120  # captions are cut to this many characters (the text encoder's context)
    on_bad: Literal["skip", "error"] = "skip"
    workers: int = 0


@dataclass
class OwnImageTextSplits(ImageTextSplits):
    summary: str = ""
    bad: list | None = None

    def report(self) -> DataReport:
        return image_text_report(self)


def read_pairs(cfg: ImageTextCSVConfig) -> tuple[Path, list[Path], list[str], list[tuple[Path, str]]]:
    path = need_file(cfg.path, "CSV file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise NeuratlasError(f"{path}: not a readable CSV file ({e})") from None
    missing = [c for c in (cfg.image_column, cfg.caption_column) if c not in columns]
    if missing:
        raise NeuratlasError(
            f"{path}: no column {' or '.join(map(repr, missing))} (columns: "
            f"{', '.join(columns) or 'none'}); name them with --data.image_column / "
            f"--data.caption_column"
        )
    files, captions, skipped = [], [], []
    for i, row in enumerate(rows, start=2):
        rel, cap = (row.get(cfg.image_column) or "").strip(), " ".join((row.get(cfg.caption_column) or "").split())
        if not rel or not cap:
            skipped.append((path, f"line {i}: empty {cfg.image_column if not rel else cfg.caption_column}"))
            continue
        p = Path(rel).expanduser()
        files.append(p if p.is_absolute() else path.parent / p)
        captions.append(cap[: cfg.max_chars])
    if not files:
        raise NeuratlasError(f"{path}: no rows with an image and a caption")
    return path, files, captions, skipped


def load_image_text_csv(cfg: ImageTextCSVConfig) -> OwnImageTextSplits:
    path, files, captions, skipped = read_pairs(cfg)
    return pairs_to_splits(path, files, captions, skipped, cfg, "image-text-csv")


def pairs_to_splits(
    path: Path,
    files: list[Path],
    captions: list[str],
    skipped: list[tuple[Path, str]],
    cfg: ImageTextCSVConfig,
    name: str,
    blobs: list[bytes | None] | None = None,
) -> OwnImageTextSplits:
    """Decode (through the cache), group by caption, carve the held-out pairs."""
    store = ImageStore(f"{path}::{name}", workers=cfg.workers, size_hint=(cfg.size, cfg.resize))
    headers = store.headers(files) if blobs is None else store.headers_of_bytes(blobs)
    if all(h.bad for h in headers):
        raise NeuratlasError(f"{path}: none of its {len(files)} images is readable (e.g. {files[0]}: {headers[0].bad})")
    policy = choose_policy(headers, cfg.size, cfg.channels, cfg.resize)
    dec = store.decode(files, headers, policy, cfg.on_bad, blobs)
    bad = skipped + dec.bad
    if bad:
        warn(f"{path}: " + list_bad(bad, "files") + " (`neuratlas data inspect` lists them all)")
    caps = [captions[i] for i in dec.good]
    names = sorted(set(caps))
    group = torch.from_numpy(np.searchsorted(np.array(names), np.array(caps)))
    n = len(caps)
    perm = np.random.default_rng(cfg.split_seed).permutation(n)
    n_val = max(1, round(n * cfg.val_fraction)) if cfg.val_fraction > 0 else 0
    n_test = max(1, round(n * cfg.test_fraction)) if cfg.test_fraction > 0 else 0
    if n_val + n_test >= n:
        raise NeuratlasError(f"{path}: {n} readable pairs are too few to carve val and test from")
    idx = {
        "val": np.sort(perm[:n_val]),
        "test": np.sort(perm[n_val : n_val + n_test]),
        "train": np.sort(perm[n_val + n_test :]),
    }
    x = torch.from_numpy(dec.images)

    def take(s: str) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(idx[s])
        return x[t], group[t]

    train = take("train")
    if cfg.limit_train:
        train = (train[0][: cfg.limit_train], train[1][: cfg.limit_train])
    tokens, tok = caption_table(names, ["{}"])
    mean, std = channel_stats(train[0].numpy())
    summary = (
        f"{name} {path}: {n:,} pairs, {len(names):,} distinct captions, "
        f"{len(idx['train']):,}/{n_val:,}/{n_test:,} train/val/test (carved, seed {cfg.split_seed}), "
        f"{policy.describe()} from {size_range(headers)} ({'/'.join(mode_counts(headers))})"
        + (f", {len(bad)} files skipped" if bad else "")
        + (f", {dec.decoded:,} decoded" if dec.decoded else ", all from the decode cache")
    )
    return OwnImageTextSplits(
        train=train,
        val=take("val"),
        test=take("test"),
        names=names,
        templates=["{}"],
        tokens=tokens,
        tokenizer=tok,
        mean=mean,
        std=std,
        source=str(path),
        cfg=cfg,
        captions_note=f"{len(names):,} distinct captions from {path.name}",
        summary=summary,
        bad=bad,
    )


def image_text_report(data: OwnImageTextSplits) -> DataReport:
    lengths = np.array([len(n) for n in data.names])
    per = torch.bincount(torch.cat([data.train[1], data.val[1], data.test[1]]), minlength=len(data.names))
    lines = [
        f"caption length (characters): min {lengths.min()}, median {int(np.median(lengths))}, max "
        f"{lengths.max()}; context {data.tokens.shape[-1]} tokens",
        f"images per caption: min {int(per.min())}, median {int(per.float().median())}, max {int(per.max())}",
        *(f"  e.g. {n!r}" for n in data.names[:3]),
    ]

    def sheet(path: Path) -> Path:
        x, g = data.train
        rows = [(data.names[int(g[i])][:40], x[i : i + 1]) for i in range(min(12, len(x)))]
        return contact_sheet(rows, path, title=data.summary.split(":")[0], per_row=1)

    return DataReport(data.summary, lines, [f"{p}: {w}" for p, w in (data.bad or [])], sheet)


register_dataset(
    "image-text-csv",
    load_image_text_csv,
    ImageTextCSVConfig,
    "your image–caption pairs for CLIP: a CSV of image path, caption; --data.path FILE.csv",
    user_files=True,
)
