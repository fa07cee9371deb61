"""A user's detection data in COCO format: an ``instances.json`` and the folder its ``file_name``s are in.

COCO is what labelling tools export (CVAT, Label Studio, Roboflow, makesense.ai). Boxes ``[x, y, w, h]`` in
pixels become ``xyxy``; categories become classes in id order. Images are split by image (val/test carved
by fraction with a seed unless the JSON's images carry a ``split`` field); training images are tiled like
the DeepForest photos and give the same :class:`TreeData`, so every detection recipe takes it unchanged.

Annotation problems get one ``warning:`` line each kind, naming the JSON and the image: a box with zero
area is dropped, a box reaching outside its image is clipped to it (dropped when nothing is left);
``on_bad=error`` makes either an error instead. Missing and unreadable images are skipped and listed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from neuratlas.data.detection import DetectionImage, TreeData, TreeDataConfig, crop_boxes, tile_origins
from neuratlas.data.guards import open_image
from neuratlas.data.image_files import ResizePolicy, channel_stats, decode, list_bad, need_file, warn, why_unreadable
from neuratlas.data.inspect import DataReport, boxes_sheet, register_inspector
from neuratlas.data.registry import register_dataset
from neuratlas.errors import NeuratlasError

SPLITS = ("train", "val", "test")


@dataclass
class CocoConfig(TreeDataConfig):
    """The DeepForest data set's tiling, cropping and augmentation options, plus where the files are."""

    annotations: str = ""  # the COCO JSON (instances.json)
    root: str = ""  # folder of the images (default: the JSON's folder, then its images/ subfolder)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    on_bad: Literal["skip", "error"] = "skip"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_visible <= 0 or self.min_visible > 1:
            raise ValueError("min_visible must be in (0, 1]")


@dataclass
class CocoData(TreeData):
    summary: str = ""
    problems: list[str] | None = None
    train_images: list[DetectionImage] | None = None


def _load_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NeuratlasError(f"{path}: not a readable COCO JSON file ({e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("images"), list) or not isinstance(d.get("annotations"), list):
        raise NeuratlasError(f"{path}: not a COCO detection file (expected 'images' and 'annotations' lists)")
    return d


def _image_folder(cfg: CocoConfig, ann: Path) -> Path:
    if cfg.root:
        folder = Path(cfg.root).expanduser()
        if not folder.is_dir():
            raise NeuratlasError(f"{folder}: no such image folder")
        return folder
    return ann.parent


def check_coco_boxes(
    boxes: np.ndarray, width: int, height: int, where: str, on_bad: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """xyxy boxes checked against the image: (kept boxes, kept mask, problem lines)."""
    problems = []
    zero = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    outside = ~zero & ((boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height))
    if zero.any():
        i = int(np.flatnonzero(zero)[0])
        problems.append(f"{where}: {int(zero.sum())} box(es) with zero area, e.g. {boxes[i].tolist()} (dropped)")
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        problems.append(
            f"{where}: {int(outside.sum())} box(es) reach outside the {width}×{height} image, e.g. "
            f"{boxes[i].tolist()} (clipped)"
        )
    if problems and on_bad == "error":
        raise NeuratlasError(problems[0].replace(" (dropped)", "").replace(" (clipped)", ""))
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    keep = ~zero & (clipped[:, 2] - clipped[:, 0] >= 1) & (clipped[:, 3] - clipped[:, 1] >= 1)
    return clipped[keep], keep, problems


def load_coco(cfg: CocoConfig) -> CocoData:
    ann_path = need_file(cfg.annotations, "COCO annotation file (--data.annotations)")
    d = _load_json(ann_path)
    folder = _image_folder(cfg, ann_path)
    cats = sorted(d.get("categories") or [], key=lambda c: c.get("id", 0))
    if not cats:
        cats = [{"id": cid, "name": str(cid)} for cid in sorted({a.get("category_id", 1) for a in d["annotations"]})]
    cat_index = {c["id"]: k for k, c in enumerate(cats)}
    classes = [str(c.get("name", c["id"])) for c in cats]
    by_image: dict = {}
    problems: list[str] = []
    for a in d["annotations"]:
        if a.get("iscrowd"):
            continue
        if a.get("category_id") not in cat_index:
            problems.append(f"{ann_path}: annotation {a.get('id')} names unknown category {a.get('category_id')}")
            continue
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            problems.append(f"{ann_path}: annotation {a.get('id')} has no [x, y, w, h] bbox")
            continue
        x, y, w, h = map(float, bbox)
        by_image.setdefault(a.get("image_id"), []).append(([x, y, x + w, y + h], cat_index[a["category_id"]]))
    bad: list[tuple[Path, str]] = []
    items: list[tuple[DetectionImage, str]] = []
    for im in d["images"]:
        path = folder / im.get("file_name", "")
        if not path.is_file() and (folder / "images" / im.get("file_name", "")).is_file():
            path = folder / "images" / im["file_name"]
        if not path.is_file():
            bad.append((path, "missing (named in " + ann_path.name + ")"))
            continue
        try:
            with open_image(path) as pil:
                width, height = pil.size
            image = torch.from_numpy(decode(path, ResizePolicy(height, width, 3, "squash")))
        except Exception as e:  # Pillow raises many types for broken files
            bad.append((path, why_unreadable(e)))
            continue
        if im.get("width") and im.get("height") and (im["width"], im["height"]) != (width, height):
            problems.append(
                f"{path}: {ann_path.name} says {im['width']}×{im['height']}, the file is "
                f"{width}×{height} (the file's size is used)"
            )
        anns = by_image.get(im.get("id"), [])
        boxes = np.array([b for b, _ in anns], dtype=np.float32).reshape(-1, 4)
        labels = np.array([c for _, c in anns], dtype=np.int64)
        kept, keep, issues = check_coco_boxes(boxes, width, height, f"{ann_path} ({im.get('file_name')})", cfg.on_bad)
        problems += issues
        items.append(
            (
                DetectionImage(
                    im.get("file_name", path.name), image, torch.from_numpy(kept), torch.from_numpy(labels[keep])
                ),
                str(im.get("split", "")).lower(),
            )
        )
    if bad and cfg.on_bad == "error":
        raise NeuratlasError(f"{bad[0][0]}: {bad[0][1]} (--data.on_bad skip leaves such images out)")
    if bad:
        warn(f"{ann_path}: " + list_bad(bad, "images") + " (`neuratlas data inspect` lists them all)")
    for p in problems[:5]:
        warn(p)
    if len(problems) > 5:
        warn(f"{ann_path}: {len(problems) - 5} more annotation problems (`neuratlas data inspect` lists them all)")
    if not items:
        raise NeuratlasError(f"{ann_path}: none of its {len(d['images'])} images could be read from {folder}")
    split = _split(items, cfg, ann_path)
    tiles, box_lists, label_lists = [], [], []
    for im in split["train"]:  # DeepForest's tiling (make_tiles), with each box's class kept
        c, h, w = im.image.shape
        for y0 in tile_origins(h, cfg.tile_size, cfg.tile_overlap):
            for x0 in tile_origins(w, cfg.tile_size, cfg.tile_overlap):
                t = im.image.new_zeros(c, cfg.tile_size, cfg.tile_size)
                patch = im.image[:, y0 : y0 + cfg.tile_size, x0 : x0 + cfg.tile_size]
                t[:, : patch.shape[1], : patch.shape[2]] = patch
                b, keep = crop_boxes(im.boxes, x0, y0, patch.shape[2], patch.shape[1], cfg.min_visible)
                tiles.append(t)
                box_lists.append(b[keep])
                label_lists.append(im.labels[keep])
    tiles_t = torch.stack(tiles)
    m = max(1, max(len(b) for b in box_lists))
    boxes = torch.zeros(len(box_lists), m, 4)
    labels = torch.full((len(box_lists), m), -1, dtype=torch.long)
    for i, (b, lab) in enumerate(zip(box_lists, label_lists)):
        boxes[i, : len(b)], labels[i, : len(b)] = b, lab
    mean, std = channel_stats(tiles_t.numpy())
    n_boxes = {s: sum(len(im.boxes) for im in split[s]) for s in SPLITS}
    summary = (
        f"coco {ann_path}: {len(classes)} classes, images {len(split['train'])}/{len(split['val'])}/"
        f"{len(split['test'])} ({n_boxes['train']}/{n_boxes['val']}/{n_boxes['test']} boxes), "
        f"{len(tiles_t)} training tiles of {cfg.tile_size} px"
        + (f", {len(bad)} images skipped" if bad else "")
        + (f", {len(problems)} annotation problems" if problems else "")
    )
    return CocoData(
        cfg,
        tiles_t,
        boxes,
        labels,
        split["val"],
        split["test"],
        classes,
        mean,
        std,
        str(ann_path),
        summary=summary,
        problems=[f"{p}: {w}" for p, w in bad] + problems,
        train_images=split["train"],
    )


def _split(items: list[tuple[DetectionImage, str]], cfg: CocoConfig, where: Path) -> dict[str, list[DetectionImage]]:
    given = {s: [im for im, sp in items if sp == s] for s in SPLITS}
    if given["train"]:
        rest = [im for im, sp in items if sp not in SPLITS]
        given["train"] += rest
        if given["val"] and given["test"]:
            return given
        pool = given["train"]
    else:
        pool = [im for im, _ in items]
    n = len(pool)
    need = [s for s in ("val", "test") if not given[s]]
    if n < 1 + len(need):
        raise NeuratlasError(f"{where}: {n} readable images are too few for train/val/test splits")
    perm = np.random.default_rng(cfg.split_seed).permutation(n).tolist()
    out = dict(given)
    k = 0
    for s in need:
        frac = cfg.val_fraction if s == "val" else cfg.test_fraction
        take = max(1, round(n * frac))
        out[s] = [pool[i] for i in sorted(perm[k : k + take])]
        k += take
    out["train"] = [pool[i] for i in sorted(perm[k:])]
    if not out["train"]:
        raise NeuratlasError(f"{where}: no images left for training after carving val/test")
    return out


def coco_report(data: CocoData) -> DataReport:
    lines = []
    for s, ims in (("train", data.train_images or []), ("val", data.val), ("test", data.test)):
        counts = (
            np.bincount(torch.cat([im.labels for im in ims]).numpy(), minlength=len(data.classes))
            if ims
            else np.zeros(len(data.classes), int)
        )
        sizes = sorted({(im.image.shape[2], im.image.shape[1]) for im in ims})
        size_text = (
            f"{sizes[0][0]}×{sizes[0][1]}" + (f" – {sizes[-1][0]}×{sizes[-1][1]}" if len(sizes) > 1 else "")
            if sizes
            else "-"
        )
        lines.append(
            f"{s:5s} {len(ims)} images ({size_text}): "
            + ", ".join(f"{c} {n}" for c, n in zip(data.classes, counts.tolist()))
        )
    areas = (
        torch.cat(
            [(im.boxes[:, 2] - im.boxes[:, 0]) * (im.boxes[:, 3] - im.boxes[:, 1]) for im in (data.train_images or [])]
        )
        if data.train_images
        else torch.zeros(0)
    )
    if len(areas):
        side = areas.sqrt()
        lines.append(f"box side (√area) px: min {side.min():.0f}, median {side.median():.0f}, max {side.max():.0f}")

    def sheet(path: Path) -> Path:
        ims = (data.train_images or [])[:8]
        return boxes_sheet(
            [(im.image, im.boxes, im.labels) for im in ims], path, data.summary.split(":")[0], data.classes
        )

    return DataReport(data.summary, lines, list(data.problems or []), sheet)


register_dataset(
    "coco",
    load_coco,
    CocoConfig,
    "your detection data: a COCO instances.json + its images; --data.annotations FILE.json [--data.root IMAGES]",
    user_files=True,
)
register_inspector("coco", coco_report)
