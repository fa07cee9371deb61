"""A user's labelled images for classification: a folder per class, or a CSV of ``path,label``.

``image-folder`` reads ``ROOT/CLASS/**/*.png|jpg|...`` (class names sorted, as torchvision's ImageFolder
does), or ``ROOT/train/CLASS/...`` with optional ``ROOT/val`` and ``ROOT/test`` given splits, or — with no
class folders at all — an unlabelled folder for self-supervised pretraining. ``image-csv`` reads a CSV with
a path column and a label column (and an optional split column); paths are relative to the CSV.

Splits not given are carved by fraction, stratified by class, from ``split_seed`` (a recipe's fixed counts,
such as Fashion-MNIST's 5,000 validation images, do not apply to a folder). The result is the same
:class:`ImageSplits` Fashion-MNIST gives, so every image recipe, transfer and the self-supervised recipes
take it unchanged; the model's channels and classes follow from it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from neuratlas.data.image_files import (
    Header,
    ImageStore,
    Resize,
    ResizePolicy,
    channel_stats,
    choose_policy,
    list_bad,
    list_images,
    mode_counts,
    need_file,
    need_folder,
    size_range,
    stratified_split,
    warn,
)
from neuratlas.data.images import ImageDataConfig, ImageSplits
from neuratlas.data.registry import register_dataset
from neuratlas.errors import NeuratlasError

SPLITS = ("train", "val", "test")
UNLABELLED = "(unlabelled)"


@dataclass
class OwnImagesConfig(ImageDataConfig):
    """Fashion-MNIST's batching and augmentation options, plus where the files are and how to read them."""

    val_fraction: float = 0.1  # carved per class when no val split is given
    test_fraction: float = 0.1
    val_size: int | None = None  # a recipe's fixed count (Fashion-MNIST's 5,000): not used for own files
    size: int | None = None  # decode every image to size×size; None: keep one shared size ≤ 128, else 64
    resize: Resize = "crop"  # crop: shorter side to size, centre crop | squash | pad: fit inside, black bars
    channels: int | None = None  # 1 or 3; None: 1 when every image is grey
    on_bad: Literal["skip", "error"] = "skip"  # unreadable images: skipped and listed, or the first one stops
    workers: int = 0  # reading processes for many new files (0: one per CPU from 4 CPUs, else one)


@dataclass
class ImageFolderConfig(OwnImagesConfig):
    root: str = ""


@dataclass
class ImageCSVConfig(OwnImagesConfig):
    path: str = ""  # the CSV file
    path_column: str = "path"
    label_column: str = "label"
    split_column: str = "split"  # optional: train/val/test per row (rows without it are carved)


@dataclass
class Listing:
    """What was found before decoding: files with their label and (when given) split."""

    where: str
    files: list[Path]
    labels: list[str]
    splits: list[str]  # "" where the split is to be carved
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    layout: str = ""
    blobs: list[bytes | None] | None = None  # the images' bytes when they are not files (Hugging Face)


@dataclass
class OwnImageSplits(ImageSplits):
    """:class:`ImageSplits` plus what ``neuratlas data inspect`` and the start-of-training line report."""

    summary: str = ""
    bad: list[tuple[Path, str]] = field(default_factory=list)
    headers: list[Header] = field(default_factory=list)
    layout: str = ""
    files: dict[str, list[Path]] = field(default_factory=dict)  # per split, aligned with its tensors
    decoded: int = 0

    def report(self):
        from neuratlas.data.inspect import classification_report

        return classification_report(self)


# --- listing ------------------------------------------------------------------------------------------------
def scan_classes(folder: Path, where: str) -> tuple[list[Path], list[str], list[str]]:
    """(files, labels, empty class folders) of ``folder/CLASS/**``; loose images directly in ``folder`` are
    ignored with a warning."""
    files, labels, empty = [], [], []
    loose = 0
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found = list_images(entry)
            if not found:
                empty.append(entry.name)
            files += found
            labels += [entry.name] * len(found)
        elif entry.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"):
            loose += 1
    for name in empty:
        warn(f"{folder / name}: class folder with no images; class {name!r} left out")
    if loose and files:
        warn(f"{folder}: {loose} images lie directly in {where} outside any class folder; left out")
    return files, labels, empty


def list_folder(root: str) -> Listing:
    base = need_folder(root, "image folder")
    given = [s for s in SPLITS if (base / s).is_dir()]
    if "train" in given:
        files, labels, splits = [], [], []
        for s in given:
            f, lab, _ = scan_classes(base / s, f"{s}/")
            files, labels, splits = files + f, labels + lab, splits + [s] * len(f)
        if not any(sp == "train" for sp in splits):
            raise NeuratlasError(f"{base / 'train'}: no images in class folders")
        known = set(lab for lab, sp in zip(labels, splits) if sp == "train")
        for lab, sp, f in zip(labels, splits, files):
            if lab not in known:
                raise NeuratlasError(
                    f"{f.parent}: class {lab!r} of the {sp} split has no training images in {base / 'train'}"
                )
        carved = [s for s in ("val", "test") if s not in given]
        return Listing(
            str(base),
            files,
            labels,
            splits,
            layout=f"given splits {'/'.join(given)}" + (f", {'/'.join(carved)} carved from train" if carved else ""),
        )
    files, labels, _ = scan_classes(base, "the root")
    if not files:
        files = [
            p
            for p in sorted(base.iterdir())
            if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
        ]
        if not files:
            raise NeuratlasError(
                f"{base}: no images found (expected ROOT/CLASS/*.png|jpg|..., ROOT/train/CLASS/..."
                f", or images directly in ROOT for unlabelled data)"
            )
        return Listing(str(base), files, [UNLABELLED] * len(files), [""] * len(files), layout="unlabelled")
    return Listing(str(base), files, labels, [""] * len(files), layout="class folders")


def list_csv(cfg: ImageCSVConfig) -> Listing:
    path = need_file(cfg.path, "CSV file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise NeuratlasError(f"{path}: not a readable CSV file ({e})") from None
    missing = [c for c in (cfg.path_column, cfg.label_column) if c not in columns]
    if missing:
        raise NeuratlasError(
            f"{path}: no column {' or '.join(map(repr, missing))} (columns: "
            f"{', '.join(columns) or 'none'}); name them with --data.path_column / "
            f"--data.label_column"
        )
    has_split = cfg.split_column in columns
    files, labels, splits, skipped = [], [], [], []
    for i, row in enumerate(rows, start=2):  # line numbers as an editor shows them (header is line 1)
        rel, label = (row.get(cfg.path_column) or "").strip(), (row.get(cfg.label_column) or "").strip()
        if not rel or not label:
            skipped.append((path, f"line {i}: empty {cfg.path_column if not rel else cfg.label_column}"))
            continue
        split = (row.get(cfg.split_column) or "").strip().lower() if has_split else ""
        if split and split not in SPLITS:
            raise NeuratlasError(f"{path}: line {i}: split {split!r} is not train, val or test")
        p = Path(rel).expanduser()
        files.append(p if p.is_absolute() else path.parent / p)
        labels.append(label)
        splits.append(split)
    if not files:
        raise NeuratlasError(f"{path}: no rows with a path and a label")
    if any(splits):
        known = {lab for lab, s in zip(labels, splits) if s == "train"}
        for lab, s, f in zip(labels, splits, files):
            if s in ("val", "test") and lab not in known:
                raise NeuratlasError(f"{path}: label {lab!r} of {f} ({s}) has no training rows")
    return Listing(
        str(path), files, labels, splits, skipped, layout="CSV" + (" with a split column" if any(splits) else "")
    )


# --- building the splits ------------------------------------------------------------------------------------
def build_splits(listing: Listing, cfg: OwnImagesConfig, name: str) -> OwnImageSplits:
    store = ImageStore(listing.where + f"::{name}", workers=cfg.workers, size_hint=(cfg.size, cfg.resize))
    blobs = listing.blobs
    headers = store.headers(listing.files) if blobs is None else store.headers_of_bytes(blobs)
    if all(h.bad for h in headers):
        first = next(iter(zip(listing.files, headers)))
        raise NeuratlasError(
            f"{listing.where}: none of the {len(headers)} images is readable (e.g. {first[0]} {first[1].bad})"
        )
    policy: ResizePolicy = choose_policy(headers, cfg.size, cfg.channels, cfg.resize)
    dec = store.decode(listing.files, headers, policy, cfg.on_bad, blobs)
    bad = listing.skipped + dec.bad
    if bad:
        warn(f"{listing.where}: " + list_bad(bad, "files") + " (`neuratlas data inspect` lists them all)")
    files = [listing.files[i] for i in dec.good]
    names = [listing.labels[i] for i in dec.good]
    given = [listing.splits[i] for i in dec.good]
    classes = sorted(set(n for n, s in zip(names, given) if s in ("", "train")))
    index = {c: k for k, c in enumerate(classes)}
    y = np.array([index.get(n, -1) for n in names], dtype=np.int64)
    pool = np.flatnonzero(np.array([s in ("", "train") for s in given]))
    no_val = not any(s == "val" for s in given)
    no_test = not any(s == "test" for s in given)
    tr, va, te = stratified_split(
        y[pool], cfg.val_fraction if no_val else 0.0, cfg.test_fraction if no_test else 0.0, cfg.split_seed
    )
    parts = {
        "train": pool[tr],
        "val": pool[va] if no_val else np.flatnonzero(np.array(given) == "val"),
        "test": pool[te] if no_test else np.flatnonzero(np.array(given) == "test"),
    }
    x = torch.from_numpy(dec.images)
    yt = torch.from_numpy(y)

    def take(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(idx)
        return x[t], yt[t]

    train = take(parts["train"])
    if cfg.limit_train:
        train = (train[0][: cfg.limit_train], train[1][: cfg.limit_train])
    if len(train[0]) == 0:
        raise NeuratlasError(f"{listing.where}: no training images left")
    mean, std = channel_stats(train[0].numpy())
    counts = {s: len(parts[s]) for s in SPLITS}
    carved = [s for s, n in (("val", no_val), ("test", no_test)) if n]
    fractions = "/".join(f"{cfg.val_fraction if s == 'val' else cfg.test_fraction:.0%}" for s in carved)
    how = f"{'/'.join(carved)} carved {fractions} per class, seed {cfg.split_seed}" if carved else "splits given"
    labelled = classes != [UNLABELLED]
    summary = (
        f"{name} {listing.where}: "
        + (f"{len(classes)} classes, " if labelled else "unlabelled, ")
        + f"{counts['train']:,}/{counts['val']:,}/{counts['test']:,} train/val/test ({how}), "
        + f"{policy.describe()} from {size_range(headers)} ({'/'.join(mode_counts(headers))})"
        + (f", {len(bad)} files skipped" if bad else "")
        + (f", {dec.decoded:,} decoded" if dec.decoded else ", all from the decode cache")
    )
    return OwnImageSplits(
        train=train,
        val=take(parts["val"]),
        test=take(parts["test"]),
        classes=classes,
        mean=mean,
        std=std,
        source=listing.where,
        cfg=cfg,
        summary=summary,
        bad=bad,
        headers=headers,
        layout=listing.layout,
        files={s: [files[i] for i in parts[s]] for s in SPLITS},
        decoded=dec.decoded,
    )


def load_image_folder(cfg: ImageFolderConfig) -> OwnImageSplits:
    return build_splits(list_folder(cfg.root), cfg, "image-folder")


def load_image_csv(cfg: ImageCSVConfig) -> OwnImageSplits:
    return build_splits(list_csv(cfg), cfg, "image-csv")


register_dataset(
    "image-folder",
    load_image_folder,
    ImageFolderConfig,
    "your images: ROOT/CLASS/*.png|jpg|... (or ROOT/train|val|test/CLASS/...; unlabelled: images "
    "in ROOT); --data.root PATH",
    user_files=True,
)
register_dataset(
    "image-csv",
    load_image_csv,
    ImageCSVConfig,
    "your images listed in a CSV of path,label[,split] (paths relative to the CSV); --data.path FILE.csv",
    user_files=True,
)
