"""Object detection: tiles in, boxes out; COCO-style AP on whole held-out images.

Training samples random crops of the training tiles (boxes moved by the augmentations); evaluation and
``predict`` cover a whole image of any size with overlapping tiles, drop boxes cut by an inner tile edge
(their object is seen whole in the neighbouring tile) and merge the rest with NMS — never a resize.

``coco_evaluate`` reimplements pycocotools' bbox evaluation (greedy matching by score, 101-point
interpolated precision, AP over IoU 0.50:0.95); ``tests/test_detection.py`` checks it equals pycocotools
on the same predictions, so no compiled dependency is needed at run time.
"""

from __future__ import annotations

import contextlib
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from neuratlas.config import coerce
from neuratlas.data import load_dataset
from neuratlas.data.detection import (
    DIHEDRAL,
    DetectionImage,
    TreeData,
    colour_jitter,
    dihedral_view,
    hflip_with_boxes,
    random_crop_with_boxes,
    random_scale_with_boxes,
    read_rgb,
    rot90_with_boxes,
    tile_origins,
    undo_dihedral_boxes,
    vflip_with_boxes,
    zoom_uint8,
)
from neuratlas.data.loaders import TensorBatches
from neuratlas.data.transforms import normalize
from neuratlas.errors import NeuratlasError
from neuratlas.layers.boxes import batched_nms, box_iou, clip_boxes, weighted_box_fusion
from neuratlas.tasks.base import TASKS, Task, model_device, write_image

Detections = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # boxes (D, 4), scores (D,), labels (D,)


# --- COCO-style evaluation ---------------------------------------------------------------------------------
def coco_evaluate(
    detections: list[Detections],
    truths: list[tuple[torch.Tensor, torch.Tensor]],
    max_dets: int = 100,
    iou_thresholds: np.ndarray | None = None,
) -> dict[str, float]:
    """AP@[.5:.95], AP50, AP75 and AR (recall averaged over IoU thresholds) for the "all" area range.

    ``detections[i]`` and ``truths[i] = (boxes, labels)`` belong to image i; boxes are xyxy pixels.
    Follows pycocotools step by step: per image and class, detections sorted by score (stable) and cut to
    ``max_dets``; each is matched to the unmatched ground truth of highest IoU >= t; precision is made
    monotone and read at 101 recall points; classes without ground truth are skipped.
    """
    thr = np.linspace(0.5, 0.95, 10) if iou_thresholds is None else np.asarray(iou_thresholds)
    rec_thrs = np.linspace(0.0, 1.00, 101)
    classes = sorted(
        {int(c) for _, lab in truths for c in lab.tolist()} | {int(c) for d in detections for c in d[2].tolist()}
    )
    precision = np.full((len(thr), len(rec_thrs), len(classes)), -1.0)
    recall = np.full((len(thr), len(classes)), -1.0)
    for k, c in enumerate(classes):
        scores_all, matched_all, n_gt = [], [], 0
        for (db, ds, dl), (gb, gl) in zip(detections, truths):
            g = gb[gl == c].double().numpy()
            sel = dl == c
            d, s = db[sel].double().numpy(), ds[sel].double().numpy()
            order = np.argsort(-s, kind="mergesort")[:max_dets]
            d, s = d[order], s[order]
            n_gt += len(g)
            if len(d) == 0:
                continue
            dtm = np.zeros((len(thr), len(d)), dtype=bool)
            if len(g):
                ious = box_iou(torch.from_numpy(d), torch.from_numpy(g)).numpy()  # float64, as pycocotools
                for t, iou_t in enumerate(thr):
                    taken = np.zeros(len(g), dtype=bool)
                    for i in range(len(d)):
                        cand = np.where(taken, -1.0, ious[i])
                        ok = cand >= min(iou_t, 1 - 1e-10)
                        if not ok.any():
                            continue
                        best = cand[ok].max()
                        m = np.flatnonzero(ok & (cand == best))[-1]  # pycocotools keeps the last of equal IoUs
                        taken[m], dtm[t, i] = True, True
            scores_all.append(s)
            matched_all.append(dtm)
        if n_gt == 0:
            continue
        if not scores_all:
            precision[:, :, k], recall[:, k] = 0.0, 0.0
            continue
        s = np.concatenate(scores_all)
        order = np.argsort(-s, kind="mergesort")
        tps = np.concatenate(matched_all, 1)[:, order]
        tp, fp = np.cumsum(tps, 1).astype(float), np.cumsum(~tps, 1).astype(float)
        for t in range(len(thr)):
            rc = tp[t] / n_gt
            pr = tp[t] / (fp[t] + tp[t] + np.spacing(1))
            recall[t, k] = rc[-1]
            pr = np.maximum.accumulate(pr[::-1])[::-1]
            idx = np.searchsorted(rc, rec_thrs, side="left")
            q = np.zeros(len(rec_thrs))
            valid = idx < len(pr)
            q[valid] = pr[idx[valid]]
            precision[t, :, k] = q

    def mean(x: np.ndarray) -> float:
        x = x[x > -1]
        return float(x.mean()) if x.size else -1.0

    out = {}
    for name, value in (("AP50", 0.5), ("AP75", 0.75)):
        hit = np.flatnonzero(np.isclose(thr, value))
        if hit.size:
            out[name] = mean(precision[hit[0]])
    return {"AP50": out.get("AP50", -1.0), "AP": mean(precision), "AP75": out.get("AP75", -1.0), "AR": mean(recall)}


# --- whole-image inference by tiles -------------------------------------------------------------------------
@torch.no_grad()
def detect_tiled(
    model: nn.Module,
    image: torch.Tensor,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    tile: int,
    overlap: int,
    score_thresh: float = 0.05,
    nms_iou: float = 0.5,
    max_dets: int = 300,
    batch_size: int = 8,
    autocast: AbstractContextManager | None = None,
    edge: float = 2.0,
) -> Detections:
    """Detect on a (C, H, W) uint8 image of any size: overlapping tiles, boxes shifted back, boxes touching an
    inner tile edge dropped (the overlap shows their object whole elsewhere), then class-wise NMS."""
    c, h, w = image.shape
    device = next(model.parameters()).device
    ys, xs = tile_origins(h, tile, overlap), tile_origins(w, tile, overlap)
    origins = [(y0, x0) for y0 in ys for x0 in xs]
    th, tw = min(tile, h), min(tile, w)
    boxes, scores, labels = [], [], []
    was_training = model.training
    model.eval()
    for i in range(0, len(origins), batch_size):
        chunk = origins[i : i + batch_size]
        x = torch.stack([image[:, y0 : y0 + th, x0 : x0 + tw] for y0, x0 in chunk])
        x = normalize(x, mean, std).to(device)
        with autocast or contextlib.nullcontext():
            out = model(x)
        for (y0, x0), (b, s, lab) in zip(chunk, model.detect(out, score_thresh, nms_iou, max_dets)):
            b = clip_boxes(b, tw, th)
            inner = torch.zeros(len(b), dtype=torch.bool, device=b.device)
            if x0 > 0:
                inner |= b[:, 0] <= edge
            if y0 > 0:
                inner |= b[:, 1] <= edge
            if x0 + tw < w:
                inner |= b[:, 2] >= tw - edge
            if y0 + th < h:
                inner |= b[:, 3] >= th - edge
            keep = ~inner
            boxes.append(b[keep] + torch.tensor([x0, y0, x0, y0], dtype=b.dtype, device=b.device))
            scores.append(s[keep])
            labels.append(lab[keep])
    model.train(was_training)
    b, s, lab = torch.cat(boxes).cpu(), torch.cat(scores).cpu(), torch.cat(labels).cpu()
    if len(origins) > 1:
        keep = batched_nms(b, s, lab, nms_iou)
        b, s, lab = b[keep], s[keep], lab[keep]
    order = s.argsort(descending=True)[:max_dets]
    return b[order], s[order], lab[order]


@torch.no_grad()
def detect_dihedral(
    model: nn.Module,
    image: torch.Tensor,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    tile: int,
    overlap: int,
    score_thresh: float = 0.05,
    nms_iou: float = 0.5,
    max_dets: int = 300,
    batch_size: int = 8,
    autocast: AbstractContextManager | None = None,
    fuse_iou: float = 0.55,
    scales: tuple[float, ...] = (1.0,),
) -> Detections:
    """Test-time augmentation for pictures with no "up" (aerial, microscopy): detect on the eight mirrored /
    rotated views, map the boxes back and fuse them (weighted box fusion). 8× the inference time; the fused
    score is the mean over views, so ``score_thresh`` applies to it (views keep every box above 0.05).

    ``scales`` adds zoomed copies of the image (bilinear, antialiased when shrinking), eight views each; each
    scale's fused boxes are mapped back to the original pixels and the scales fused once more (a box found at
    one scale only keeps 1/len(scales) of its score). Boxes come back in the original image's pixels."""
    per_scale = [
        _dihedral_fused(
            model,
            image if f == 1.0 else zoom_uint8(image, f),
            mean,
            std,
            tile,
            overlap,
            min(score_thresh, 0.05),
            nms_iou,
            max_dets,
            batch_size,
            autocast,
            fuse_iou,
            f,
        )
        for f in scales
    ]
    if len(per_scale) == 1:
        b, s, lab = per_scale[0]
    else:
        b, s, lab = weighted_box_fusion(*(torch.cat(parts) for parts in zip(*per_scale)), fuse_iou, len(scales))
    keep = (s > score_thresh).nonzero().flatten()[:max_dets]
    return b[keep], s[keep], lab[keep]


def _dihedral_fused(
    model: nn.Module,
    image: torch.Tensor,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    tile: int,
    overlap: int,
    score_thresh: float,
    nms_iou: float,
    max_dets: int,
    batch_size: int,
    autocast: AbstractContextManager | None,
    fuse_iou: float,
    scale: float,
) -> Detections:
    """The eight views of one image, fused, boxes divided by ``scale`` (all fused boxes, sorted by score)."""
    _, h, w = image.shape
    boxes, scores, labels = [], [], []
    for k, flip in DIHEDRAL:
        b, s, lab = detect_tiled(
            model,
            dihedral_view(image, k, flip),
            mean,
            std,
            tile,
            overlap,
            score_thresh,
            nms_iou,
            max_dets,
            batch_size,
            autocast,
        )
        boxes.append(undo_dihedral_boxes(b, k, flip, h, w))
        scores.append(s)
        labels.append(lab)
    b, s, lab = weighted_box_fusion(torch.cat(boxes), torch.cat(scores), torch.cat(labels), fuse_iou, len(DIHEDRAL))
    return b / scale, s, lab


def _stats(extra: dict[str, Any]) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """The input standardisation a checkpoint was trained with (its ``extra``)."""
    return (None, None) if extra["mean"] is None else (tuple(extra["mean"]), tuple(extra["std"]))


def draw_boxes(
    image: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor, path: Path, truth: torch.Tensor | None = None
) -> Path:
    """Save the image with predicted boxes (yellow, with scores) and optional ground truth (cyan) as PNG."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(image.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(img)
    if truth is not None:
        for b in truth.tolist():
            draw.rectangle(b, outline=(0, 255, 255), width=1)
    for b, s in zip(boxes.tolist(), scores.tolist()):
        draw.rectangle(b, outline=(255, 230, 0), width=2)
        draw.text((b[0] + 2, b[1] + 1), f"{s:.2f}", fill=(255, 230, 0))
    img.save(path)
    return path


# --- the task -----------------------------------------------------------------------------------------------
@dataclass
class DetectionConfig:
    score_thresh: float = 0.05  # detections kept for AP (low: AP integrates over all scores)
    nms_iou: float = 0.45
    max_dets: int = 300  # per image (COCO uses 100; the validation strip alone holds ~130 trees)
    eval_tile: int | None = None  # tile size at evaluation; default: the training tile size
    eval_batch_size: int = 8
    tta: bool = False  # evaluate on the eight mirrored / rotated views, boxes fused (detect_dihedral)
    fuse_iou: float = 0.55  # IoU that joins boxes of different views into one (weighted box fusion)
    tta_scales: tuple[float, ...] = (1.0,)  # with tta: zoom factors, eight views each (detect_dihedral's scales)

    def __post_init__(self) -> None:
        check_tta_scales(self.tta_scales)


def check_tta_scales(scales: tuple[float, ...]) -> tuple[float, ...]:
    if not scales or any(not 0.25 <= f <= 4 for f in scales):
        raise NeuratlasError(f"tta_scales must be zoom factors between 0.25 and 4, got {scales}")
    return scales


class Detection(Task):
    Config = DetectionConfig
    metric = "AP50"
    higher_is_better = True

    def __init__(self, cfg: DetectionConfig, data_spec: dict[str, Any], seed: int = 0) -> None:
        super().__init__(cfg, data_spec, seed)
        self.data: TreeData = load_dataset(data_spec)
        dc = self.data.cfg
        self.batch_size = dc.batch_size
        self.train_batches = TensorBatches(
            (self.data.tiles, self.data.boxes, self.data.labels), dc.batch_size, seed=seed, transform=self._augment
        )

    def _augment(self, batch: tuple[torch.Tensor, ...], g: torch.Generator) -> tuple[torch.Tensor, ...]:
        x, boxes, labels = batch
        dc = self.data.cfg
        if dc.augment:
            x, boxes, labels = random_scale_with_boxes(x, boxes, labels, dc.scale_jitter, g, dc.min_visible)
        x, boxes, labels = random_crop_with_boxes(x, boxes, labels, dc.crop_size, g, dc.min_visible)
        if dc.augment:
            b = x.shape[0]
            x, boxes = hflip_with_boxes(x, boxes, torch.rand(b, generator=g) < 0.5)
            x, boxes = vflip_with_boxes(x, boxes, torch.rand(b, generator=g) < 0.5)
            if dc.rotate:
                x, boxes = rot90_with_boxes(x, boxes, torch.rand(b, generator=g) < 0.5)
            x = colour_jitter(x, g, dc.jitter, dc.channel_jitter, dc.greyscale)
        return x, boxes * (labels >= 0)[..., None], labels

    def model_defaults(self) -> dict[str, Any]:
        return {"num_classes": len(self.data.classes), "in_chans": 3}

    @property
    def stats(self) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
        """Channel mean and std the inputs are standardised with; (None, None): each image by its own."""
        return (None, None) if self.data.cfg.normalize == "image" else (self.data.mean, self.data.std)

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        x, boxes, labels = batch
        x = normalize(x, *self.stats).to(self.device, memory_format=self.memory_format)
        out = model(x)
        return model.loss(out, boxes.to(self.device), labels.to(self.device), tuple(x.shape[-2:]))

    def images(self, split: str) -> list[DetectionImage]:
        if split == "train":
            raise NeuratlasError("detection evaluates on whole images: use --split val or --split test")
        return self.data.val if split == "val" else self.data.test

    def evaluate(self, model: nn.Module, split: str, autocast: AbstractContextManager) -> dict[str, float]:
        dc, cfg = self.data.cfg, self.cfg
        images = self.images(split)
        detect = (
            partial(detect_dihedral, fuse_iou=cfg.fuse_iou, scales=tuple(cfg.tta_scales)) if cfg.tta else detect_tiled
        )
        dets = [
            detect(
                model,
                im.image,
                *self.stats,
                cfg.eval_tile or dc.tile_size,
                dc.tile_overlap,
                cfg.score_thresh,
                cfg.nms_iou,
                cfg.max_dets,
                cfg.eval_batch_size,
                autocast,
            )
            for im in images
        ]
        metrics = coco_evaluate(dets, [(im.boxes, im.labels) for im in images], max_dets=cfg.max_dets)
        metrics["detections"] = float(sum(len(d[0]) for d in dets))
        metrics["objects"] = float(sum(len(im.boxes) for im in images))
        return metrics

    def checkpoint_extra(self) -> dict[str, Any]:
        dc = self.data.cfg
        mean, std = self.stats  # None, None: every image standardised by its own statistics
        return {
            "classes": self.data.classes,
            "mean": mean and list(mean),
            "std": std and list(std),
            "tile_size": self.cfg.eval_tile or dc.tile_size,
            "tile_overlap": dc.tile_overlap,
            "nms_iou": self.cfg.nms_iou,
            "max_dets": self.cfg.max_dets,
            "dataset": self.data_spec["name"],
            "tta": self.cfg.tta,
            "fuse_iou": self.cfg.fuse_iou,
            "tta_scales": list(self.cfg.tta_scales),
        }

    def describe_data(self) -> str:
        d = self.data
        if getattr(d, "summary", ""):  # a user's COCO files: its own one-line summary
            return d.summary
        return (
            f"{self.data_spec['name']} ({len(d.tiles)} tiles, {int((d.labels >= 0).sum())} boxes / "
            f"val strip {len(d.val[0].boxes)} / {d.test[0].name} {len(d.test[0].boxes)})"
        )

    def example_inputs(self, folder: Path) -> tuple[list[str], dict[str, str]]:
        return [write_image(self.data.val[0].image[:, :256, :256], folder / "example.png")], {}

    @dataclass
    class PredictOptions:
        score: float = 0.4  # drawing threshold
        tile: int | None = None  # tile size in pixels (default: the run's)
        overlap: int | None = None  # tile overlap in pixels (default: the run's)
        truth: str | None = None  # a Pascal VOC .xml of the true boxes (one image), drawn cyan
        precision: Literal["auto", "fp32", "bf16"] = "auto"
        tta: bool | None = None  # the eight flips and turns, fused (default: as the run evaluated)
        tta_scales: tuple[float, ...] | None = None  # e.g. 0.8,1,1.25 (default: as the run evaluated)

    @classmethod
    def predict(
        cls, model: nn.Module, extra: dict[str, Any], inputs: list[str], out_dir: str, options: PredictOptions
    ) -> list[str]:
        """Draw detected boxes with scores on each image (any size: tiled, never resized) → PNG."""
        score = options.score
        if options.truth and len(inputs) != 1:
            raise NeuratlasError(f"--truth belongs to one image, but {len(inputs)} inputs were given")
        tile = options.tile if options.tile is not None else int(extra["tile_size"])
        overlap = options.overlap if options.overlap is not None else int(extra["tile_overlap"])
        in_chans = model.cfg.in_chans
        tta = options.tta if options.tta is not None else coerce(extra.get("tta", False), bool, "--tta")
        scales = check_tta_scales(
            options.tta_scales or coerce(extra.get("tta_scales", [1.0]), tuple[float, ...], "--tta_scales")
        )
        detect = partial(detect_dihedral, fuse_iou=extra.get("fuse_iou", 0.55), scales=scales) if tta else detect_tiled
        from neuratlas.device import autocast, resolve_precision

        device = model_device(model)  # bf16 autocast where the device has it natively (as in training), else fp32
        cast = autocast(device, resolve_precision(options.precision, device))
        lines = []
        for path in inputs:
            image = read_rgb(path, in_chans)
            truth = None
            if options.truth:
                from neuratlas.data.detection import read_voc

                truth, _ = read_voc(options.truth, image.shape[2], image.shape[1])
            t0 = time.perf_counter()
            boxes, scores, _ = detect(
                model, image, *_stats(extra), tile, overlap, score, extra["nms_iou"], 1000, autocast=cast
            )
            dt = time.perf_counter() - t0
            out = draw_boxes(image, boxes, scores, Path(out_dir) / f"{Path(path).stem}_boxes.png", truth)
            lines.append(
                f"{path}: {len(boxes)} {extra['classes'][0].lower()}s with score ≥ {score} "
                f"({image.shape[2]}×{image.shape[1]} px, {dt:.2f} s) → {out}"
            )
        return lines


TASKS.add(
    "detection",
    Detection,
    DetectionConfig,
    description="one-stage object detection: focal + GIoU loss, COCO AP on whole held-out images",
)
