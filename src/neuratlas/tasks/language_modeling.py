"""Language modelling: predict every next token of random windows of a corpus; report held-out loss.

Training batch ``i`` is ``batch_size`` windows whose start offsets are drawn from a generator seeded with
(seed, i), so resuming replays exactly the same text. Validation is deterministic: consecutive,
non-overlapping ``block_size`` windows over the held-out split (all of it, or the first ``eval_tokens``),
giving the loss in nats per token, its perplexity and bits per character (nats/token ÷ ln 2 ÷ chars/token;
for a character-level tokenizer that is simply loss / ln 2).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuratlas.data import load_dataset
from neuratlas.data.loaders import seeded_generator
from neuratlas.data.text import TextSplits
from neuratlas.errors import NeuratlasError
from neuratlas.tasks.base import TASKS, Task, model_device
from neuratlas.text.tokenizers import tokenizer_from_dict


@dataclass
class LMConfig:
    eval_tokens: int = 0  # validation tokens to score (0: the whole held-out split)

    def __post_init__(self) -> None:
        if self.eval_tokens < 0:
            raise ValueError("eval_tokens must be ≥ 0 (0 = the whole validation split)")


def windows(data: torch.Tensor, starts: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets (B, block) for windows starting at ``starts``, by one gather."""
    idx = starts[:, None] + torch.arange(block + 1)
    chunk = data[idx]
    return chunk[:, :-1], chunk[:, 1:]


class LanguageModeling(Task):
    Config = LMConfig
    metric = "loss"
    higher_is_better = False
    test_is_val = True  # nanoGPT's 90/10 split: the held-out 10% is both

    def __init__(self, cfg: LMConfig, data_spec: dict[str, Any], seed: int = 0) -> None:
        super().__init__(cfg, data_spec, seed)
        self.data: TextSplits = load_dataset(data_spec)
        dc = self.data.cfg
        self.batch_size, self.block = dc.batch_size, dc.block_size
        if len(self.data.train) <= self.block + 1:
            raise NeuratlasError(f"the training split ({len(self.data.train)} tokens) is shorter than one window")

    def model_defaults(self) -> dict[str, Any]:
        return {"vocab_size": self.data.tokenizer.vocab_size, "max_seq_len": self.block}

    @property
    def steps_per_epoch(self) -> int:
        """One 'epoch' = as many windows as the training split has tokens / block_size."""
        return max(1, len(self.data.train) // (self.batch_size * self.block))

    def train_batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = seeded_generator(self.seed, index)
        starts = torch.randint(len(self.data.train) - self.block - 1, (self.batch_size,), generator=g)
        return windows(self.data.train, starts, self.block)

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = (t.to(self.device) for t in batch)
        logits = model(x)
        return nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()), {}

    def val_windows(self) -> tuple[torch.Tensor, torch.Tensor]:
        val = self.data.val
        if self.cfg.eval_tokens:
            val = val[: self.cfg.eval_tokens + 1]
        n = (len(val) - 1) // self.block
        if n < 1:
            raise NeuratlasError(f"eval_tokens {self.cfg.eval_tokens} is shorter than one block of {self.block}")
        return windows(val, torch.arange(n) * self.block, self.block)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, autocast: AbstractContextManager) -> dict[str, float]:
        """The held-out 10% is both 'val' and 'test' (a 90/10 split, as nanoGPT); 'train' scores the
        first windows of the training text for comparison."""
        if split == "train":
            x, y = windows(
                self.data.train,
                torch.arange(min(64, len(self.data.train) // self.block - 1)) * self.block,
                self.block,
            )
        else:
            x, y = self.val_windows()
        was = model.training
        model.eval()
        total, count = 0.0, 0
        bs = self.data.cfg.eval_batch_size
        for i in range(0, len(x), bs):
            xb, yb = x[i : i + bs].to(self.device), y[i : i + bs].to(self.device)
            with autocast:
                logits = model(xb)
            total += nn.functional.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="sum").item()
            count += yb.numel()
        model.train(was)
        loss = total / count
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "bits_per_char": loss / math.log(2) / self.data.chars_per_token,
            "tokens": float(count),
        }

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"tokenizer": self.data.tokenizer.to_dict(), "dataset": self.data_spec["name"]}

    def describe_data(self) -> str:
        tok = self.data.cfg.tokenizer
        return f"{self.data_spec['name']} {tok} ({len(self.data.train):,}/{len(self.data.val):,} tokens)"

    def example_inputs(self, folder: Path) -> tuple[list[str], dict[str, str]]:
        prompt = self.data.tokenizer.decode(self.data.val[:16].tolist())
        return [prompt], {"max_new_tokens": "8"}

    @dataclass
    class PredictOptions:
        max_new_tokens: int = 200
        temperature: float = 0.8  # 0: greedy
        top_k: int | None = None  # sample among the k most likely tokens only
        top_p: float | None = None  # sample among the most likely tokens whose probabilities sum to p
        seed: int = 0

    @classmethod
    def predict(
        cls, model: nn.Module, extra: dict[str, Any], inputs: list[str], out_dir: str, options: PredictOptions
    ) -> list[str]:
        """Continue each prompt."""
        tok = tokenizer_from_dict(extra["tokenizer"])
        device = model_device(model)
        g = torch.Generator(device).manual_seed(options.seed)
        lines = []
        for prompt in inputs:
            ids = torch.tensor([tok.encode(prompt)], device=device)
            out = model.generate(
                ids,
                options.max_new_tokens,
                temperature=options.temperature,
                top_k=options.top_k,
                top_p=options.top_p,
                stop_tokens=[tok.eot_id] if tok.eot_id is not None else (),
                generator=g,
            )
            lines.append(tok.decode(out[0].tolist()))
        return lines


TASKS.add(
    "language-modeling",
    LanguageModeling,
    LMConfig,
    aliases=("language_modeling",),  # the name runs were saved under before names took hyphens
    description="next-token prediction; val loss (nats/token), perplexity, bits per character",
)
