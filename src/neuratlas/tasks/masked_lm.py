"""Masked-language modelling (BERT pretraining): hide 15% of the tokens and predict them from both sides.

Of the chosen tokens 80% become ``[MASK]``, 10% a random token and 10% stay as they are (Devlin et al.
2019, §3.1), so the model cannot rely on seeing ``[MASK]`` at fine-tuning time. The corpus and windows are
the language-modelling ones; ``[MASK]`` is one extra id after the tokenizer's vocabulary.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuratlas.data.loaders import seeded_generator
from neuratlas.tasks.base import TASKS, model_device
from neuratlas.tasks.language_modeling import LanguageModeling, windows

IGNORE = -100  # label of positions that are not predicted


@dataclass
class MLMConfig:
    mask_prob: float = 0.15
    eval_tokens: int = 65536  # validation tokens scored (0: the whole held-out split)

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")


def mask_tokens(
    ids: torch.Tensor, mask_id: int, vocab_size: int, g: torch.Generator | None = None, p: float = 0.15
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels): each token chosen with probability ``p``; chosen ones are [MASK] 80%, a random
    token 10%, unchanged 10%; labels hold the original id where chosen and -100 elsewhere."""
    chosen = torch.rand(ids.shape, generator=g) < p
    r = torch.rand(ids.shape, generator=g)
    inputs = ids.clone()
    inputs[chosen & (r < 0.8)] = mask_id
    rand = chosen & (r >= 0.8) & (r < 0.9)
    inputs[rand] = torch.randint(vocab_size, ids.shape, generator=g)[rand]
    return inputs, torch.where(chosen, ids, torch.full_like(ids, IGNORE))


class MaskedLM(LanguageModeling):
    Config = MLMConfig

    @property
    def mask_id(self) -> int:
        return self.data.tokenizer.vocab_size

    def model_defaults(self) -> dict[str, Any]:
        return {"vocab_size": self.data.tokenizer.vocab_size + 1, "max_seq_len": self.block, "num_classes": 0}

    def train_batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = super().train_batch(index)
        return mask_tokens(
            x,
            self.mask_id,
            self.data.tokenizer.vocab_size,
            seeded_generator(self.seed, 31, index),
            self.cfg.mask_prob,
        )

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = (t.to(self.device) for t in batch)
        logits = model(x)
        return nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE), {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, autocast: AbstractContextManager) -> dict[str, float]:
        """Loss and accuracy on the masked positions of fixed windows with a fixed masking (seed 1234)."""
        x, _ = self.val_windows()
        x, y = mask_tokens(x, self.mask_id, self.data.tokenizer.vocab_size, seeded_generator(1234), self.cfg.mask_prob)
        was = model.training
        model.eval()
        total, correct, count = 0.0, 0, 0
        bs = self.data.cfg.eval_batch_size
        for i in range(0, len(x), bs):
            xb, yb = x[i : i + bs].to(self.device), y[i : i + bs].to(self.device)
            with autocast:
                logits = model(xb)
            sel = yb != IGNORE
            total += nn.functional.cross_entropy(logits[sel].float(), yb[sel], reduction="sum").item()
            correct += (logits[sel].argmax(-1) == yb[sel]).sum().item()
            count += int(sel.sum())
        model.train(was)
        return {"loss": total / count, "masked_accuracy": correct / count, "masked_tokens": float(count)}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {**super().checkpoint_extra(), "mask_id": self.mask_id}

    def example_inputs(self, folder: Path) -> tuple[list[str], dict[str, str]]:
        text = self.data.tokenizer.decode(self.data.val[:24].tolist())
        return [text[:10] + "_" + text[11:]], {}

    @dataclass
    class PredictOptions:
        """Filling in masked characters takes no options."""

    @classmethod
    def predict(
        cls, model: nn.Module, extra: dict[str, Any], inputs: list[str], out_dir: str, options: PredictOptions
    ) -> list[str]:
        """Fill in '_' characters (char-level) of each input with the model's most likely tokens."""
        from neuratlas.text.tokenizers import tokenizer_from_dict

        tok = tokenizer_from_dict(extra["tokenizer"])
        lines = []
        model.eval()
        for text in inputs:
            parts = text.split("_")
            ids, holes = [], []
            for j, part in enumerate(parts):
                ids += tok.encode(part)
                if j < len(parts) - 1:
                    holes.append(len(ids))
                    ids.append(extra["mask_id"])
            x = torch.tensor([ids], device=model_device(model))
            with torch.no_grad():
                pred = model(x)[0].argmax(-1)
            for h in holes:
                ids[h] = int(pred[h])
            lines.append(tok.decode(ids))
        return lines


TASKS.add(
    "masked-lm",
    MaskedLM,
    MLMConfig,
    aliases=("masked_lm",),  # the name runs were saved under before names took hyphens
    description="BERT pretraining: 15% of tokens masked (80/10/10); masked-token loss and accuracy",
)

__all__ = ["MaskedLM", "mask_tokens", "windows"]
