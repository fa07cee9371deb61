"""Text: tokenizers (character, byte-level BPE, GPT-2's vocabulary, Hugging Face WordPiece) that travel
inside checkpoints."""

from neuratlas.text.tokenizers import (
    BPETokenizer,
    CharTokenizer,
    GPT2Tokenizer,
    HFTokenizer,
    Tokenizer,
    tokenizer_from_dict,
)

__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "GPT2Tokenizer",
    "HFTokenizer",
    "Tokenizer",
    "tokenizer_from_dict",
]
