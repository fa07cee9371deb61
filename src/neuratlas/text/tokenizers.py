"""Tokenizers: text <-> integer ids, each serialisable to a small JSON dict stored in the checkpoint.

- :class:`CharTokenizer`: one id per character of the training text (nanoGPT's ``shakespeare_char``).
- :class:`BPETokenizer`: byte-level BPE trained on the training text with Hugging Face ``tokenizers``.
- :class:`GPT2Tokenizer`: the real GPT-2 vocabulary (50,257 ids) through ``tiktoken``; its ranks come from
  the ``openai-whisper`` sdist (:func:`gpt2_ranks_path`), so the checkpoint only records the name.
- :class:`HFTokenizer`: any ``tokenizer.json`` (the WordPiece vocabulary of MiniLM/BERT).

``tokenizer_from_dict(tok.to_dict())`` rebuilds any of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from neuratlas.errors import NeuratlasError
from neuratlas.extras import require
from neuratlas.sources import cache_dir, read_tar_texts, sdist_source

WHISPER_SDIST = sdist_source(
    "openai-whisper",
    "20250625",
    "openai_whisper-20250625.tar.gz",
    "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96",
)


def gpt2_ranks_path() -> Path:
    """GPT-2's BPE ranks (``gpt2.tiktoken``), extracted once from the openai-whisper sdist into the cache."""
    dest = cache_dir("gpt2-tiktoken", "gpt2.tiktoken")
    if dest.is_file():
        return dest
    folder, _ = WHISPER_SDIST.locate()
    member = "openai_whisper-20250625/whisper/assets/gpt2.tiktoken"
    texts = read_tar_texts(folder / "openai_whisper-20250625.tar.gz", lambda n: n == member)
    if not texts:
        raise NeuratlasError(f"{folder} has an openai-whisper sdist without {member}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    tmp.write_text(texts[member])
    os.replace(tmp, dest)
    return dest


class Tokenizer(Protocol):
    vocab_size: int
    eot_id: int | None  # end-of-text id (a stop token for generation), if the vocabulary has one

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


class CharTokenizer:
    """Every distinct character of the corpus is a token; ``specials`` (e.g. ``[MASK]``) follow them."""

    def __init__(self, chars: str | list[str], specials: tuple[str, ...] = ()) -> None:
        self.chars = list(chars)
        self.specials = list(specials)
        self.itos = self.chars + self.specials
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.vocab_size = len(self.itos)
        self.eot_id = None

    @classmethod
    def from_text(cls, text: str, specials: tuple[str, ...] = ()) -> CharTokenizer:
        return cls(sorted(set(text)), specials)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise NeuratlasError(
                f"character {e.args[0]!r} is not in this character-level vocabulary "
                f"({len(self.chars)} characters seen in training)"
            ) from None

    def encode_corpus(self, text: str) -> list[int]:
        """Vectorised encode of a large text: code points looked up with one searchsorted."""
        import numpy as np

        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        order = np.argsort(table)
        pos = np.searchsorted(table[order], codes).clip(0, len(table) - 1)
        if not np.array_equal(table[order][pos], codes):
            self.encode(text)  # raises the one-line error naming the unknown character
        return order[pos].tolist()

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.itos[i] for i in ids if 0 <= i < len(self.chars))

    def token_id(self, token: str) -> int:
        return self.stoi[token]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "char", "chars": "".join(self.chars), "specials": self.specials}


class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer`` (a tokenizer.json): WordPiece for BERT, BPE, ..."""

    kind = "hf"

    def __init__(self, tok: Any, eot: str | None = None) -> None:
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.eot_id = tok.token_to_id(eot) if eot else None

    @classmethod
    def from_file(cls, path: str) -> HFTokenizer:
        return cls(require("tokenizers", "a tokenizer.json").Tokenizer.from_file(str(path)))

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def encode_batch(self, texts: list[str], max_len: int) -> tuple[list[list[int]], list[list[int]]]:
        """(ids, attention mask) padded/truncated to ``max_len`` (pad id 0 unless the tokenizer says)."""
        self.tok.enable_truncation(max_len)
        self.tok.enable_padding(length=max_len, pad_id=self.token_id("[PAD]") or 0)
        enc = self.tok.encode_batch(texts)
        self.tok.no_truncation()
        self.tok.no_padding()
        return [e.ids for e in enc], [e.attention_mask for e in enc]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids))

    def token_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "json": self.tok.to_str()}


class BPETokenizer(HFTokenizer):
    """Byte-level BPE (GPT-2's scheme) learned from the training text: no unknown characters, ever."""

    kind = "bpe"
    EOT = "<|endoftext|>"

    def __init__(self, tok: Any) -> None:
        super().__init__(tok, eot=self.EOT)

    @classmethod
    def train(cls, text: str, vocab_size: int = 2048, specials: tuple[str, ...] = ()) -> BPETokenizer:
        tk = require("tokenizers", "the BPE tokenizer")
        decoders, models, pre_tokenizers, trainers = tk.decoders, tk.models, tk.pre_tokenizers, tk.trainers
        tok = tk.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[cls.EOT, *specials],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        lines = text.splitlines(keepends=True)
        tok.train_from_iterator((("".join(lines[i : i + 200])) for i in range(0, len(lines), 200)), trainer)
        return cls(tok)

    def encode_corpus(self, text: str) -> list[int]:
        """Encode a large text fast, in parallel over chunks of 500 lines. Only whitespace runs that
        straddle a chunk border can tokenize differently from one long encode (a handful of tokens)."""
        lines = text.splitlines(keepends=True)
        chunks = ["".join(lines[i : i + 500]) for i in range(0, len(lines), 500)]
        return [i for e in self.tok.encode_batch(chunks) for i in e.ids]


class GPT2Tokenizer:
    """GPT-2's byte-level BPE (50,257 tokens, ``<|endoftext|>`` = 50256) through tiktoken."""

    PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

    def __init__(self) -> None:
        tiktoken = require("tiktoken", "the GPT-2 vocabulary")
        load = require("tiktoken.load", "the GPT-2 vocabulary")
        ranks = load.load_tiktoken_bpe(str(gpt2_ranks_path()))
        self.enc = tiktoken.Encoding(
            name="gpt2", pat_str=self.PAT, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
        )
        self.vocab_size = self.enc.n_vocab
        self.eot_id = 50256

    def encode(self, text: str) -> list[int]:
        return self.enc.encode(text, allowed_special={"<|endoftext|>"})

    def encode_corpus(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)  # tiktoken is already multi-threaded Rust

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode([i for i in ids if i < self.vocab_size])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "gpt2"}


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer saved with ``to_dict()`` (e.g. from a checkpoint's ``extra``)."""
    kind = d.get("kind")
    if kind == "char":
        return CharTokenizer(d["chars"], tuple(d.get("specials", ())))
    if kind in ("bpe", "hf"):
        tok = require("tokenizers", f"the checkpoint's {kind} tokenizer").Tokenizer.from_str(d["json"])
        return BPETokenizer(tok) if kind == "bpe" else HFTokenizer(tok)
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "chat":  # a pretrained LLM's tokenizer with its chat template (text/chat.py)
        from neuratlas.text.chat import ChatTokenizer

        return ChatTokenizer.from_dict(d)
    raise NeuratlasError(f"unknown tokenizer kind {kind!r} in checkpoint (expected char, bpe, hf, gpt2 or chat)")


def build_tokenizer(kind: str, text: str, vocab_size: int = 2048, specials: tuple[str, ...] = ()) -> Tokenizer:
    """``char`` | ``bpe`` (trained on ``text``) | ``gpt2``."""
    if kind == "char":
        return CharTokenizer.from_text(text, specials)
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size, specials)
    if kind == "gpt2":
        return GPT2Tokenizer()
    raise NeuratlasError(f"unknown tokenizer {kind!r}; choose char, bpe or gpt2")


def encode_corpus(tok: Tokenizer, text: str) -> list[int]:
    """Encode a whole corpus with the fastest path the tokenizer has."""
    fast = getattr(tok, "encode_corpus", None)
    return fast(text) if fast else tok.encode(text)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (vocab.json and merges.txt spell tokens with it)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table
