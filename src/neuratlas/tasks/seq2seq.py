"""Sequence-to-sequence: grapheme-to-phoneme conversion with an encoder–decoder, judged on held-out words.

Training is teacher forcing: the decoder reads the target shifted right (``<s> p1 .. pn``) and predicts it
shifted left (``p1 .. pn </s>``), padding ignored, optionally with label smoothing (0.1 in the 2017 paper).
Evaluation decodes every held-out word (greedy, or beam search with ``beam_size > 1``) and reports

- ``wer``: word error rate, the fraction of words whose prediction matches none of its reference
  pronunciations (CMUdict lists several for ~7% of words);
- ``per``: phoneme error rate, Levenshtein distance to the closest reference over that reference's length,
  summed over words.

Decoding works on any model with ``start_decoding(src, max_len, use_cache)`` / ``decode_step(tokens,
state)`` and a ``state.reorder(index)`` (see ``models/encoder_decoder.py``); all sequences of a batch (and
all beams) advance together, so there is no Python loop over sequences.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from neuratlas.data import load_dataset
from neuratlas.data.cmudict import BOS, EOS, PAD, G2PData, HeldOut, decode_phonemes, encode_words
from neuratlas.data.loaders import TensorBatches
from neuratlas.errors import NeuratlasError
from neuratlas.tasks.base import TASKS, Task, model_device


@dataclass
class Seq2SeqConfig:
    label_smoothing: float = 0.0
    beam_size: int = 1  # decoding used for evaluation: 1 = greedy
    length_penalty: float = 0.0  # GNMT alpha: final beams ranked by logp / ((5 + len) / 6)^alpha
    max_len: int | None = None  # longest output; default: the longest training pronunciation + 1
    val_words: int | None = None  # decode only the first N validation words during training (speed)

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be ≥ 1, got {self.beam_size}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


# --- decoding ----------------------------------------------------------------------------------------------


def _next_logprobs(model: nn.Module, tokens: torch.Tensor, state: Any, finished: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (N, V) of the next token; a finished row may only continue with <pad> (at no cost),
    an unfinished one never emits <pad> or <s>."""
    logp = model.decode_step(tokens, state).float().log_softmax(-1)
    logp[:, BOS] = float("-inf")
    logp[:, PAD] = float("-inf")
    logp[finished] = float("-inf")
    logp[finished, PAD] = 0.0
    return logp


@torch.no_grad()
def greedy_decode(
    model: nn.Module, src: torch.Tensor, max_len: int, use_cache: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Most likely token at every step. Returns tokens (B, L) ending in </s> then <pad>, and log-probs (B,)."""
    state = model.start_decoding(src, max_len + 1, use_cache=use_cache)
    b = len(src)
    tokens = torch.full((b, 1), BOS, dtype=torch.long, device=src.device)
    score = torch.zeros(b, device=src.device)
    finished = torch.zeros(b, dtype=torch.bool, device=src.device)
    for _ in range(max_len):
        logp = _next_logprobs(model, tokens[:, -1], state, finished)
        best, nxt = logp.max(-1)
        score += best
        tokens = torch.cat([tokens, nxt[:, None]], 1)
        finished |= nxt == EOS
        if finished.all():
            break
    return tokens[:, 1:], score


@torch.no_grad()
def beam_search(
    model: nn.Module,
    src: torch.Tensor,
    max_len: int,
    beam_size: int = 4,
    length_penalty: float = 0.0,
    use_cache: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched beam search: all B×K hypotheses advance in one decoder call per step.

    Returns tokens (B, K, L) and scores (B, K) sorted best first. A score is the hypothesis' total
    log-probability, divided by the GNMT length penalty when ``length_penalty > 0``.
    """
    b, k = len(src), beam_size
    dev = src.device
    state = model.start_decoding(src, max_len + 1, use_cache=use_cache)
    state.reorder(torch.arange(b, device=dev).repeat_interleave(k))  # K copies of each sequence
    tokens = torch.full((b * k, 1), BOS, dtype=torch.long, device=dev)
    scores = torch.zeros(b, k, device=dev)
    scores[:, 1:] = float("-inf")  # all K beams start identical: expand only the first
    finished = torch.zeros(b * k, dtype=torch.bool, device=dev)
    for _ in range(max_len):
        logp = _next_logprobs(model, tokens[:, -1], state, finished)  # (B·K, V)
        v = logp.shape[-1]
        cand = (scores.view(-1, 1) + logp).view(b, k * v)
        scores, flat = cand.topk(k, dim=-1)  # (B, K), sorted best first
        rows = (torch.arange(b, device=dev)[:, None] * k + flat // v).view(-1)
        tokens = torch.cat([tokens[rows], (flat % v).view(-1, 1)], 1)
        finished = finished[rows] | (tokens[:, -1] == EOS)
        state.reorder(rows)
        if finished.all():
            break
    tokens = tokens[:, 1:].view(b, k, -1)
    if length_penalty > 0:
        lengths = output_lengths(tokens.view(b * k, -1)).view(b, k).float() + 1  # + </s>
        scores = scores / ((5 + lengths) / 6) ** length_penalty
        scores, order = scores.sort(-1, descending=True)
        tokens = tokens.gather(1, order[..., None].expand_as(tokens))
    return tokens, scores


@torch.no_grad()
def sequence_logprob(model: nn.Module, src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Total log-probability (B,) of outputs ``out`` (B, L) up to and including their </s>, by teacher forcing
    (the full recomputation that beam scores must equal)."""
    tgt_in = torch.cat([torch.full_like(out[:, :1], BOS), out[:, :-1]], 1)
    logp = model(src, tgt_in).float().log_softmax(-1).gather(-1, out[..., None]).squeeze(-1)
    keep = torch.arange(out.shape[1], device=out.device) <= output_lengths(out)[:, None]
    return (logp * keep).sum(-1)


# --- metrics -----------------------------------------------------------------------------------------------


def output_lengths(tokens: torch.Tensor) -> torch.Tensor:
    """Number of tokens before the first </s> or <pad> (the whole row when there is none)."""
    stop = (tokens == EOS) | (tokens == PAD)
    idx = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    return torch.where(stop, idx, tokens.shape[1]).min(-1).values


def edit_distance(a: torch.Tensor, a_len: torch.Tensor, b: torch.Tensor, b_len: torch.Tensor) -> torch.Tensor:
    """Levenshtein distance between the rows of a (N, La) and b (N, Lb), cut at a_len/b_len, all rows at once.

    Row i of the DP table: d[i][j] = min(d[i-1][j] + 1, d[i-1][j-1] + [a_i != b_j], d[i][j-1] + 1). The first
    two terms are vectorised over j; the left-to-right chain d[i][j-1] + 1 becomes a running minimum,
    d[i][j] = j + cummin_k≤j(e[k] - k). Only La iterations run in Python, each over all rows and columns.
    """
    n, la, lb = len(a), a.shape[1], b.shape[1]
    j = torch.arange(lb + 1, device=a.device)
    row = j.expand(n, lb + 1).clone()  # d[0][j] = j
    out = torch.where(a_len == 0, b_len, 0)
    for i in range(1, la + 1):
        diag = row[:, :-1] + (a[:, i - 1, None] != b).long()
        e = torch.cat(
            [torch.full((n, 1), i, device=a.device, dtype=torch.long), torch.minimum(diag, row[:, 1:] + 1)], 1
        )
        row = (e - j).cummin(-1).values + j
        out = torch.where(a_len == i, row.gather(1, b_len[:, None]).squeeze(1), out)
    return out


def error_rates(pred: torch.Tensor, held: HeldOut) -> dict[str, float]:
    """WER and PER of predictions (W, L), one per held-out word, against every reference of each word."""
    refs = held.refs[:, 1:].to(pred.device)  # drop <s>
    ref_len = output_lengths(refs)
    owner = held.ref_word.to(pred.device)
    p = pred[owner]
    dist = edit_distance(p, output_lengths(p), refs, ref_len)  # (P,) one per (word, reference) pair
    # The closest reference of each word: minimise (distance, pair index) packed into one integer.
    key = dist * len(owner) + torch.arange(len(owner), device=pred.device)
    best = torch.full((len(held.words),), torch.iinfo(torch.long).max, device=pred.device)
    best = best.scatter_reduce(0, owner, key, "amin") % len(owner)
    d, ref_n = dist[best], ref_len[best]
    return {"wer": (d > 0).float().mean().item(), "per": (d.sum() / ref_n.sum()).item()}


# --- the task ----------------------------------------------------------------------------------------------


def trim(src: torch.Tensor, tgt: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Cut the columns that are padding in every row (batches are padded to the data set's longest word)."""
    src = src[:, : max(int((src != PAD).sum(1).max()), 1)]
    if tgt is None:
        return (src,)
    return src, tgt[:, : int((tgt != PAD).sum(1).max())]


class Seq2Seq(Task):
    Config = Seq2SeqConfig
    metric = "wer"
    higher_is_better = False

    def __init__(self, cfg: Seq2SeqConfig, data_spec: dict[str, Any], seed: int = 0) -> None:
        super().__init__(cfg, data_spec, seed)
        self.data: G2PData = load_dataset(data_spec)
        self.batch_size = self.data.cfg.batch_size
        self.train_batches = TensorBatches(
            self.data.train, self.batch_size, seed=seed, transform=lambda batch, g: trim(*batch)
        )
        self.max_len = cfg.max_len or int((self.data.train[1] != PAD).sum(1).max()) - 1

    def model_defaults(self) -> dict[str, Any]:
        return {"src_vocab_size": len(self.data.graphemes), "vocab_size": len(self.data.phonemes)}

    def training_loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        src, tgt = (t.to(self.device) for t in batch)
        logits = model(src, tgt[:, :-1])  # teacher forcing: read <s> p1 .. pn, predict p1 .. pn </s>
        labels = tgt[:, 1:]
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=PAD, label_smoothing=self.cfg.label_smoothing
        )
        return loss, {}

    def decode(self, model: nn.Module, src: torch.Tensor, beam_size: int | None = None) -> torch.Tensor:
        """Best output tokens (B, L) for source ids (B, S), by greedy or beam search."""
        k = beam_size or self.cfg.beam_size
        src = trim(src.to(self.device))[0]
        if k == 1:
            return greedy_decode(model, src, self.max_len)[0]
        return beam_search(model, src, self.max_len, k, self.cfg.length_penalty)[0][:, 0]

    def evaluate(
        self, model: nn.Module, split: str, autocast: AbstractContextManager | None = None
    ) -> dict[str, float]:
        held = {"val": self.data.val, "test": self.data.test}.get(split)
        if held is None:
            raise NeuratlasError(f"seq2seq evaluates on 'val' or 'test', not {split!r}")
        if split == "val" and self.cfg.val_words:
            keep = held.ref_word < self.cfg.val_words
            held = HeldOut(
                held.words[: self.cfg.val_words], held.src[: self.cfg.val_words], held.refs[keep], held.ref_word[keep]
            )
        autocast = autocast or nullcontext()
        was_training = model.training
        model.eval()
        total, tokens = 0.0, 0
        with torch.no_grad(), autocast:
            for src, tgt in TensorBatches(held.pairs(), self.data.cfg.eval_batch_size, shuffle=False, drop_last=False):
                src, tgt = (t.to(self.device) for t in trim(src, tgt))
                logits = model(src, tgt[:, :-1])
                total += F.cross_entropy(
                    logits.flatten(0, 1).float(), tgt[:, 1:].flatten(), ignore_index=PAD, reduction="sum"
                ).item()
                tokens += int((tgt[:, 1:] != PAD).sum())
            chunk = max(1, self.data.cfg.eval_batch_size // self.cfg.beam_size)
            preds = [
                self.decode(model, s) for (s,) in TensorBatches((held.src,), chunk, shuffle=False, drop_last=False)
            ]
        model.train(was_training)
        width = max(p.shape[1] for p in preds)
        pred = torch.cat([F.pad(p, (0, width - p.shape[1]), value=PAD) for p in preds])
        return {"loss": total / max(tokens, 1), **error_rates(pred, held)}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {
            "graphemes": self.data.graphemes,
            "phonemes": self.data.phonemes,
            "max_len": self.max_len,
            "stress": self.data.cfg.stress,
            "dataset": self.data_spec["name"],
        }

    def describe_data(self) -> str:
        d = self.data
        return f"{self.data_spec['name']} words {len(d.train_words):,}/{len(d.val.words):,}/{len(d.test.words):,}"

    def example_inputs(self, folder: Path) -> tuple[list[str], dict[str, str]]:
        return [self.data.test.words[0]], {"beam": "2"}

    @dataclass
    class PredictOptions:
        beam: int = 4  # beam width (1: greedy)
        nbest: int = 1  # pronunciations printed per word, best first, with their log-probabilities

    @classmethod
    def predict(
        cls, model: nn.Module, extra: dict[str, Any], inputs: list[str], out_dir: str, options: PredictOptions
    ) -> list[str]:
        """Pronounce the words given on the command line: ``neuratlas predict CKPT hello world --beam 4``."""
        beam, nbest = options.beam, options.nbest
        if not 1 <= nbest <= beam:
            raise NeuratlasError(f"--nbest must be between 1 and --beam ({beam}), got {nbest}")
        words = [w.lower() for w in inputs]
        src = encode_words(words, extra["graphemes"]).to(model_device(model))
        model.eval()
        tokens, scores = beam_search(model, src, int(extra["max_len"]), beam)
        lines = []
        for w, toks, sc in zip(words, tokens, scores):
            for rank in range(nbest):
                phones = " ".join(decode_phonemes(toks[rank], extra["phonemes"]))
                tag = f"  (log p {sc[rank].item():.2f})" if nbest > 1 else ""
                lines.append(f"{w}\t{phones}{tag}")
        return lines


TASKS.add(
    "seq2seq",
    Seq2Seq,
    Seq2SeqConfig,
    description="sequence-to-sequence (G2P): teacher forcing; greedy/beam decoding; WER and PER",
)
