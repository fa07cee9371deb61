"""Next-token sampling shared by every generative sequence model (GPT, the RNN language models, ...)."""

from __future__ import annotations

import torch


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of (B, V) logits: greedy at temperature 0, else softmax(logits / T) sampling
    restricted to the ``top_k`` most likely tokens and/or the smallest set whose probability ≥ ``top_p``."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # tokens after the nucleus is already full
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def penalize_repetition(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make the tokens in ``seen`` (B, S) less likely: their positive logits divided by ``penalty``, their
    negative ones multiplied (CTRL's repetition penalty, Keskar et al. 2019; the form ``transformers`` uses)."""
    if penalty <= 0:
        raise ValueError(f"repetition penalty must be positive, got {penalty}")
    score = logits.gather(-1, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(-1, seen, score)
