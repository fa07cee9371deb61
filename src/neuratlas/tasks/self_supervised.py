"""Self-supervised pretraining on unlabelled images: the labels come from the data itself.

- ``rotation`` (Gidaris et al. 2018): rotate each image by 0/90/180/270° and predict which; the model's
  classifier has 4 outputs.
- ``simclr`` (Chen et al. 2020): two random augmentations of each image; the NT-Xent loss pulls the pair
  together and pushes the other 2N-2 views away; the model's classifier is the (linear) projection head.
- Masked-language modelling, the text counterpart, is the BERT work in ``models/transformer.py``.

The representation is the input of the model's ``classifier`` (the pooled features). The headline metric
is a **linear probe**: a logistic regression trained on frozen features of ``probe_train`` labelled training
images, scored on the val/test split. ``linear_probe`` and ``embed`` are reused by ``bench/ssl.py``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from neuratlas.data import load_dataset
from neuratlas.data.images import ImageSplits
from neuratlas.data.loaders import TensorBatches
from neuratlas.data.transforms import normalize, random_erase, random_hflip
from neuratlas.errors import NeuratlasError
from neuratlas.tasks.base import TASKS, Task, model_device, write_image

# --- augmentations and losses -------------------------------------------------------------------------


def rotate_batch(x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each image by a random multiple of 90°; the multiple is the label."""
    k = torch.randint(0, 4, (x.shape[0],), generator=g)
    out = x.clone()
    for r in range(1, 4):  # 3 vectorised rotations, not a loop over images
        sel = k == r
        out[sel] = torch.rot90(x[sel], r, dims=(-2, -1))
    return out, k


def random_resized_crop(
    x: torch.Tensor,
    g: torch.Generator,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (0.75, 1.33),
) -> torch.Tensor:
    """Crop a random box (area fraction in ``scale``) from each image and resize it back, via one
    ``affine_grid``/``grid_sample`` over the batch."""
    b = x.shape[0]
    area = torch.empty(b).uniform_(*scale, generator=g)
    logr = torch.empty(b).uniform_(
        torch.tensor(ratio).log()[0].item(), torch.tensor(ratio).log()[1].item(), generator=g
    )
    sx = (area * logr.exp()).sqrt().clamp(max=1.0)
    sy = (area / logr.exp()).sqrt().clamp(max=1.0)
    tx = (torch.rand(b, generator=g) * 2 - 1) * (1 - sx)
    ty = (torch.rand(b, generator=g) * 2 - 1) * (1 - sy)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, sy, ty
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def simclr_view(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One SimCLR view of uint8 images: crop-resize, flip, brightness/contrast jitter, cutout; [0, 1]."""
    x = x.float() / 255
    x = random_hflip(random_resized_crop(x, g), g)
    b = x.shape[0]
    bright = 1 + (torch.rand(b, 1, 1, 1, generator=g) - 0.5) * 0.8
    contrast = 1 + (torch.rand(b, 1, 1, 1, generator=g) - 0.5) * 0.8
    mean = x.mean((1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean) * bright
    return random_erase(x.clamp(0, 1), g, p=0.3, max_frac=0.5)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> tuple[torch.Tensor, float]:
    """NT-Xent: for each of the 2N views the positive is its pair, the negatives the other 2N-2 views.
    Returns the loss and the top-1 accuracy of finding the positive."""
    z = nn.functional.normalize(torch.cat([z1, z2]).float(), dim=-1)  # (2N, D)
    n = z1.shape[0]
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))  # a view is not its own positive
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return nn.functional.cross_entropy(sim, target), (sim.argmax(-1) == target).float().mean().item()


# --- representations and the linear probe --------------------------------------------------------------


@torch.no_grad()
def embed(
    model: nn.Module, x: torch.Tensor, prepare, batch: int = 1000, autocast: AbstractContextManager | None = None
) -> torch.Tensor:
    """The input of ``model.classifier`` (pooled features) for uint8 images ``x``, in eval mode."""
    head = getattr(model, "classifier", None)
    if head is None:
        raise NeuratlasError(
            f"{type(model).__name__} has no `classifier`; self-supervised tasks need an "
            "image classifier from the registry"
        )
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].float()))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch):
            with autocast or nullcontext():
                model(prepare(x[i : i + batch]))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured)


def linear_probe(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    eval_f: torch.Tensor,
    eval_y: torch.Tensor,
    num_classes: int,
    steps: int = 300,
    weight_decay: float = 1e-4,
) -> float:
    """Multinomial logistic regression on standardised frozen features (full-batch L-BFGS); returns the
    accuracy on the evaluation features."""
    mu, sd = train_f.mean(0), train_f.std(0) + 1e-6
    a, b = (train_f - mu) / sd, (eval_f - mu) / sd
    torch.manual_seed(0)
    clf = nn.Linear(a.shape[1], num_classes)
    opt = torch.optim.LBFGS(clf.parameters(), lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(clf(a), train_y) + weight_decay * clf.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return (clf(b).argmax(-1) == eval_y).float().mean().item()


# --- the task -----------------------------------------------------------------------------------------


@dataclass
class SelfSupervisedConfig:
    method: Literal["rotation", "simclr"] = "rotation"
    temperature: float = 0.5  # simclr
    probe_train: int = 10000  # labelled training images the linear probe is fitted on

    def __post_init__(self) -> None:
        if self.method not in ("rotation", "simclr"):
            raise ValueError(f"method must be 'rotation' or 'simclr', got {self.method!r}")


class SelfSupervised(Task):
    Config = SelfSupervisedConfig
    metric = "probe_accuracy"
    higher_is_better = True

    def __init__(self, cfg: SelfSupervisedConfig, data_spec: dict[str, Any], seed: int = 0) -> None:
        super().__init__(cfg, data_spec, seed)
        self.data: ImageSplits = load_dataset(data_spec)
        # labels are dropped: pretraining sees images only
        self.train_batches = TensorBatches((self.data.train[0],), self.data.cfg.batch_size, seed=seed)
        # an unlabelled folder has one pseudo-class: no probe to fit, the held-out pretext score is the metric
        self.labelled = len(self.data.classes) > 1
        if not self.labelled:
            self.metric = "rotation_accuracy" if cfg.method == "rotation" else "pair_accuracy"

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.data.mean, self.data.std).to(self.device, memory_format=self.memory_format)

    def model_defaults(self) -> dict[str, Any]:
        c, h, w = self.data.shape
        out = 4 if self.cfg.method == "rotation" else 128
        return {"num_classes": out, "in_chans": c, "img_size": h, "in_features": c * h * w}

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_batches)

    def train_batch(self, index: int):
        (x,) = self.train_batches.get(index)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)  # views depend on (seed, index) only
        if self.cfg.method == "rotation":
            return rotate_batch(x, g)
        return simclr_view(x, g), simclr_view(x, g)

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        if self.cfg.method == "rotation":
            x, k = batch
            logits = model(self.prepare(x))
            k = k.to(logits.device)
            acc = (logits.argmax(-1) == k).float().mean().item()
            return nn.functional.cross_entropy(logits, k), {"rot_acc": acc}
        v1, v2 = batch
        z = model(self.prepare(torch.cat([v1, v2])))  # one pass: BN sees both views together
        loss, acc = nt_xent(*z.chunk(2), temperature=self.cfg.temperature)
        return loss, {"pair_acc": acc}

    def evaluate(self, model: nn.Module, split: str, autocast: AbstractContextManager) -> dict[str, float]:
        xs, ys = {"val": self.data.val, "test": self.data.test, "train": self.data.train}[split]
        out = {}
        if self.labelled:
            n = min(self.cfg.probe_train, len(self.data.train[0]))
            tx, ty = self.data.train[0][:n], self.data.train[1][:n]
            f_train = embed(model, tx, self.prepare, autocast=autocast).cpu()
            f_eval = embed(model, xs, self.prepare, autocast=autocast).cpu()
            out["probe_accuracy"] = linear_probe(f_train, ty, f_eval, ys, len(self.data.classes))
        if self.cfg.method == "rotation":  # the pretext accuracy, on the held-out images
            g = torch.Generator().manual_seed(1234)
            xr, k = rotate_batch(xs[:2000], g)
            with torch.no_grad(), autocast:
                was = model.training
                model.eval()
                pred = model(self.prepare(xr)).argmax(-1).cpu()
                out["rotation_accuracy"] = (pred == k).float().mean().item()
                model.train(was)
        elif not self.labelled:  # SimCLR's pretext: each held-out view finds its partner among 2N - 1
            g = torch.Generator().manual_seed(1234)
            x = xs[:1000]
            with torch.no_grad(), autocast:
                was = model.training
                model.eval()
                z = model(self.prepare(torch.cat([simclr_view(x, g), simclr_view(x, g)]))).float()
                model.train(was)
            out["pair_accuracy"] = nt_xent(*z.chunk(2), temperature=self.cfg.temperature)[1]
        return out

    @classmethod
    def predict(
        cls, model: nn.Module, extra: dict[str, Any], inputs: list[str], out_dir: str, options: dict[str, str]
    ) -> list[str]:
        """What a pretrained encoder gives for each image: with ``rotation``, the rotation it sees; with
        ``simclr``, its embedding, written as ``<name>.npy`` for downstream use."""
        from neuratlas.tasks.classification import load_image

        c, h, w = extra["input_shape"]
        x = normalize(torch.stack([load_image(p, c, h, w) for p in inputs]), tuple(extra["mean"]), tuple(extra["std"]))
        with torch.no_grad():
            out = model(x.to(model_device(model))).float().cpu()
        lines = []
        for path, row in zip(inputs, out):
            if extra["method"] == "rotation":
                p = row.softmax(-1)
                lines.append(f"{path}: rotated {90 * int(p.argmax())}° ({float(p.max()):.1%})")
            else:
                target = Path(out_dir) / f"{Path(path).stem}.npy"
                np.save(target, row.numpy())
                lines.append(f"{path}: embedding ({row.numel()} values, norm {float(row.norm()):.3f}) → {target}")
        return lines

    def checkpoint_extra(self) -> dict[str, Any]:
        c, h, w = self.data.shape
        return {
            "method": self.cfg.method,
            "classes": self.data.classes,
            "mean": list(self.data.mean),
            "std": list(self.data.std),
            "input_shape": [c, h, w],
            "dataset": self.data_spec["name"],
        }

    def describe_data(self) -> str:
        n = [len(s[0]) for s in (self.data.train, self.data.val, self.data.test)]
        if getattr(self.data, "summary", ""):
            return self.data.summary
        return f"{self.data_spec['name']} unlabelled ({n[0]:,}/{n[1]:,}/{n[2]:,})"

    def example_inputs(self, folder: Path) -> tuple[list[str], dict[str, str]]:
        return [write_image(self.data.test[0][0], folder / "example.png")], {}


TASKS.add(
    "self-supervised",
    SelfSupervised,
    SelfSupervisedConfig,
    description="self-supervised pretraining (rotation / SimCLR); metric: linear-probe accuracy",
)
