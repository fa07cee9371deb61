"""Image classification: real labelled images in, class probabilities out; accuracy on held-out data."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from neuratlas.data import load_dataset
from neuratlas.data.guards import TooLarge, load_npy, named
from neuratlas.data.images import ImageSplits
from neuratlas.data.loaders import TensorBatches
from neuratlas.data.transforms import normalize, random_crop, random_erase, random_hflip
from neuratlas.errors import NeuratlasError
from neuratlas.layers.losses import LOSSES, classification_loss
from neuratlas.tasks.base import TASKS, Task, describe_splits, gather_predictions, model_device, write_image


@dataclass
class ClassificationConfig:
    loss: Literal["cross_entropy", "nll", "mse", "bce", "focal"] = "cross_entropy"
    label_smoothing: float = 0.0
    # Test-time augmentation: score each image and its mirror image, average the logits. For data whose
    # classes are mirror-symmetric (clothes, natural photos; not digits or text).
    tta_flip: bool = False

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose from {', '.join(LOSSES)}")


def accuracy(logits: torch.Tensor, target: torch.Tensor, k: int = 1) -> float:
    topk = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    return (topk == target[:, None]).any(-1).float().mean().item()


class ImageClassification(Task):
    Config = ClassificationConfig
    metric = "accuracy"
    higher_is_better = True

    def __init__(self, cfg: ClassificationConfig, data_spec: dict[str, Any], seed: int = 0) -> None:
        super().__init__(cfg, data_spec, seed)
        self.data: ImageSplits = load_dataset(data_spec)
        dc = self.data.cfg
        self.train_batches = TensorBatches(self.data.train, dc.batch_size, seed=seed, transform=self._augment)
        self.batch_size = self.train_batches.batch_size

    def _augment(self, batch: tuple[torch.Tensor, ...], g: torch.Generator) -> tuple[torch.Tensor, ...]:
        x, y = batch
        dc = self.data.cfg
        if dc.augment:
            if dc.crop_padding:
                x = random_crop(x, dc.crop_padding, g)
            if dc.hflip:
                x = random_hflip(x, g)
            if dc.erase:
                x = random_erase(x, g, dc.erase)
        return x, y

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = normalize(x, self.data.mean, self.data.std)
        side = self.data.cfg.img_size
        if side and x.shape[-1] != side:
            x = nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        return x

    def model_defaults(self) -> dict[str, Any]:
        c, h, w = self.data.shape
        return {"num_classes": len(self.data.classes), "in_chans": c, "img_size": h, "in_features": c * h * w}

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch
        logits = model(self.prepare(x).to(self.device, memory_format=self.memory_format))
        y = y.to(self.device)
        loss = classification_loss(self.cfg.loss, logits, y, self.cfg.label_smoothing)
        return loss, {}

    def batches(self, split: str) -> TensorBatches:
        tensors = {"train": self.data.train, "val": self.data.val, "test": self.data.test}[split]
        return TensorBatches(tensors, self.data.cfg.eval_batch_size, shuffle=False, drop_last=False)

    def evaluate(self, model: nn.Module, split: str, autocast: AbstractContextManager) -> dict[str, float]:
        def prepare(x: torch.Tensor) -> torch.Tensor:
            return self.prepare(x).to(self.device, memory_format=self.memory_format)

        logits, y = gather_predictions(model, self.batches(split), autocast, prepare)
        if self.cfg.tta_flip:  # mirror images (flipping commutes with normalising and resizing)
            mirrored, _ = gather_predictions(model, self.batches(split), autocast, lambda x: prepare(x.flip(-1)))
            logits = (logits + mirrored) / 2
        y = y.to(logits.device)
        return {
            "loss": nn.functional.cross_entropy(logits, y).item(),
            "accuracy": accuracy(logits, y),
            "top5": accuracy(logits, y, 5),
        }

    def checkpoint_extra(self) -> dict[str, Any]:
        c, h, w = self.data.shape
        return {
            "classes": self.data.classes,
            "mean": list(self.data.mean),
            "std": list(self.data.std),
            "input_shape": [c, h, w],
            "dataset": self.data_spec["name"],
            "tta_flip": self.cfg.tta_flip,
            "resize": getattr(self.data.cfg, "resize", "squash"),
        }

    def describe_data(self) -> str:
        return describe_splits(self.data_spec["name"], self.data)

    def example_inputs(self, folder: Path) -> tuple[list[str], dict[str, str]]:
        return [write_image(self.data.test[0][0], folder / "example.png")], {}

    @dataclass
    class PredictOptions:
        invert: bool = False  # invert the images first (dark drawing on white, where the data is light on dark)

    @classmethod
    def predict(
        cls, model: nn.Module, extra: dict[str, Any], inputs: list[str], out_dir: str, options: PredictOptions
    ) -> list[str]:
        """Classify image files (PNG/JPEG, or .npy arrays); prints the top-3 classes per file."""
        c, h, w = extra["input_shape"]
        x = torch.stack([load_image(p, c, h, w, options.invert, extra.get("resize", "squash")) for p in inputs])
        x = x.to(model_device(model))
        model.eval()
        with torch.no_grad():
            x = normalize(x, tuple(extra["mean"]), tuple(extra["std"]))
            logits = model(x)
            if extra.get("tta_flip"):
                logits = (logits + model(x.flip(-1))) / 2
            probs = logits.softmax(-1).float().cpu()
        lines = []
        for path, p in zip(inputs, probs):
            top = p.topk(min(3, len(p)))
            best = ", ".join(
                f"{extra['classes'][i]} {v:.1%}" for v, i in zip(top.values.tolist(), top.indices.tolist())
            )
            lines.append(f"{path}: {best}")
        return lines


def load_image(path: str, channels: int, h: int, w: int, invert: bool = False, resize: str = "squash") -> torch.Tensor:
    """Read an image file into a uint8 (C, H, W) tensor of the model's input size."""
    p = Path(path)
    if not p.is_file():
        raise NeuratlasError(f"input {path} does not exist")
    if p.suffix == ".npy":
        arr = load_npy(p)
    else:  # the decoding training used: any mode (16-bit, palette, alpha), the run's resize policy
        from neuratlas.data.image_files import ResizePolicy, decode

        try:
            arr = decode(p, ResizePolicy(h, w, channels, resize))
        except TooLarge as e:
            raise named(path, e) from None
        except Exception as e:  # Pillow raises many types for broken files
            raise NeuratlasError(f"{path} is not a readable image: {e}") from None
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.ndim == 2:
        t = t.unsqueeze(0)
    elif t.ndim == 3 and t.shape[-1] in (1, 3) and t.shape[0] not in (1, 3):
        t = t.permute(2, 0, 1)
    if t.shape != (channels, h, w):
        raise NeuratlasError(f"{path}: expected an image of shape ({channels}, {h}, {w}), got {tuple(t.shape)}")
    if t.dtype != torch.uint8:
        t = (t.float() * (255 if t.max() <= 1 else 1)).clamp(0, 255).to(torch.uint8)
    return 255 - t if invert else t


TASKS.add(
    "classification",
    ImageClassification,
    ClassificationConfig,
    description="image classification: cross-entropy, accuracy/top-5 on held-out data",
)
