"""Hugging Face ``datasets`` as image data: a ``save_to_disk`` folder, local Parquet/Arrow/JSONL/CSV files, or
(with a network) a hub name, mapped by naming its columns.

- ``hf-images``: an image column and a label column -> the :class:`ImageSplits` of ``image-folder``
  (classification, transfer, self-supervised recipes);
- ``hf-image-text``: an image column and a caption column -> the pairs of ``image-text-csv`` (CLIP);
- ``hf-segmentation``: an image column and a mask column -> the pairs of ``segmentation-folder``.

The image column may hold images (the ``Image`` feature: bytes or paths) or path strings (relative to the
data files). Images go through the same content-hashed decode cache as image folders. A ``DatasetDict``'s
``train`` / ``validation`` (or ``val``) / ``test`` splits are used as given; a single split is carved.
``datasets`` is an optional extra (``pip install datasets``); a hub name offline fails with one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuratlas.data.image_folder import Listing, OwnImagesConfig, OwnImageSplits, build_splits
from neuratlas.data.image_text_csv import ImageTextCSVConfig, OwnImageTextSplits, pairs_to_splits
from neuratlas.data.inspect import register_inspector
from neuratlas.data.medical import SegmentationData
from neuratlas.data.registry import register_dataset
from neuratlas.data.segmentation_folder import SegmentationFolderConfig, build_segmentation, segmentation_report
from neuratlas.errors import NeuratlasError

FILE_FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".csv": "csv"}
SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val", "test": "test"}


@dataclass
class HFImagesConfig(OwnImagesConfig):
    path: str = ""  # a save_to_disk folder, a data file or folder of them, or a hub name (with a network)
    image_column: str = "image"
    label_column: str = "label"


@dataclass
class HFSegmentationConfig(SegmentationFolderConfig):
    """``segmentation-folder``'s options; ``path`` is a save_to_disk folder, data files or a hub name."""

    path: str = ""
    image_column: str = "image"
    mask_column: str = "mask"  # label maps: class ids, a palette, colours, or instance ids


@dataclass
class HFImageTextConfig(ImageTextCSVConfig):
    """``image-text-csv``'s options; ``path`` is a save_to_disk folder, data files or a hub name."""


def _datasets():
    try:
        import datasets
    except ImportError:
        raise NeuratlasError(
            "Hugging Face data sets need the `datasets` package: `pip install datasets` (or "
            "`pip install neuratlas[hf]`)"
        ) from None
    return datasets


def open_hf(path: str) -> tuple[dict[str, Any], Path | None, str]:
    """{split: Dataset}, the folder relative image paths are resolved against, and a description."""
    if not path:
        raise NeuratlasError("no data set given: set --data.path (a save_to_disk folder, data files or a hub name)")
    datasets = _datasets()
    p = Path(path).expanduser()
    try:
        if p.is_dir() and any((p / f).is_file() for f in ("dataset_dict.json", "state.json", "dataset_info.json")):
            ds = datasets.load_from_disk(str(p))
            base, how = p, "save_to_disk folder"
        elif p.exists():
            files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.suffix.lower() in FILE_FORMATS)
            kinds = {FILE_FORMATS.get(f.suffix.lower()) for f in files}
            if not files or None in kinds or len(kinds) != 1:
                raise NeuratlasError(
                    f"{p}: expected a save_to_disk folder or Parquet/Arrow/JSONL/CSV files "
                    f"of one kind, found {', '.join(sorted(f.name for f in files[:5])) or 'none'}"
                )
            kind = kinds.pop()
            by_split: dict[str, list[str]] = {}
            for f in files:  # train-*.parquet, data/validation.jsonl, ...: a split named in the file name
                stem = f.stem.lower().split("-")[0].split(".")[0]
                by_split.setdefault(stem if stem in SPLIT_NAMES else "train", []).append(str(f))
            ds = datasets.load_dataset(kind, data_files=by_split)
            base, how = (p.parent if p.is_file() else p), f"{kind} files"
        else:
            if os.environ.get("NEURATLAS_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
                raise NeuratlasError(
                    f"{path}: no such folder or file, and hub data sets cannot be fetched offline (NEURATLAS_OFFLINE=1)"
                )
            ds = datasets.load_dataset(path)
            base, how = None, "hub"
    except NeuratlasError:
        raise
    except Exception as e:  # datasets/pyarrow raise many types (ConnectionError, DatasetNotFoundError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise NeuratlasError(
            f"{path}: cannot be loaded as a Hugging Face data set ({type(e).__name__}: {first[:200]})"
        ) from None
    splits = dict(ds) if isinstance(ds, datasets.DatasetDict) else {"train": ds}
    return splits, base, how


def _images(ds, column: str, base: Path | None, where: str) -> tuple[list[Path], list[bytes | None]]:
    """(a display path per row, its image bytes or None where the file is to be read from disk)."""
    datasets = _datasets()
    if column not in ds.column_names:
        raise NeuratlasError(
            f"{where}: no column {column!r} (columns: {', '.join(ds.column_names)}); name it with --data.image_column"
        )
    feature = ds.features[column]
    if isinstance(feature, datasets.Image):
        rows = ds.cast_column(column, datasets.Image(decode=False))[column]
        paths, blobs = [], []
        for i, r in enumerate(rows):
            r = r or {}
            if r.get("bytes"):
                paths.append(Path(f"{where}[{i}]" + (f" ({r['path']})" if r.get("path") else "")))
                blobs.append(r["bytes"])
            else:
                f = Path(r.get("path") or "")
                f = f if f.is_absolute() or base is None else base / f
                paths.append(f)
                blobs.append(f.read_bytes() if f.is_file() else None)
        return paths, blobs
    values = ds[column]
    if not all(isinstance(v, str) for v in values):
        raise NeuratlasError(f"{where}: column {column!r} holds {type(values[0]).__name__}, not images or paths")
    paths = [Path(v) if Path(v).is_absolute() or base is None else base / v for v in values]
    return paths, [f.read_bytes() if f.is_file() else None for f in paths]


def _labels(ds, column: str, where: str) -> list[str]:
    datasets = _datasets()
    if column not in ds.column_names:
        raise NeuratlasError(
            f"{where}: no column {column!r} (columns: {', '.join(ds.column_names)}); name it with --data.label_column"
        )
    feature = ds.features[column]
    values = ds[column]
    if isinstance(feature, datasets.ClassLabel):
        return [feature.int2str(v) for v in values]
    return [str(v) for v in values]


def load_hf_images(cfg: HFImagesConfig) -> OwnImageSplits:
    splits, base, how = open_hf(cfg.path)
    files, labels, given, blobs = [], [], [], []
    for name, ds in splits.items():
        where = f"{cfg.path} [{name}]"
        f, b = _images(ds, cfg.image_column, base, where)
        files += f
        blobs += b
        labels += _labels(ds, cfg.label_column, where)
        given += [SPLIT_NAMES.get(name, "train") if len(splits) > 1 else ""] * len(f)
    if any(given):
        known = {lab for lab, s in zip(labels, given) if s == "train"}
        for lab, s in zip(labels, given):
            if s in ("val", "test") and lab not in known:
                raise NeuratlasError(f"{cfg.path}: label {lab!r} of the {s} split has no training rows")
    listing = Listing(
        str(cfg.path), files, labels, given, layout=f"Hugging Face {how}, splits " + "/".join(splits), blobs=blobs
    )
    return build_splits(listing, cfg, "hf-images")


def load_hf_image_text(cfg: HFImageTextConfig) -> OwnImageTextSplits:
    splits, base, how = open_hf(cfg.path)
    files, captions, blobs = [], [], []
    for name, ds in splits.items():
        where = f"{cfg.path} [{name}]"
        f, b = _images(ds, cfg.image_column, base, where)
        if cfg.caption_column not in ds.column_names:
            raise NeuratlasError(
                f"{where}: no column {cfg.caption_column!r} (columns: {', '.join(ds.column_names)})"
                f"; name it with --data.caption_column"
            )
        files += f
        blobs += b
        captions += [" ".join(str(c or "").split())[: cfg.max_chars] for c in ds[cfg.caption_column]]
    return pairs_to_splits(Path(cfg.path), files, captions, [], cfg, "hf-image-text", blobs=blobs)


def load_hf_segmentation(cfg: HFSegmentationConfig) -> SegmentationData:
    splits, base, how = open_hf(cfg.path)
    groups: dict[str, list[tuple]] = {}
    bad: list[tuple[Path, str]] = []
    for name, ds in splits.items():
        where = f"{cfg.path} [{name}]"
        images, image_bytes = _images(ds, cfg.image_column, base, where)
        masks, mask_bytes = _images(ds, cfg.mask_column, base, where)
        split = SPLIT_NAMES.get(name, "train") if len(splits) > 1 else "all"
        pairs = groups.setdefault(split, [])
        for i, (im, ib, m, mb) in enumerate(zip(images, image_bytes, masks, mask_bytes)):
            if ib is None or mb is None:
                bad.append((im if ib is None else m, "missing"))
            else:
                pairs.append(
                    (ib, mb, Path(f"{where}[{i}] {cfg.image_column}"), Path(f"{where}[{i}] {cfg.mask_column}"))
                )
    if len(splits) > 1 and "train" not in groups:
        raise NeuratlasError(f"{cfg.path}: splits {', '.join(splits)} but none is train")
    return build_segmentation(groups, bad, cfg, f"{cfg.path} ({how})", given=len(splits) > 1)


register_dataset(
    "hf-images",
    load_hf_images,
    HFImagesConfig,
    "a Hugging Face data set of images + labels (save_to_disk folder, Parquet/Arrow/JSONL/CSV files, "
    "or a hub name online); --data.path P --data.image_column --data.label_column",
    user_files=True,
)
register_dataset(
    "hf-segmentation",
    load_hf_segmentation,
    HFSegmentationConfig,
    "a Hugging Face data set of images + label-map masks for segmentation; --data.path P "
    "--data.image_column --data.mask_column",
    user_files=True,
)
register_dataset(
    "hf-image-text",
    load_hf_image_text,
    HFImageTextConfig,
    "a Hugging Face data set of images + captions for CLIP; --data.path P --data.image_column --data.caption_column",
    user_files=True,
)
register_inspector("hf-segmentation", segmentation_report)
