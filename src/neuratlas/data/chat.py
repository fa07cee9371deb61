"""Chat fine-tuning data: conversations tokenized with a pretrained model's chat template, with the positions
of the assistant's tokens marked (the only ones the loss sees).

Sources: a user's JSONL file, one conversation per line, either ``{"messages": [{"role": ..., "content": ...},
...]}`` or ``{"prompt": ..., "response": ...}``; or ``arithmetic``, an instruction set built here (two-digit
additions and subtractions asked in words, answered with the result): every answer is checkable, so the
held-out exact-match rate measures what fine-tuning taught.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neuratlas.data.registry import register_dataset
from neuratlas.errors import NeuratlasError

IGNORE = -100  # label of the tokens the loss does not see (prompt, template, padding)


@dataclass
class ChatDataConfig:
    path: str = ""  # a JSONL file of conversations; "" uses the built-in set named by `builtin`
    builtin: str = "arithmetic"
    tokenizer: str = "smollm2-135m-instruct"  # the model whose tokenizer and chat template format the data
    system: str = ""  # a system message put before every conversation ("" : the template's default)
    n_train: int = 2000  # conversations of the built-in set
    n_val: int = 200
    val_frac: float = 0.1  # of a JSONL file, the last conversations
    max_len: int = 256  # tokens per conversation (longer ones are cut)
    batch_size: int = 8
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        if not 0.0 < self.val_frac < 0.5:
            raise ValueError(f"val_frac must be in (0, 0.5), got {self.val_frac}")
        if self.batch_size < 1 or self.max_len < 8:
            raise ValueError("batch_size must be ≥ 1 and max_len ≥ 8")


@dataclass
class ChatSplits:
    """Tokenized conversations: per split a list of (ids, labels) and the (messages, answer) pairs to score."""

    cfg: ChatDataConfig
    train: list[tuple[list[int], list[int]]]
    val: list[tuple[list[int], list[int]]]
    val_prompts: list[tuple[list[dict[str, str]], str]]  # the conversation up to the last answer, and it
    tokenizer: Any
    source: str


def arithmetic(n: int, seed: int) -> list[list[dict[str, str]]]:
    """``n`` questions "What is 47 plus 38?" / "... minus ...", answered "47 plus 38 is 85."."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        op, value = ("plus", a + b) if rng.random() < 0.5 else ("minus", a - b)
        question = f"What is {a} {op} {b}? Reply with one short sentence."
        out.append(
            [{"role": "user", "content": question}, {"role": "assistant", "content": f"{a} {op} {b} is {value}."}]
        )
    return out


def answer_value(text: str) -> str | None:
    """The checkable answer in a reply: its last integer (signs kept)."""
    found = re.findall(r"-?\d+", text)
    return found[-1] if found else None


def read_jsonl(path: Path) -> list[list[dict[str, str]]]:
    """Conversations of a JSONL file; a bad line raises one error naming the file and line."""
    if not path.is_file():
        raise NeuratlasError(f"{path}: no such file")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise NeuratlasError(f"{path}:{n}: not JSON ({e.msg})") from None
        if isinstance(row, dict) and isinstance(row.get("messages"), list):
            msgs = row["messages"]
            if not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs
            ):
                raise NeuratlasError(f"{path}:{n}: every message needs a string 'role' and 'content'")
            msgs = [{"role": m["role"], "content": m["content"]} for m in msgs]
        elif isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str):
            msgs = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
        else:
            raise NeuratlasError(f'{path}:{n}: expected {{"messages": [...]}} or {{"prompt", "response"}}')
        if not any(m["role"] == "assistant" for m in msgs):
            raise NeuratlasError(f"{path}:{n}: the conversation has no assistant message to learn")
        out.append(msgs)
    if len(out) < 2:
        raise NeuratlasError(f"{path}: needs at least 2 conversations (one to train on, one held out)")
    return out


def tokenize_chat(tok: Any, messages: list[dict[str, str]], max_len: int) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and labels that are the ids on assistant turns (their closing
    end-of-turn token included, so the model learns to stop) and ``IGNORE`` elsewhere. The text is rendered
    turn by turn: each assistant turn is what its full render adds to the render that ends with the
    generation prompt."""
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = tok.render(messages[:i], add_generation_prompt=True)
        full = tok.render(messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise NeuratlasError(f"{tok.source}: the chat template does not render conversations incrementally")
        before = tok.tok.encode(prompt[len(done) :], add_special_tokens=False).ids
        answer = tok.tok.encode(full[len(prompt) :], add_special_tokens=False).ids
        ids += before + answer
        labels += [IGNORE] * len(before) + answer
        done = full
    return ids[:max_len], labels[:max_len]


def load_chat(cfg: ChatDataConfig) -> ChatSplits:
    from neuratlas.weights.llama import PRETRAINED, is_llm, pretrained_path

    if cfg.path:
        convs = read_jsonl(Path(cfg.path))
        n_val = max(1, int(len(convs) * cfg.val_frac))
        train_c, val_c, source = convs[:-n_val], convs[-n_val:], f"{cfg.path} ({len(convs)} conversations)"
    elif cfg.builtin == "arithmetic":
        train_c, val_c = arithmetic(cfg.n_train, 0), arithmetic(cfg.n_val, 1)
        source = f"arithmetic questions ({cfg.n_train} train, {cfg.n_val} held out)"
    else:
        raise NeuratlasError(f"unknown built-in chat set {cfg.builtin!r} (arithmetic; or give --data.path FILE)")
    if not is_llm(cfg.tokenizer):
        raise NeuratlasError(f"{cfg.tokenizer}: not an LLM name, Hugging Face folder or GGUF file")
    if cfg.tokenizer in PRETRAINED or cfg.tokenizer.endswith(".gguf"):
        from neuratlas.weights.gguf import GGUFModel

        path = pretrained_path(cfg.tokenizer) if cfg.tokenizer in PRETRAINED else Path(cfg.tokenizer)
        tok = GGUFModel(path).tokenizer()
    else:
        from neuratlas.text.chat import ChatTokenizer

        tok = ChatTokenizer.from_folder(cfg.tokenizer)
    system = [{"role": "system", "content": cfg.system}] if cfg.system else []
    train = [tokenize_chat(tok, system + c, cfg.max_len) for c in train_c]
    val = [tokenize_chat(tok, system + c, cfg.max_len) for c in val_c]
    last = [max(i for i, m in enumerate(c) if m["role"] == "assistant") for c in val_c]
    prompts = [(system + c[:i], c[i]["content"]) for c, i in zip(val_c, last)]
    return ChatSplits(cfg, train, val, prompts, tok, source)


def pad_batch(rows: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, labels) right-padded to the longest row (labels ``IGNORE`` on padding)."""
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)], labels[i, : len(y)] = torch.tensor(x), torch.tensor(y)
    return ids, labels


register_dataset(
    "chat",
    load_chat,
    ChatDataConfig,
    "conversations for chat fine-tuning: a JSONL file (--data.path) or the built-in arithmetic questions, "
    "tokenized with a pretrained LLM's chat template (loss on assistant tokens only)",
)
