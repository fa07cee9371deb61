"""Contrastive image–text learning (CLIP): symmetric InfoNCE in training; zero-shot classification and
retrieval recall@k on held-out pairs in evaluation.

- Training batches are (images, captions, groups); each image's caption uses a template drawn per batch from
  a generator seeded by (seed, batch index), so batches stay a pure function of the index (exact resume).
- ``zero_shot_accuracy``: each held-out image is assigned to the split's name/class whose caption embedding,
  averaged over all templates (CLIP's prompt ensembling), is most similar — text prompts alone, no classifier
  trained on labels. For emoji the split's names were never seen in training.
- ``i2t_recall@k`` / ``t2i_recall@k``: held-out pairs (image, caption); a hit when one of the top-k retrieved
  items describes the same group (for emoji every group is one name, so this is standard retrieval).
"""

from __future__ import annotations

import textwrap
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from neuratlas.data import load_dataset
from neuratlas.data.image_text import ImageTextSplits, encode_captions
from neuratlas.data.loaders import TensorBatches, seeded_generator
from neuratlas.data.transforms import normalize, random_crop, random_hflip
from neuratlas.errors import NeuratlasError
from neuratlas.models.clip import clip_loss
from neuratlas.plotting import panel_grid, save_png
from neuratlas.tasks.base import TASKS, Task, describe_splits, model_device, write_image
from neuratlas.text.tokenizers import tokenizer_from_dict

KS = (1, 5, 10)


@dataclass
class ContrastiveConfig:
    group_positives: bool = True  # pairs whose captions describe the same group are positives (see clip_loss)
    metric: Literal[
        "zero_shot_accuracy",
        "loss",
        "i2t_recall@1",
        "i2t_recall@5",
        "i2t_recall@10",
        "t2i_recall@1",
        "t2i_recall@5",
        "t2i_recall@10",
    ] = "zero_shot_accuracy"
    retrieval_size: int = 1000  # held-out pairs used for retrieval (the first N of the split)

    def __post_init__(self) -> None:
        valid = ["zero_shot_accuracy", "loss"] + [f"{d}_recall@{k}" for d in ("i2t", "t2i") for k in KS]
        if self.metric not in valid:
            raise ValueError(f"metric must be one of {', '.join(valid)}, got {self.metric!r}")
        if self.retrieval_size < 2:
            raise ValueError("retrieval_size must be at least 2")


def retrieval_recall(
    sim: torch.Tensor, query_groups: torch.Tensor, item_groups: torch.Tensor, ks: tuple[int, ...] = KS
) -> dict[int, float]:
    """Fraction of queries (rows of ``sim``) with an item of their own group among the top-k columns."""
    order = sim.topk(min(max(ks), sim.shape[1]), dim=1).indices
    hit = item_groups[order] == query_groups[:, None]  # (Q, kmax)
    return {k: hit[:, :k].any(1).float().mean().item() for k in ks}


class ContrastiveImageText(Task):
    Config = ContrastiveConfig
    metric = "zero_shot_accuracy"
    higher_is_better = True

    def __init__(self, cfg: ContrastiveConfig, data_spec: dict[str, Any], seed: int = 0) -> None:
        super().__init__(cfg, data_spec, seed)
        self.data: ImageTextSplits = load_dataset(data_spec)
        if not isinstance(self.data, ImageTextSplits):
            raise NeuratlasError(
                f"task contrastive needs an image–text data set (fashion-mnist-captions, "
                f"emoji-names), not {data_spec.get('name')!r}"
            )
        self.metric = cfg.metric
        self.higher_is_better = cfg.metric != "loss"
        self.train_batches = TensorBatches(
            self.data.train, self.data.cfg.batch_size, seed=seed, transform=self._augment
        )
        self.batch_size = self.train_batches.batch_size

    def _augment(self, batch: tuple[torch.Tensor, ...], g: torch.Generator) -> tuple[torch.Tensor, ...]:
        x, groups = batch
        dc = self.data.cfg
        if dc.crop_padding:
            x = random_crop(x, dc.crop_padding, g)
        if dc.hflip:
            x = random_hflip(x, g)
        template = torch.randint(0, len(self.data.templates), (len(groups),), generator=g)
        return x, self.data.tokens[groups, template], groups

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.data.mean, self.data.std).to(self.device, memory_format=self.memory_format)

    def model_defaults(self) -> dict[str, Any]:
        c, h, _ = self.data.shape
        return {
            "in_chans": c,
            "img_size": h,
            "vocab_size": self.data.tokenizer.vocab_size,
            "pad_id": self.data.pad_id,
            "context_length": self.data.tokens.shape[-1],
        }

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        x, ids, groups = batch
        logits = model(self.prepare(x), ids.to(self.device))
        loss = clip_loss(logits, groups.to(self.device) if self.cfg.group_positives else None)
        return loss, {"logit_scale": _unwrap(model).scale().detach().item()}

    @torch.no_grad()
    def embed(self, model: nn.Module, split: str, autocast: AbstractContextManager) -> dict[str, torch.Tensor]:
        """Image embeddings of a split, its groups, and the template-averaged embedding of each group."""
        m = _unwrap(model)
        was = m.training
        m.eval()
        x, groups = {"train": self.data.train, "val": self.data.val, "test": self.data.test}[split]
        bs = self.data.cfg.eval_batch_size
        with autocast:
            img = torch.cat([m.encode_image(self.prepare(x[i : i + bs])) for i in range(0, len(x), bs)])
            classes = groups.unique()  # sorted group ids present in this split
            ids = self.data.tokens[classes].flatten(0, 1).to(self.device)
            txt = torch.cat([m.encode_text(ids[i : i + bs]) for i in range(0, len(ids), bs)])
        txt = txt.view(len(classes), len(self.data.templates), -1)
        m.train(was)
        return {
            "images": img,
            "groups": groups.to(img.device),
            "classes": classes.to(img.device),
            "captions": txt,
            "class_emb": nn.functional.normalize(txt.mean(1), dim=-1),
        }

    def evaluate(self, model: nn.Module, split: str, autocast: AbstractContextManager) -> dict[str, float]:
        e = self.embed(model, split, autocast)
        m = _unwrap(model)
        label = torch.searchsorted(e["classes"], e["groups"])  # index of each image's group among the classes
        zero_shot = (m.similarity(e["images"], e["class_emb"]).argmax(1) == label).float().mean().item()
        # Held-out pairs: the first N images, each with one caption (template drawn with a fixed seed).
        n = min(self.cfg.retrieval_size, len(label))
        g = seeded_generator(self.seed, 104729)
        template = torch.randint(0, len(self.data.templates), (n,), generator=g).to(label.device)
        img, grp = e["images"][:n], e["groups"][:n]
        txt = e["captions"][label[:n], template]
        sim = m.similarity(img, txt)
        out = {
            "loss": clip_loss(sim, grp if self.cfg.group_positives else None).item(),
            "zero_shot_accuracy": zero_shot,
            "zero_shot_chance": 1.0 / len(e["classes"]),
            "logit_scale": m.scale().detach().item(),
        }
        for direction, s in (("i2t", sim), ("t2i", sim.T)):
            for k, v in retrieval_recall(s, grp, grp).items():
                out[f"{direction}_recall@{k}"] = v
        return out

    def on_fit_end(self, trainer, result) -> None:
        """Draw the zero-shot predictions on test images beside the run's curves."""
        picture = self.plot_zero_shot(trainer.eval_model, "test", result.run_dir / "zero_shot.png")
        result.notes.append(f"zero-shot predictions on test images: {picture}")

    def plot_zero_shot(self, model: nn.Module, split: str, path: str | Path, n: int = 24) -> Path:
        """A PNG of the first ``n`` held-out images titled with their zero-shot prediction (green when right)."""
        e = self.embed(model, split, nullcontext())
        pred = e["classes"][_unwrap(model).similarity(e["images"][:n], e["class_emb"]).argmax(1)].cpu()
        x = {"train": self.data.train, "val": self.data.val, "test": self.data.test}[split][0][:n]
        fig, axes = panel_grid(len(x), (2.2, 2.3), max_cols=6)
        for ax in axes:
            ax.axis("off")
        for ax, img, p, g in zip(axes, x, pred.tolist(), e["groups"][:n].cpu().tolist()):
            ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if img.shape[0] == 1 else None)
            title = textwrap.shorten(self.data.names[p], 30)
            if p != g:
                title += f"\n(true: {textwrap.shorten(self.data.names[g], 30)})"
            ax.set_title(title, fontsize=7, color="green" if p == g else "red")
        fig.suptitle(
            f"zero-shot on {split} ({self.data_spec['name']}): prompts only, {len(e['classes'])} candidate names",
            fontsize=9,
        )
        fig.tight_layout()
        return save_png(fig, path)

    def checkpoint_extra(self) -> dict[str, Any]:
        c, h, w = self.data.shape
        test_groups = self.data.test[1].unique().tolist()
        return {
            "tokenizer": self.data.tokenizer.to_dict(),
            "templates": self.data.templates,
            "classes": [self.data.names[i] for i in test_groups],
            "mean": list(self.data.mean),
            "std": list(self.data.std),
            "input_shape": [c, h, w],
            "dataset": self.data_spec["name"],
        }

    def describe_data(self) -> str:
        return describe_splits(self.data_spec["name"], self.data)

    def example_inputs(self, folder: Path) -> tuple[list[str], dict[str, str]]:
        return [write_image(self.data.test[0][0], folder / "example.png")], {}

    @dataclass
    class PredictOptions:
        labels: list[str] = field(default_factory=list)  # class names to choose among (default: the run's classes)

    @classmethod
    def predict(
        cls, model: nn.Module, extra: dict[str, Any], inputs: list[str], out_dir: str, options: PredictOptions
    ) -> list[str]:
        """Zero-shot classify image files among ``--labels a,b,c`` (default: the checkpoint's test names)."""
        from neuratlas.tasks.classification import load_image

        c, h, w = extra["input_shape"]
        labels = [s.strip() for s in options.labels] or extra["classes"]
        tok = tokenizer_from_dict(extra["tokenizer"])
        texts = [t.format(name.lower()) for name in labels for t in extra["templates"]]
        ids = encode_captions(tok, texts)
        if ids.shape[1] > model.cfg.context_length:
            raise NeuratlasError(f"a label is too long for this model's context of {model.cfg.context_length}")
        device = model_device(model)
        x = torch.stack([load_image(p, c, h, w) for p in inputs]).to(device)
        model.eval()
        with torch.no_grad():
            txt = model.encode_text(ids.to(device)).view(len(labels), len(extra["templates"]), -1).mean(1)
            probs = (
                model.similarity(
                    model.encode_image(normalize(x, tuple(extra["mean"]), tuple(extra["std"]))),
                    nn.functional.normalize(txt, dim=-1),
                )
                .softmax(-1)
                .float()
                .cpu()
            )
        lines = []
        for path, p in zip(inputs, probs):
            top = p.topk(min(3, len(p)))
            lines.append(
                f"{path}: "
                + ", ".join(f"{labels[i]} {v:.1%}" for v, i in zip(top.values.tolist(), top.indices.tolist()))
            )
        return lines


def _unwrap(model: nn.Module) -> nn.Module:
    """The CLIP module under torch.compile / DDP wrappers."""
    for attr in ("_orig_mod", "module"):
        model = getattr(model, attr, model)
    return model


TASKS.add(
    "contrastive",
    ContrastiveImageText,
    ContrastiveConfig,
    description="CLIP image–text contrastive learning: zero-shot accuracy and retrieval recall@k",
)
