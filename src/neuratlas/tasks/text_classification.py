"""Text classification (BERT fine-tuning): labelled texts in, class probabilities out; held-out accuracy.

Texts are tokenized once into padded (ids, attention mask) tensors, so batches are plain tensor indexing;
the model is called as ``model(ids, attention_mask)`` and returns class logits.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuratlas.data import load_dataset
from neuratlas.data.loaders import TensorBatches
from neuratlas.data.text import TextClassSplits, encode_padded
from neuratlas.tasks.base import TASKS, Task, model_device
from neuratlas.tasks.classification import accuracy
from neuratlas.text.tokenizers import tokenizer_from_dict


@dataclass
class TextClassificationConfig:
    label_smoothing: float = 0.0


class TextClassification(Task):
    Config = TextClassificationConfig
    metric = "accuracy"
    higher_is_better = True

    def __init__(self, cfg: TextClassificationConfig, data_spec: dict[str, Any], seed: int = 0) -> None:
        super().__init__(cfg, data_spec, seed)
        self.data: TextClassSplits = load_dataset(data_spec)
        self.batch_size = self.data.cfg.batch_size
        self.train_batches = TensorBatches(self.data.train, self.batch_size, seed=seed)

    def model_defaults(self) -> dict[str, Any]:
        return {"num_classes": len(self.data.classes), "vocab_size": self.data.tokenizer.vocab_size}

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        ids, mask, y = (t.to(self.device) for t in batch)
        logits = model(ids, mask)
        return nn.functional.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing), {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, autocast: AbstractContextManager) -> dict[str, float]:
        tensors = {"train": self.data.train, "val": self.data.val, "test": self.data.test}[split]
        was = model.training
        model.eval()
        outs = []
        for ids, mask, _ in TensorBatches(tensors, self.data.cfg.eval_batch_size, shuffle=False, drop_last=False):
            with autocast:
                outs.append(model(ids.to(self.device), mask.to(self.device)).float())
        model.train(was)
        logits, y = torch.cat(outs), tensors[2].to(self.device)
        return {"loss": nn.functional.cross_entropy(logits, y).item(), "accuracy": accuracy(logits, y)}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {
            "classes": self.data.classes,
            "tokenizer": self.data.tokenizer.to_dict(),
            "max_len": self.data.cfg.max_len,
            "dataset": self.data_spec["name"],
        }

    def describe_data(self) -> str:
        n = [len(s[0]) for s in (self.data.train, self.data.val, self.data.test)]
        return f"{self.data_spec['name']} ({n[0]:,}/{n[1]:,}/{n[2]:,})"

    def example_inputs(self, folder: Path) -> tuple[list[str], dict[str, str]]:
        ids, mask, _ = self.data.val
        return [self.data.tokenizer.decode(ids[0][mask[0].bool()].tolist())], {}

    @classmethod
    def predict(
        cls, model: nn.Module, extra: dict[str, Any], inputs: list[str], out_dir: str, options: Task.PredictOptions
    ) -> list[str]:
        """Classify each input text; prints the probability of every class."""
        tok = tokenizer_from_dict(extra["tokenizer"])
        ids, mask = encode_padded(tok, inputs, extra["max_len"])
        ids, mask = ids.to(model_device(model)), mask.to(model_device(model))
        model.eval()
        with torch.no_grad():
            probs = model(ids, mask).softmax(-1).float().cpu()
        return [
            f"{text!r}: " + ", ".join(f"{c} {p:.1%}" for c, p in zip(extra["classes"], row.tolist()))
            for text, row in zip(inputs, probs)
        ]


TASKS.add(
    "text-classification",
    TextClassification,
    TextClassificationConfig,
    aliases=("text_classification",),  # the name runs were saved under before names took hyphens
    description="text classification (BERT fine-tuning): cross-entropy, accuracy on held-out texts",
)
