"""Semantic segmentation: a class per pixel, trained with cross-entropy + soft Dice; Dice/IoU per class and,
for cell nuclei, instance F1 at IoU 0.5 with instances taken as connected components of the prediction.

Cross-entropy gives every pixel a gradient; the Dice term (Milletari et al. 2016) weighs each class by its
overlap rather than its pixel count, so small structures (nuclei boundaries, the cerebellum on a high slice)
are not drowned by background.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neuratlas.data import load_dataset
from neuratlas.data.loaders import TensorBatches, seeded_generator
from neuratlas.data.medical import (
    SegmentationData,
    SegmentationSplit,
    axial_slice,
    check_pair,
    merge_aal,
    normalize_percentile,
    read_array,
    read_volume,
    slice_stack,
)
from neuratlas.errors import NeuratlasError
from neuratlas.extras import require
from neuratlas.plotting import panel_grid, pyplot, save_png
from neuratlas.tasks.base import TASKS, Task, model_device


# --- metrics ------------------------------------------------------------------------------------------------
def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean over foreground classes of 2·Σ(p·g) / (Σp + Σg), pooled over the batch."""
    k = logits.shape[1]
    p = logits.float().softmax(1)
    g = F.one_hot(target, k).permute(0, 3, 1, 2).float()
    inter = (p * g).sum((0, 2, 3))
    denom = p.sum((0, 2, 3)) + g.sum((0, 2, 3))
    dice = (2 * inter + eps) / (denom + eps)
    return 1 - dice[1:].mean()


def dice_iou_counts(pred: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """(3, K) counts: intersection, |pred|, |target| per class — summed over images before taking ratios."""
    inter = torch.bincount(target[pred == target].flatten(), minlength=k)
    return torch.stack(
        [inter, torch.bincount(pred.flatten(), minlength=k), torch.bincount(target.flatten(), minlength=k)]
    ).double()


def dice_from_counts(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class Dice 2|P∩G|/(|P|+|G|) and IoU |P∩G|/|P∪G|; NaN where a class is absent from both."""
    inter, p, g = counts
    dice = torch.where(p + g > 0, 2 * inter / (p + g).clamp(min=1), torch.full_like(inter, float("nan")))
    union = p + g - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))
    return dice, iou


def connected_components(mask: np.ndarray, min_size: int = 0) -> np.ndarray:
    """Label 4-connected foreground regions 1..n, dropping regions smaller than ``min_size`` pixels."""
    ndimage = require("scipy.ndimage", "instance labels of a segmentation", extra="medical")
    labels, n = ndimage.label(mask)
    if min_size and n:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels[small[labels]] = 0
        _, labels = np.unique(labels, return_inverse=True)
        labels = labels.reshape(mask.shape)
    return labels


def instance_f1(truth: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> dict[str, float]:
    """Instance matching at IoU > ``iou_threshold`` (> 0.5 makes matches one-to-one): F1 = 2TP / (|P| + |G|).

    ``truth`` and ``pred`` are instance-id images (0 = background).
    """
    _, truth = np.unique(truth, return_inverse=True)
    _, pred = np.unique(pred, return_inverse=True)
    truth, pred = truth.ravel(), pred.ravel()
    n_g, n_p = int(truth.max()), int(pred.max())
    cont = np.bincount(truth * (n_p + 1) + pred, minlength=(n_g + 1) * (n_p + 1)).reshape(n_g + 1, n_p + 1)
    inter = cont[1:, 1:]
    union = cont.sum(1)[1:, None] + cont.sum(0)[None, 1:] - inter
    iou = inter / np.maximum(union, 1)
    tp = int((iou > iou_threshold).sum())
    f1 = 2 * tp / (n_g + n_p) if n_g + n_p else 1.0
    return {
        "f1": f1,
        "tp": float(tp),
        "pred_instances": float(n_p),
        "true_instances": float(n_g),
        "precision": tp / n_p if n_p else 0.0,
        "recall": tp / n_g if n_g else 0.0,
    }


def predicted_instances(pred: np.ndarray, boundary: bool, min_size: int = 8) -> np.ndarray:
    """Instances from a class map: components of the nucleus (interior) class; with a boundary class, each
    boundary pixel then joins the nearest interior component within 2 px."""
    labels = connected_components(pred == 1, min_size)
    if boundary and labels.max() > 0:
        ndimage = require("scipy.ndimage", "instance labels of a segmentation", extra="medical")
        dist, idx = ndimage.distance_transform_edt(labels == 0, return_indices=True)
        grow = (pred == 2) & (dist <= 2)
        labels[grow] = labels[idx[0][grow], idx[1][grow]]
    return labels


# --- the task -----------------------------------------------------------------------------------------------
@dataclass
class SegmentationConfig:
    ce_weight: float = 1.0
    dice_weight: float = 1.0
    min_instance: int = 8  # predicted components smaller than this many pixels are noise, not nuclei


class Segmentation(Task):
    Config = SegmentationConfig
    metric = "dice"
    higher_is_better = True

    def __init__(self, cfg: SegmentationConfig, data_spec: dict[str, Any], seed: int = 0) -> None:
        super().__init__(cfg, data_spec, seed)
        self.data: SegmentationData = load_dataset(data_spec)
        d = self.data
        self.batch_size = d.batch_size
        if d.crop_size:
            pixels = sum(m.numel() for m in d.train.masks)
            self._steps = max(1, pixels // (d.crop_size**2 * d.batch_size))
            self._areas = torch.tensor([float(m.numel()) for m in d.train.masks])
        else:
            self.whole = TensorBatches(
                (torch.stack(d.train.images), torch.stack(d.train.masks)),
                d.batch_size,
                seed=seed,
                transform=self._augment,
            )
            self._steps = len(self.whole)

    @property
    def boundary(self) -> bool:
        return len(self.data.classes) == 3 and self.data.classes[2] == "boundary"

    def model_defaults(self) -> dict[str, Any]:
        return {"num_classes": len(self.data.classes), "in_chans": self.data.train.images[0].shape[0]}

    @property
    def steps_per_epoch(self) -> int:
        return self._steps

    def train_batch(self, index: int):
        d = self.data
        if not d.crop_size:
            return self.whole.get(index)
        g = seeded_generator(self.seed, 104729, index)
        c = d.crop_size
        regions = torch.multinomial(self._areas, d.batch_size, replacement=True, generator=g).tolist()
        xs, ys = [], []
        for r in regions:
            img, mask = d.train.images[r], d.train.masks[r]
            oy = int(torch.randint(0, mask.shape[0] - c + 1, (1,), generator=g))
            ox = int(torch.randint(0, mask.shape[1] - c + 1, (1,), generator=g))
            xs.append(img[:, oy : oy + c, ox : ox + c])
            ys.append(mask[oy : oy + c, ox : ox + c])
        return self._augment((torch.stack(xs), torch.stack(ys)), g)

    def _augment(self, batch: tuple[torch.Tensor, ...], g: torch.Generator) -> tuple[torch.Tensor, ...]:
        x, y = batch
        d, b = self.data, x.shape[0]
        if d.flips:
            f = torch.rand(b, generator=g) < 0.5
            x, y = torch.where(f[:, None, None, None], x.flip(-1), x), torch.where(f[:, None, None], y.flip(-1), y)
            f = torch.rand(b, generator=g) < 0.5
            x, y = torch.where(f[:, None, None, None], x.flip(-2), x), torch.where(f[:, None, None], y.flip(-2), y)
        if d.rot90 and x.shape[-1] == x.shape[-2]:
            f = torch.rand(b, generator=g) < 0.5
            x = torch.where(f[:, None, None, None], x.rot90(1, (-2, -1)), x)
            y = torch.where(f[:, None, None], y.rot90(1, (-2, -1)), y)
        if d.intensity > 0:  # random gain and offset per image
            gain = 1 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * d.intensity
            offset = (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * d.intensity * 0.5
            x = x * gain + offset
        return x, y

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch
        logits = model(x.to(self.device, memory_format=self.memory_format))
        y = y.to(self.device)
        ce = F.cross_entropy(logits.float(), y)
        dice = soft_dice_loss(logits, y)
        return self.cfg.ce_weight * ce + self.cfg.dice_weight * dice, {"ce": ce.item(), "dice_loss": dice.item()}

    def split(self, name: str) -> SegmentationSplit:
        return {"train": self.data.train, "val": self.data.val, "test": self.data.test}[name]

    @torch.no_grad()
    def predict_masks(
        self, model: nn.Module, images: list[torch.Tensor], autocast: AbstractContextManager
    ) -> list[torch.Tensor]:
        was = model.training
        model.eval()
        preds: list[torch.Tensor] = []
        i = 0
        while i < len(images):  # batches of equal-sized images (brain slices); one at a time otherwise
            j = i + 1
            while j < len(images) and j - i < 8 and images[j].shape == images[i].shape:
                j += 1
            with autocast:
                logits = model(torch.stack(images[i:j]).to(self.device, memory_format=self.memory_format))
            preds += list(logits.float().argmax(1).cpu())
            i = j
        model.train(was)
        return preds

    def evaluate(self, model: nn.Module, split: str, autocast: AbstractContextManager) -> dict[str, float]:
        s = self.split(split)
        k = len(self.data.classes)
        preds = self.predict_masks(model, s.images, autocast)
        counts = sum(dice_iou_counts(p, m, k) for p, m in zip(preds, s.masks))
        dice, iou = dice_from_counts(counts)
        out = {"dice": float(dice[1:].nanmean()), "iou": float(iou[1:].nanmean())}
        if k > 3 or not s.instances:
            out.update({f"dice_{c.replace(' ', '_')}": float(v) for c, v in zip(self.data.classes[1:], dice[1:])})
        if self.boundary:  # interior + boundary vs all nucleus pixels: comparable with the binary target
            fg, _ = dice_from_counts(
                sum(dice_iou_counts((p > 0).long(), (m > 0).long(), 2) for p, m in zip(preds, s.masks))
            )
            out["dice_foreground"] = float(fg[1])
        if s.instances:
            totals = {"tp": 0.0, "pred_instances": 0.0, "true_instances": 0.0}
            for p, inst in zip(preds, s.instances):
                r = instance_f1(inst.numpy(), predicted_instances(p.numpy(), self.boundary, self.cfg.min_instance))
                for key in totals:
                    totals[key] += r[key]
            n = totals["pred_instances"] + totals["true_instances"]
            out["f1"] = 2 * totals["tp"] / n if n else 1.0
            out["nuclei_true"], out["nuclei_pred"] = totals["true_instances"], totals["pred_instances"]
        return out

    def checkpoint_extra(self) -> dict[str, Any]:
        d = self.data
        return {
            "classes": d.classes,
            "norm": d.norm,
            "in_chans": d.train.images[0].shape[0],
            "dataset": self.data_spec["name"],
            "instances": bool(d.test.instances),
            "boundary": self.boundary,
            **d.extra,
        }

    def describe_data(self) -> str:
        return f"{self.data_spec['name']} ({self.data.description})"

    def example_inputs(self, folder: Path) -> tuple[list[str], dict[str, str]]:
        image = self.data.test.images[0].float().numpy()  # normalised (C, H, W)
        if image.shape[0] == 1:
            path = folder / "example.npy"
            np.save(path, image[0])
            return [str(path)], {}
        import nibabel

        path = folder / "example.nii.gz"  # a slice with its neighbours: a small volume, segmented at its middle
        nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(image.transpose(1, 2, 0)), np.eye(4)), path)
        return [str(path)], {"slice": str(image.shape[0] // 2)}

    @dataclass
    class PredictOptions:
        slice: int | None = None  # the axial slice of a NIfTI volume (default: the middle one)
        truth: str | None = None  # the true class map of the (one) input, shown and scored beside the prediction

    @classmethod
    def predict(
        cls, model: nn.Module, extra: dict[str, Any], inputs: list[str], out_dir: str, options: PredictOptions
    ) -> list[str]:
        """Segment 2-D images (TIFF/PNG/.npy) or an axial slice of a NIfTI volume (--slice Z) and write an
        overlay PNG: image, truth (with --truth FILE) and prediction side by side."""
        lines = []
        classes = extra["classes"]
        if options.truth and len(inputs) != 1:
            raise NeuratlasError(f"--truth belongs to one image, but {len(inputs)} inputs were given")
        for path in inputs:
            image, truth = _load_input(path, extra, options)
            x = torch.from_numpy(image)[None].to(model_device(model))
            image = image[image.shape[0] // 2]  # the slice being segmented (the middle one of a stack)
            model.eval()
            with torch.no_grad():
                pred = model(x).argmax(1)[0].cpu().numpy()
            fractions = ", ".join(f"{c} {np.mean(pred == i):.1%}" for i, c in enumerate(classes) if i)
            line = f"{path}: {fractions}"
            if extra.get("instances"):
                line += f"; {predicted_instances(pred, extra.get('boundary', False)).max()} nuclei"
            if truth is not None:
                dice, _ = dice_from_counts(
                    dice_iou_counts(torch.from_numpy(pred), torch.from_numpy(truth), len(classes))
                )
                line += f"; Dice vs truth {float(dice[1:].nanmean()):.3f}"
            stem = Path(path).name.split(".")[0] + (f"_z{options.slice}" if options.slice is not None else "")
            out = save_overlay(image, truth, pred, classes, Path(out_dir) / f"{stem}_overlay.png")
            lines.append(f"{line} → {out}")
        return lines


def _load_input(
    path: str, extra: dict[str, Any], options: Segmentation.PredictOptions
) -> tuple[np.ndarray, np.ndarray | None]:
    """A raw input and optional truth -> (normalised float32 image (C, H, W): one channel, or a slice with its
    neighbours for a model trained with ``context``; class map or None)."""
    volume = path.endswith((".nii", ".nii.gz"))
    context = int(extra.get("context", 0))
    if volume:
        vol = read_volume(path)
        z = options.slice if options.slice is not None else vol.shape[2] // 2
        if not 0 <= z < vol.shape[2]:
            raise NeuratlasError(f"{path}: --slice {z} is outside the volume's {vol.shape[2]} axial slices")
        image = slice_stack(vol, z, context)
    elif context:
        raise NeuratlasError(
            f"{path}: this model reads {2 * context + 1} neighbouring slices; give it a NIfTI "
            f"volume (.nii/.nii.gz) and --slice Z"
        )
    else:
        image = read_array(path)
        if image.ndim == 3 and image.shape[-1] in (3, 4) and extra["in_chans"] == 3:  # an RGB-trained model
            image = np.ascontiguousarray(image[..., :3].transpose(2, 0, 1))
        elif image.ndim == 3 and image.shape[-1] in (3, 4) and extra["in_chans"] == 1:
            raise NeuratlasError(
                f"{path}: expected a single-channel image, got {image.shape[-1]} channels (shape {image.shape})"
            )
        elif image.ndim != 2:
            raise NeuratlasError(f"{path}: expected a 2-D single-channel image, got shape {image.shape}")
        else:
            image = image[None]
    image = normalize_percentile(image) if extra["norm"] == "percentile" else image.astype(np.float32) / 255.0
    truth = None
    if options.truth:
        t = read_volume(options.truth) if volume else read_array(options.truth)
        if volume:
            t = axial_slice(merge_aal(t) if extra.get("dataset") == "colin27-lobes" else t, z)
        check_pair(image[context], t, options.truth)
        if extra.get("instances"):
            from neuratlas.data.medical import boundary_classes

            t = boundary_classes(t.astype(np.int64)) if extra.get("boundary") else (t > 0).astype(np.int64)
        truth = np.asarray(t, dtype=np.int64)
    return np.ascontiguousarray(image, dtype=np.float32), truth


def save_overlay(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, classes: list[str], path: Path) -> Path:
    """Image, truth and prediction side by side, classes as translucent colours over the grey image."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colours = pyplot().get_cmap("tab10").colors[: len(classes) - 1]
    cmap = ListedColormap(colours)
    panels = [("image", None)] + ([("truth", truth)] if truth is not None else []) + [("prediction", pred)]
    fig, axes = panel_grid(len(panels), (4.2, 4.6))
    lo, hi = np.percentile(image, [0.5, 99.5])
    for ax, (title, mask) in zip(axes, panels):
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
        if mask is not None:
            ax.imshow(
                np.ma.masked_equal(mask, 0) - 1,
                cmap=cmap,
                vmin=0,
                vmax=len(classes) - 2,
                alpha=0.5,
                interpolation="nearest",
            )
        ax.set_title(title)
        ax.axis("off")
    fig.legend(
        handles=[Patch(color=c, label=n) for c, n in zip(colours, classes[1:])],
        loc="lower center",
        ncol=min(len(classes) - 1, 7),
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    return save_png(fig, path)


TASKS.add(
    "segmentation",
    Segmentation,
    SegmentationConfig,
    description="semantic segmentation: CE + Dice loss; Dice/IoU per class, instance F1 at IoU 0.5",
)
