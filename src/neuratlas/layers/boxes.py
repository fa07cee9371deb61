"""Boxes as tensors: format conversion, IoU / GIoU, and (batched) non-maximum suppression in plain torch.

Every box is ``(x1, y1, x2, y2)`` in pixels unless a name says otherwise. Shared by the detection models
(targets, losses, decoding), the detection data (augmentations, tiling) and the evaluator.
"""

from __future__ import annotations

import numpy as np
import torch


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) -> (...): width × height, zero for degenerate boxes."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """COCO's (x, y, width, height)."""
    return torch.cat([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], -1)


def _inter_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter, box_area(a) + box_area(b) - inter


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU: (N, 4) × (M, 4) -> (N, M). Empty unions give 0."""
    inter, union = _inter_union(a[:, None], b[None])
    return inter / union.clamp(min=1e-9)


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor, pairwise: bool = True) -> torch.Tensor:
    """GIoU (Rezatofighi et al. 2019): IoU - (hull - union) / hull, in [-1, 1].

    ``pairwise=True``: (N, 4) × (M, 4) -> (N, M); otherwise elementwise over matching leading shapes.
    """
    if pairwise:
        a, b = a[:, None], b[None]
    inter, union = _inter_union(a, b)
    iou = inter / union.clamp(min=1e-9)
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-9)


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - GIoU, elementwise over (..., 4) boxes: a box loss that still has a gradient without overlap."""
    return 1 - generalized_box_iou(pred.float(), target.float(), pairwise=False)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression; indices of the kept boxes by decreasing score.

    The IoU matrix is computed once; the greedy pass then costs one vectorised row update per kept box.
    Callers cap the candidates first (top-k by score), so the (N, N) matrix stays small.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    b = boxes[order].float()
    over = (box_iou(b, b) > iou_threshold).triu(1).cpu().numpy()  # box i suppresses later boxes j > i
    alive = np.ones(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if alive[i]:
            keep.append(i)
            alive &= ~over[i]
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS applied independently per group (class or image): boxes of different groups never suppress
    each other. Done in one call by shifting each group's boxes to a disjoint region of the plane."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    offsets = groups.to(boxes.dtype) * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def weighted_box_fusion(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float, num_views: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge the detections of ``num_views`` views of one image (Solovyev et al. 2019, simplified).

    Greedy by score: the best remaining box gathers every remaining box of its class with IoU above the
    threshold; the cluster becomes one box with score-weighted mean coordinates and score sum / num_views.
    Unlike NMS, which keeps one view's box, the views' localisation errors average out, and an object only
    one view found keeps a low score.
    """
    if boxes.numel() == 0:
        return boxes.reshape(0, 4), scores, labels
    order = scores.argsort(descending=True, stable=True)
    b, s, lab = boxes[order].float(), scores[order].float(), labels[order]
    same = (box_iou(b, b) > iou_threshold) & (lab[:, None] == lab[None])
    free = torch.ones(len(b), dtype=torch.bool, device=b.device)
    out_b, out_s, out_l = [], [], []
    for i in range(len(b)):
        if not free[i]:
            continue
        group = same[i] & free
        free &= ~group
        w = s[group]
        out_b.append((b[group] * w[:, None]).sum(0) / w.sum())
        out_s.append(w.sum() / num_views)
        out_l.append(lab[i])
    fused_s = torch.stack(out_s).clamp(max=1.0)
    keep = fused_s.argsort(descending=True, stable=True)
    return torch.stack(out_b)[keep], fused_s[keep], torch.stack(out_l)[keep]


def clip_boxes(boxes: torch.Tensor, width: float, height: float) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)], -1)
