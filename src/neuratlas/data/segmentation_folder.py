"""A user's segmentation data: ``ROOT/images/*`` and ``ROOT/masks/*`` paired by file stem.

Masks are label maps: grey or palette PNGs whose pixel values (palette indices for a palette PNG, as
labelling tools and Pascal VOC write them) are class ids, or RGB masks whose distinct colours are the
classes (black first). With ``instances=true`` mask values are instance ids (0 background), as in the
nuclei data set: the class is "object", and ``boundary=true`` adds the boundary class that keeps touching
objects apart; instance F1 is then reported. ``ROOT/train|val|test/images|masks`` gives the splits;
otherwise val/test images are carved by fraction with a seed.

Images are read at their own size (or resized to ``size``, masks by nearest neighbour) and padded with
zeros to a multiple of 32 and to at least ``crop_size``, so every U-Net in the registry takes them; the result
is the :class:`SegmentationData` the bundled data sets give.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from neuratlas.data.guards import open_image
from neuratlas.data.image_files import (
    GREY_MODES,
    ResizePolicy,
    decode,
    is_image,
    list_bad,
    need_folder,
    read_label_map,
    warn,
    why_unreadable,
)
from neuratlas.data.inspect import register_inspector
from neuratlas.data.medical import SegmentationData, SegmentationSplit, boundary_classes, normalize_percentile, relabel
from neuratlas.data.registry import register_dataset
from neuratlas.errors import NeuratlasError

SPLITS = ("train", "val", "test")
MASK_EXTS = (".png", ".bmp", ".tif", ".tiff", ".gif")  # lossless only: a JPEG mask's edges are not labels


@dataclass
class SegmentationFolderConfig:
    root: str = ""
    crop_size: int = 128  # random training crops (a multiple of 32); 0: whole images (one shared size)
    batch_size: int = 8
    size: int | None = None  # resize every pair to size×size first (None: keep each image's size)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    channels: int | None = None  # 1 or 3; None: 1 when every image is grey
    normalize: Literal["max255", "percentile"] = "max255"  # percentile: microscopy-style 1/99.8% stretch
    classes: str = ""  # comma-separated class names in id order (default: the ids, "background" for 0)
    instances: bool = False  # mask values are instance ids (0 background): one "object" class + instance F1
    boundary: bool = False  # with instances: interior / boundary classes (touching objects kept apart)
    intensity: float = 0.2  # random gain/offset augmentation strength
    flips: bool = True
    rot90: bool = True
    context: int = 0  # 2.5-D neighbouring slices: volumes only, not image folders
    on_bad: Literal["skip", "error"] = "skip"

    def __post_init__(self) -> None:
        if self.crop_size % 32 or self.crop_size < 0:
            raise ValueError("crop_size must be 0 or a positive multiple of 32")
        if self.context:
            raise ValueError("context (neighbouring slices as channels) needs a volume; an image folder has none")
        if self.boundary:
            self.instances = True


def _pairs(folder: Path) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """(image, mask) pairs by stem, and the files left without a partner."""
    images_dir, masks_dir = (
        need_folder(folder / "images", "images folder"),
        need_folder(folder / "masks", "masks folder"),
    )
    images = {p.stem: p for p in sorted(images_dir.rglob("*")) if is_image(p)}
    masks = {p.stem: p for p in sorted(masks_dir.rglob("*")) if p.suffix.lower() in MASK_EXTS}
    lone = [(images[s], "no mask with this stem in masks/") for s in sorted(set(images) - set(masks))]
    lone += [(masks[s], "no image with this stem in images/") for s in sorted(set(masks) - set(images))]
    if not images:
        raise NeuratlasError(f"{images_dir}: no images")
    return [(images[s], masks[s]) for s in sorted(set(images) & set(masks))], lone


def _carve(n: int, cfg: SegmentationFolderConfig) -> dict[str, np.ndarray]:
    perm = np.random.default_rng(cfg.split_seed).permutation(n)
    n_val = max(1, round(n * cfg.val_fraction)) if n >= 3 and cfg.val_fraction > 0 else 0
    n_test = max(1, round(n * cfg.test_fraction)) if n >= 3 and cfg.test_fraction > 0 else 0
    if n_val + n_test >= n:
        raise NeuratlasError(f"{cfg.root}: {n} image/mask pairs are too few to carve val and test from")
    return {
        "val": np.sort(perm[:n_val]),
        "test": np.sort(perm[n_val : n_val + n_test]),
        "train": np.sort(perm[n_val + n_test :]),
    }


def _open(source: Path | bytes):
    """A file path, or the bytes of an image held in memory (a Hugging Face column) as a file object."""
    import io

    return io.BytesIO(source) if isinstance(source, bytes) else source


def _read_pair(image: Path | bytes, mask: Path | bytes, cfg: SegmentationFolderConfig, channels: int):
    from PIL import Image

    with open_image(_open(image)) as im:
        w, h = im.size
    m, mode = read_label_map(_open(mask))
    if m.shape != (h, w):
        raise ValueError(f"the mask's size {m.shape[1]}×{m.shape[0]} differs from its image's {w}×{h}")
    side = cfg.size
    x = decode(_open(image), ResizePolicy(side or h, side or w, channels, "squash"))
    if side and (h, w) != (side, side):
        m = np.asarray(Image.fromarray(m.astype(np.int32)).resize((side, side), Image.NEAREST)).astype(np.int64)
    return x, m, mode


def load_segmentation_folder(cfg: SegmentationFolderConfig) -> SegmentationData:
    root = need_folder(cfg.root, "segmentation folder")
    given = [s for s in SPLITS if (root / s / "images").is_dir()]
    groups: dict[str, list[tuple[Path, Path]]] = {}
    bad: list[tuple[Path, str]] = []
    if given:
        if "train" not in given:
            raise NeuratlasError(f"{root}: split folders found ({', '.join(given)}) but no train/images")
        for s in given:
            groups[s], lone = _pairs(root / s)
            bad += lone
    else:
        groups["all"], bad = _pairs(root)
    named = {s: [(i, m, i, m) for i, m in pairs] for s, pairs in groups.items()}
    return build_segmentation(named, bad, cfg, root, bool(given))


def build_segmentation(
    groups: dict[str, list[tuple]],
    bad: list[tuple[Path, str]],
    cfg: SegmentationFolderConfig,
    root: Path | str,
    given: bool,
) -> SegmentationData:
    """Pairs (image source, mask source, image name, mask name) per split ("all": to be carved) -> the data.
    Sources are paths or bytes; names are what problems are reported under."""
    every = [p for pairs in groups.values() for p in pairs]
    if cfg.channels is None:
        modes = []
        for img, *_ in every:
            try:
                with open_image(_open(img)) as im:
                    modes.append(im.mode)
            except Exception:  # reported when the pair is read
                pass
        channels = 1 if all(m in GREY_MODES for m in modes) else 3
    else:
        channels = cfg.channels
    read: dict[str, list] = {}
    for s, pairs in groups.items():
        read[s] = []
        for img, mask, img_name, mask_name in pairs:
            try:
                read[s].append((img_name, *_read_pair(img, mask, cfg, channels)))
            except ValueError as e:
                if "differs from its image" in str(e):
                    bad.append((mask_name, str(e)))
                else:
                    bad.append((img_name, why_unreadable(e)))
            except Exception as e:  # Pillow: many types for a broken file
                bad.append((img_name, why_unreadable(e)))
            if bad and cfg.on_bad == "error":
                raise NeuratlasError(f"{bad[-1][0]}: {bad[-1][1]} (--data.on_bad skip leaves such pairs out)")
    if bad:
        warn(f"{root}: " + list_bad(bad, "files") + " (`neuratlas data inspect` lists them all)")
    if "all" in read:
        parts = _carve(len(read["all"]), cfg)
        read = {s: [read["all"][i] for i in parts[s]] for s in SPLITS}
    else:
        for s in ("val", "test"):
            if s not in read:  # carve the missing held-out split from train
                n = len(read["train"])
                perm = np.random.default_rng([cfg.split_seed, SPLITS.index(s)]).permutation(n)
                k = max(1, round(n * (cfg.val_fraction if s == "val" else cfg.test_fraction)))
                read[s] = [read["train"][i] for i in sorted(perm[:k])]
                read["train"] = [read["train"][i] for i in sorted(perm[k:])]
    if not read["train"]:
        raise NeuratlasError(f"{root}: no usable training pairs")

    # class ids ---------------------------------------------------------------------------------------------
    modes = {mode for s in SPLITS for _, _, _, mode in read[s]}
    colour = bool(modes & {"RGB", "RGBA"})
    values = np.unique(np.concatenate([np.unique(m) for s in SPLITS for _, _, m, _ in read[s]]))
    void = None
    if cfg.instances:
        names = ["background", "object"] + (["boundary"] if cfg.boundary else [])
        lut = None
    elif colour:  # each distinct colour a class, black (0) first
        lut = {int(v): k for k, v in enumerate(values)}
        names = ["background" if v == 0 else f"#{int(v):06x}" for v in values]
    else:
        if 255 in values and values[values != 255].max(initial=0) < 64:
            void = 255  # Pascal VOC's "void" outline: counted as background
            values = values[values != 255]
        lut = None
        names = ["background"] + [str(i) for i in range(1, int(values.max(initial=0)) + 1)]
        if len(names) < 2:
            names.append("1")
    if cfg.classes:
        given_names = [c.strip() for c in cfg.classes.split(",")]
        if len(given_names) != len(names):
            raise NeuratlasError(
                f"{root}: --data.classes names {len(given_names)} classes but the masks hold "
                f"{len(names)} ({', '.join(names)})"
            )
        names = given_names

    def to_classes(m: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if cfg.instances:
            inst = relabel(m)
            return (boundary_classes(inst) if cfg.boundary else (inst > 0).astype(np.int64)), inst
        if lut is not None:
            flat = np.searchsorted(values, m)
            return flat.astype(np.int64), None
        if void is not None:
            m = np.where(m == void, 0, m)
        return m, None

    pad_to = 32

    def pad(a: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return torch.nn.functional.pad(a, (0, w - a.shape[-1], 0, h - a.shape[-2]))

    def split(items) -> SegmentationSplit:
        images, masks, instances = [], [], []
        for _, x, m, _ in items:
            c, inst = to_classes(m)
            xf = x.astype(np.float32)
            xf = normalize_percentile(xf) if cfg.normalize == "percentile" else xf / 255.0
            h, w = c.shape
            ph = max(-(-h // pad_to) * pad_to, cfg.crop_size)
            pw = max(-(-w // pad_to) * pad_to, cfg.crop_size)
            images.append(pad(torch.from_numpy(np.ascontiguousarray(xf)), ph, pw))
            masks.append(pad(torch.from_numpy(c), ph, pw))
            if inst is not None:
                instances.append(pad(torch.from_numpy(inst), ph, pw))
        return SegmentationSplit(images, masks, instances or None)

    out = {s: split(read[s]) for s in SPLITS}
    if not cfg.crop_size and len({tuple(m.shape) for m in out["train"].masks}) > 1:
        raise NeuratlasError(
            f"{root}: crop_size 0 trains on whole images, which then need one size: give --data.size N or a crop_size"
        )
    counts = {s: len(read[s]) for s in SPLITS}
    sizes = sorted({(x.shape[2], x.shape[1]) for s in SPLITS for _, x, _, _ in read[s]})
    size_text = f"{sizes[0][0]}×{sizes[0][1]}" + (f" – {sizes[-1][0]}×{sizes[-1][1]}" if len(sizes) > 1 else "")
    how = (
        "splits given"
        if given
        else f"val/test carved {cfg.val_fraction:.0%}/{cfg.test_fraction:.0%}, seed {cfg.split_seed}"
    )
    mask_kind = "instance ids" if cfg.instances else ("colours" if colour else "class ids")
    description = (
        f"{root}: {counts['train']}/{counts['val']}/{counts['test']} image/mask pairs ({how}), "
        f"{len(names)} classes from {mask_kind}, {'grey' if channels == 1 else 'RGB'} {size_text}"
        + (", VOC void (255) as background" if void is not None else "")
        + (f", {len(bad)} files skipped" if bad else "")
    )
    data = SegmentationData(
        out["train"],
        out["val"],
        out["test"],
        names,
        cfg.crop_size,
        cfg.batch_size,
        flips=cfg.flips,
        rot90=cfg.rot90,
        intensity=cfg.intensity,
        norm=cfg.normalize,
        source=str(root),
        description=description,
    )
    data.bad = bad  # type: ignore[attr-defined]  # for `data inspect`
    return data


def segmentation_report(data: SegmentationData):
    from neuratlas.data.inspect import DataReport, overlay_sheet

    lines = []
    k = len(data.classes)
    for s in SPLITS:
        split = getattr(data, s)
        px = sum(torch.bincount(m.flatten(), minlength=k)[:k] for m in split.masks) if split.masks else torch.zeros(k)
        share = ", ".join(f"{c} {v / max(px.sum().item(), 1):.1%}" for c, v in zip(data.classes, px.tolist()))
        lines.append(f"{s:5s} {len(split.masks)} pairs; pixels: {share}")
    problems = [f"{p}: {why}" for p, why in getattr(data, "bad", [])]

    def sheet(path: Path) -> Path:
        items = [(img, m) for img, m in zip(data.train.images[:12], data.train.masks[:12])]
        return overlay_sheet(items, path, f"segmentation {data.source}", data.classes)

    return DataReport(f"segmentation {data.description}", lines, problems, sheet)


register_dataset(
    "segmentation-folder",
    load_segmentation_folder,
    SegmentationFolderConfig,
    "your segmentation data: ROOT/images/* + ROOT/masks/* paired by stem (class ids, palette or "
    "colours); --data.root PATH",
    user_files=True,
)
register_inspector("segmentation-folder", segmentation_report)
