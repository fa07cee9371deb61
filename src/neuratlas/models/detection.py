"""One-stage object detectors on the registry's CNN backbones: a feature pyramid plus a dense head.

- ``head="fcos"`` (Tian et al. 2019): anchor-free. Every feature-map location inside a box (near its
  centre: "centre sampling") predicts its distances (left, top, right, bottom) to the box edges, a class
  score and a centre-ness that down-weights off-centre boxes at test time. Each pyramid level takes
  objects of one size range, so a location is never asked for two boxes of very different sizes.
- ``head="retina"`` (Lin et al. 2017): anchors of several scales and aspect ratios at every location;
  an anchor is positive when it overlaps a box with IoU >= 0.5 (and every box keeps its best anchor).
  ``assigner="atss"`` (Zhang et al. 2020) swaps that fixed threshold for an adaptive one and adds the
  centre-ness branch: the two differences that paper found between RetinaNet and FCOS. Small boxes, which
  overlap no anchor by 0.5, then get several positives instead of their single best anchor.

Both heads are trained with the sigmoid focal loss for classes (the many easy background locations no
longer swamp the few objects) and the GIoU loss on the decoded boxes; both return decoded boxes, so
decoding, NMS and evaluation are shared. Box ops live in ``neuratlas.layers.boxes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.layers.boxes import batched_nms, box_iou, giou_loss
from neuratlas.layers.losses import sigmoid_focal_loss
from neuratlas.models.efficientnet import LITE0_TF
from neuratlas.models.registry import create_model, register_model


@dataclass
class DetectorConfig:
    backbone: str = "resnet18"  # any registered CNN with feature_maps (resnet*, mobilenet-*, efficientnet-*)
    backbone_args: dict[str, Any] = field(default_factory=dict)  # e.g. {"width": 32} for a slimmer ResNet
    # start the backbone from real ImageNet weights (loaded by neuratlas.create_model and the trainer)
    pretrained: Literal["", "imagenet-lite0"] = ""
    head: Literal["fcos", "retina"] = "fcos"
    num_classes: int = 1
    in_chans: int = 3
    levels: tuple[int, ...] = (8, 16, 32)  # strides of the pyramid levels (must be backbone strides)
    fpn_dim: int = 64
    head_convs: int = 2
    prior_prob: float = 0.01  # initial foreground probability (focal-loss paper's bias init)
    center_radius: float = 1.5  # fcos: positives within this many strides of a box centre
    anchor_size: float = 2.0  # retina: base anchor side in strides, times the octave scales below
    anchor_scales: tuple[float, ...] = (1.0, 1.26, 1.59)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    assigner: Literal["max_iou", "atss"] = "max_iou"  # retina: fixed IoU 0.5/0.4, or ATSS + centre-ness
    atss_topk: int = 9  # atss: candidate locations per level and box, those nearest the box centre
    img_size: int = 64  # size of dummy_input

    def __post_init__(self) -> None:
        if list(self.levels) != sorted(self.levels) or not self.levels:
            raise ValueError("levels must be increasing strides, e.g. (8, 16, 32)")
        if self.num_classes < 1:
            raise ValueError("num_classes must be >= 1 (background is implicit)")
        if self.assigner == "atss" and self.head != "retina":
            raise ValueError("assigner='atss' is for head='retina' (fcos assigns by size ranges)")
        if self.pretrained and self.backbone != "efficientnet-lite0":
            raise ValueError("pretrained='imagenet-lite0' needs backbone='efficientnet-lite0'")

    @property
    def anchors_per_location(self) -> int:
        return len(self.anchor_scales) * len(self.anchor_ratios) if self.head == "retina" else 1

    @property
    def has_centerness(self) -> bool:
        return self.head == "fcos" or self.assigner == "atss"


def build_backbone(name: str, in_chans: int, args: dict[str, Any], pretrained: str = "") -> nn.Module:
    """A registry CNN without its classifier. ``pretrained="imagenet-lite0"`` builds it with the switches of
    the real ImageNet EfficientNet-Lite0 weights (the only real CNN weights that ship offline); the weights
    themselves are loaded afterwards by :func:`neuratlas.weights.load_pretrained_weights`."""
    opts = {"num_classes": 0, "in_chans": in_chans, **args}
    if pretrained == "imagenet-lite0":
        opts = {**LITE0_TF, **opts}
    return create_model(name, **opts)


def _centerness(ltrb: torch.Tensor) -> torch.Tensor:
    """FCOS's centre-ness of a point from its (left, top, right, bottom) distances: 1 at the box centre."""
    lr, tb = ltrb[..., [0, 2]], ltrb[..., [1, 3]]
    return (
        (lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6)).clamp(min=0)
        * (tb.min(-1).values / tb.max(-1).values.clamp(min=1e-6)).clamp(min=0)
    ).sqrt()


def _anchor_iou(anchors: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of every anchor (N, 4) with every padded box of each image (B, M, 4) → (B, N, M)."""
    return torch.stack([box_iou(anchors, boxes) for boxes in gt])


def _nanstd(x: torch.Tensor) -> torch.Tensor:
    """Population std over dim 1, ignoring NaN (torch has nanmean but no nanstd)."""
    return ((x - x.nanmean(1, keepdim=True)) ** 2).nanmean(1).sqrt()


class DetectionOutput(NamedTuple):
    logits: torch.Tensor  # (B, N, K) class logits for every location/anchor
    boxes: torch.Tensor  # (B, N, 4) decoded boxes, xyxy pixels
    centerness: torch.Tensor | None  # (B, N) logits (fcos, and retina with atss)


class FPN(nn.Module):
    """Feature pyramid (Lin et al. 2017): 1×1 laterals, top-down nearest upsampling, 3×3 smoothing."""

    def __init__(self, in_channels: list[int], dim: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.smooth = nn.ModuleList(nn.Conv2d(dim, dim, 3, padding=1) for _ in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        x = self.lateral[-1](feats[-1])
        outs = [self.smooth[-1](x)]
        for i in range(len(feats) - 2, -1, -1):
            x = self.lateral[i](feats[i]) + F.interpolate(x, size=feats[i].shape[-2:], mode="nearest")
            outs.insert(0, self.smooth[i](x))
        return outs


def _tower(dim: int, n: int) -> nn.Sequential:
    return nn.Sequential(
        *[
            nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(max(1, dim // 8), dim), nn.ReLU(inplace=True))
            for _ in range(n)
        ]
    )


class Detector(nn.Module):
    Config = DetectorConfig

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, cfg.in_chans, cfg.backbone_args, cfg.pretrained)
        if not hasattr(self.backbone, "feature_maps"):
            raise NeuratlasError(f"backbone {cfg.backbone!r} has no feature_maps(); use a CNN (resnet*, ...)")
        strides = self.backbone.feature_strides
        missing = [s for s in cfg.levels if s not in strides]
        if missing:
            raise NeuratlasError(
                f"backbone {cfg.backbone} has feature strides {strides}; levels {missing} are not among them"
            )
        self._take = [strides.index(s) for s in cfg.levels]
        self.fpn = FPN([self.backbone.feature_channels[i] for i in self._take], cfg.fpn_dim)
        a, k = cfg.anchors_per_location, cfg.num_classes
        self.cls_tower, self.box_tower = _tower(cfg.fpn_dim, cfg.head_convs), _tower(cfg.fpn_dim, cfg.head_convs)
        self.cls_out = nn.Conv2d(cfg.fpn_dim, a * k, 3, padding=1)
        self.box_out = nn.Conv2d(cfg.fpn_dim, a * 4, 3, padding=1)
        self.ctr_out = nn.Conv2d(cfg.fpn_dim, a, 3, padding=1) if cfg.has_centerness else None
        self.scales = nn.Parameter(torch.ones(len(cfg.levels)))  # per-level regression scale (FCOS)
        for m in [*self.cls_tower.modules(), *self.box_tower.modules(), self.cls_out, self.box_out]:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_out.bias, -math.log((1 - cfg.prior_prob) / cfg.prior_prob))
        self._prior_cache: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def dummy_input(self, batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, self.cfg.in_chans, self.cfg.img_size, self.cfg.img_size)

    # --- priors: one point (fcos) or A anchors (retina) per feature-map location ---------------------------
    def priors(self, sizes: list[tuple[int, int]], device: torch.device) -> tuple[torch.Tensor, ...]:
        """(centres (N, 2), strides (N,), size-range lo/hi (N,), anchors (N, 4) or None), cached by size."""
        key = (tuple(sizes), str(device))
        if key not in self._prior_cache:
            cfg, a = self.cfg, self.cfg.anchors_per_location
            centres, strides, lo, hi, anchors = [], [], [], [], []
            for i, ((h, w), s) in enumerate(zip(sizes, cfg.levels)):
                ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
                c = (torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * s
                c = c.repeat_interleave(a, 0)  # location-major, anchor-minor: matches the head's channel order
                centres.append(c)
                strides.append(torch.full((len(c),), float(s), device=device))
                lo.append(torch.full((len(c),), 0.0 if i == 0 else 4.0 * s, device=device))
                hi.append(torch.full((len(c),), math.inf if i == len(sizes) - 1 else 8.0 * s, device=device))
                if cfg.head == "retina":
                    wh = torch.tensor(
                        [
                            [cfg.anchor_size * s * sc * math.sqrt(1 / r), cfg.anchor_size * s * sc * math.sqrt(r)]
                            for sc in cfg.anchor_scales
                            for r in cfg.anchor_ratios
                        ],
                        device=device,
                    )  # (A, 2): ratio = h / w
                    wh = wh.repeat(h * w, 1)
                    anchors.append(torch.cat([c - wh / 2, c + wh / 2], -1))
            self._prior_cache[key] = (
                torch.cat(centres),
                torch.cat(strides),
                torch.cat(lo),
                torch.cat(hi),
                torch.cat(anchors) if anchors else None,
            )
        return self._prior_cache[key]

    # --- forward: backbone -> FPN -> shared head -> decoded boxes ------------------------------------------
    def forward(self, x: torch.Tensor) -> DetectionOutput:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_chans:
            raise NeuratlasError(
                f"the detector expects images (batch, {self.cfg.in_chans}, H, W), got {tuple(x.shape)}"
            )
        feats = self.backbone.feature_maps(x)
        pyramid = self.fpn([feats[i] for i in self._take])
        b, k = x.shape[0], self.cfg.num_classes
        logits, regs, ctrs = [], [], []
        for i, p in enumerate(pyramid):
            c, r = self.cls_tower(p), self.box_tower(p)
            logits.append(self.cls_out(c).permute(0, 2, 3, 1).reshape(b, -1, k))  # (B, H*W*A, K)
            regs.append(self.box_out(r).permute(0, 2, 3, 1).reshape(b, -1, 4) * self.scales[i])
            if self.ctr_out is not None:
                ctrs.append(self.ctr_out(r).permute(0, 2, 3, 1).reshape(b, -1))
        centres, strides, _, _, anchors = self.priors([tuple(p.shape[-2:]) for p in pyramid], x.device)
        reg = torch.cat(regs, 1).float()
        if self.cfg.head == "fcos":
            ltrb = torch.exp(reg.clamp(max=8.0)) * strides[:, None]
            boxes = torch.cat([centres - ltrb[..., :2], centres + ltrb[..., 2:]], -1)
        else:  # standard (dx, dy, dw, dh) anchor deltas
            wh = anchors[:, 2:] - anchors[:, :2]
            ctr = centres + reg[..., :2] * wh
            size = wh * torch.exp(reg[..., 2:].clamp(max=math.log(1000 / 16)))
            boxes = torch.cat([ctr - size / 2, ctr + size / 2], -1)
        return DetectionOutput(torch.cat(logits, 1), boxes, torch.cat(ctrs, 1) if ctrs else None)

    # --- training targets and loss --------------------------------------------------------------------------
    def loss(
        self, out: DetectionOutput, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, image_size: tuple[int, int]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Focal + GIoU (+ centre-ness BCE for fcos). ``gt_boxes`` (B, M, 4) padded; ``gt_labels`` (B, M), -1 = pad."""
        h, w = image_size
        sizes = [(math.ceil(h / s), math.ceil(w / s)) for s in self.cfg.levels]
        centres, strides, lo, hi, anchors = self.priors(sizes, gt_boxes.device)
        if len(centres) != out.logits.shape[1]:  # odd input sizes: recompute from the real map sizes
            raise NeuratlasError("image size must be a multiple of the largest stride for training")
        valid = gt_labels >= 0  # (B, M)
        if self.cfg.head == "fcos":
            match, weight = self._assign_fcos(centres, strides, lo, hi, gt_boxes, valid)
        elif self.cfg.assigner == "atss":
            match, weight = self._assign_atss(centres, strides, anchors, gt_boxes, valid)
        else:
            match, weight = self._assign_retina(anchors, gt_boxes, valid)
        pos = match >= 0  # (B, N)
        num_pos = max(pos.sum().item(), 1.0)
        idx = match.clamp(min=0)
        labels = torch.gather(gt_labels, 1, idx)  # (B, N)
        target = torch.zeros_like(out.logits, dtype=torch.float32)
        target[pos] = F.one_hot(labels[pos], self.cfg.num_classes).float()
        ignore = weight < 0  # retina: IoU between 0.4 and 0.5 neither positive nor negative
        cls = sigmoid_focal_loss(out.logits.float(), target)
        cls_loss = cls[~ignore].sum() / num_pos
        tgt_boxes = torch.gather(gt_boxes, 1, idx[..., None].expand(-1, -1, 4))
        logs: dict[str, float] = {"cls_loss": cls_loss.item(), "positives": float(num_pos)}
        if pos.any():
            g = giou_loss(out.boxes[pos], tgt_boxes[pos])
            wpos = weight[pos]
            box_loss = (g * wpos).sum() / wpos.sum().clamp(min=1e-6)
        else:
            box_loss = out.boxes.sum() * 0.0
        total = cls_loss + 2.0 * box_loss
        if out.centerness is not None:
            ctr_loss = (
                (
                    F.binary_cross_entropy_with_logits(out.centerness[pos].float(), weight[pos], reduction="sum")
                    / num_pos
                )
                if pos.any()
                else out.centerness.sum() * 0.0
            )
            total = total + ctr_loss
            logs["ctr_loss"] = ctr_loss.item()
        logs["box_loss"] = box_loss.item()
        return total, logs

    def _assign_fcos(self, centres, strides, lo, hi, gt, valid):
        """Each location -> the smallest box that contains it, lies within ``center_radius`` strides of the
        box centre and whose size fits the location's level. Weight = the centre-ness target."""
        px, py = centres[None, :, None, 0], centres[None, :, None, 1]  # (1, N, 1)
        x1, y1, x2, y2 = (gt[:, None, :, i] for i in range(4))  # (B, 1, M)
        ltrb = torch.stack([px - x1, py - y1, x2 - px, y2 - py], -1)  # (B, N, M, 4)
        inside = ltrb.min(-1).values > 0
        r = self.cfg.center_radius * strides[None, :, None]
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        near = ((px - cx).abs() < r) & ((py - cy).abs() < r)
        extent = ltrb.max(-1).values
        fits = (extent > lo[None, :, None]) & (extent <= hi[None, :, None])
        ok = inside & near & fits & valid[:, None, :]
        area = ((x2 - x1) * (y2 - y1)).expand_as(ok).masked_fill(~ok, math.inf)
        best_area, match = area.min(-1)
        match = match.masked_fill(torch.isinf(best_area), -1)
        d = torch.gather(ltrb, 2, match.clamp(min=0)[..., None, None].expand(-1, -1, 1, 4)).squeeze(2)
        return match, _centerness(d)

    def _assign_atss(self, centres, strides, anchors, gt, valid):
        """ATSS: per box, the ``atss_topk`` locations nearest its centre on every level are candidates (all
        their anchors); those whose IoU reaches the candidates' mean + std and whose centre lies inside the box
        are positive; an anchor wanted by several boxes takes the one it overlaps most. Weight = centre-ness."""
        iou = _anchor_iou(anchors, gt)
        px, py = centres[None, :, None, 0], centres[None, :, None, 1]  # (1, N, 1)
        x1, y1, x2, y2 = (gt[:, None, :, i] for i in range(4))  # (B, 1, M)
        dist = (px - (x1 + x2) / 2) ** 2 + (py - (y1 + y2) / 2) ** 2  # (B, N, M), squared: same order
        candidate = torch.zeros_like(iou, dtype=torch.bool)
        start = 0
        for s in self.cfg.levels:  # priors are level-major, so each level is one contiguous slice
            n = int((strides == s).sum())
            k = min(self.cfg.atss_topk * self.cfg.anchors_per_location, n)  # a location's anchors tie in distance
            top = dist[:, start : start + n].topk(k, dim=1, largest=False).indices + start  # (B, k, M)
            candidate.scatter_(1, top, True)
            start += n
        cand_iou = iou.masked_fill(~candidate, float("nan"))
        thresh = cand_iou.nanmean(1) + _nanstd(cand_iou)  # (B, M)
        inside = (px > x1) & (py > y1) & (px < x2) & (py < y2)
        ok = candidate & (iou >= thresh[:, None, :]) & inside & valid[:, None, :]
        best, match = iou.masked_fill(~ok, -1).max(-1)
        match = match.masked_fill(best < 0, -1)
        box = torch.gather(gt, 1, match.clamp(min=0)[..., None].expand(-1, -1, 4))  # (B, N, 4)
        return match, _centerness(torch.cat([centres - box[..., :2], box[..., 2:] - centres], -1))

    def _assign_retina(self, anchors, gt, valid):
        """IoU >= 0.5 positive, < 0.4 negative, in between ignored (weight -1); each box keeps its best anchor."""
        iou = _anchor_iou(anchors, gt).masked_fill(~valid[:, None, :], -1)
        best, match = iou.max(-1)
        weight = torch.ones_like(best)
        weight[(best >= 0.4) & (best < 0.5)] = -1
        match = match.masked_fill(best < 0.5, -1)
        best_anchor = iou.argmax(1)  # (B, M): low-quality matches so that small boxes get an anchor too
        bi, mi = valid.nonzero(as_tuple=True)
        match[bi, best_anchor[bi, mi]] = mi
        weight[bi, best_anchor[bi, mi]] = 1.0
        return match, weight

    # --- inference ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, out: DetectionOutput) -> torch.Tensor:
        """(B, N, K) detection scores of every location and class, before thresholds and NMS."""
        probs = out.logits.float().sigmoid()
        if out.centerness is not None:  # FCOS and ATSS rank by sqrt(class prob × centre-ness)
            probs = (probs * out.centerness.float().sigmoid()[..., None]).sqrt()
        return probs

    def detect(
        self,
        out: DetectionOutput,
        score_thresh: float = 0.05,
        nms_iou: float = 0.5,
        max_dets: int = 300,
        pre_nms: int = 1000,
    ) -> list[tuple[torch.Tensor, ...]]:
        """Per image (boxes (D, 4), scores (D,), labels (D,)) after score threshold, top-k and class-wise NMS."""
        probs = self.scores(out)
        results = []
        k = self.cfg.num_classes
        for i in range(probs.shape[0]):
            flat = probs[i].flatten()
            keep = (flat > score_thresh).nonzero().flatten()
            keep = keep[flat[keep].topk(min(pre_nms, len(keep))).indices]
            scores, loc, labels = flat[keep], keep // k, keep % k
            boxes = out.boxes[i, loc].float()
            kept = batched_nms(boxes, scores, labels, nms_iou)[:max_dets]
            results.append((boxes[kept], scores[kept], labels[kept]))
        return results


for _head, _what in (("fcos", "anchor-free FCOS head"), ("retina", "RetinaNet anchor head")):
    register_model(f"{_head}-resnet18", Detector, f"{_what} on a ResNet-18 FPN (P3-P5)", head=_head)
    register_model(
        f"{_head}-resnet18-slim",
        Detector,
        f"{_what} on a ResNet-18 at half width (CPU-friendly)",
        head=_head,
        backbone_args={"width": 32},
    )
    register_model(
        f"{_head}-mobilenet-v2", Detector, f"{_what} on a MobileNet V2 FPN", head=_head, backbone="mobilenet-v2"
    )
    register_model(
        f"{_head}-efficientnet-b0",
        Detector,
        f"{_what} on an EfficientNet-B0 FPN",
        head=_head,
        backbone="efficientnet-b0",
    )
    register_model(
        f"{_head}-lite0-imagenet",
        Detector,
        f"{_what} on EfficientNet-Lite0 with real ImageNet weights",
        head=_head,
        backbone="efficientnet-lite0",
        pretrained="imagenet-lite0",
    )
