"""``neuratlas chat MODEL``: talk with an instruct LLM in the terminal.

Each turn renders the whole conversation with the model's chat template and streams the answer. ``/reset``
forgets the conversation, ``/exit`` or end of input (Ctrl-D) leaves. When the conversation outgrows the
model's context, the oldest turns are dropped (the system message stays).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass

from neuratlas.cli.generate import SamplingOptions, load_llm_for_cli, stream_text
from neuratlas.cli.options import Parsed, command, positional
from neuratlas.errors import NeuratlasError


@dataclass
class ChatOptions(SamplingOptions):
    """An interactive conversation with a pretrained instruct model: a registered name (smollm2-135m-instruct),
    a Hugging Face folder or a GGUF file. Type a message and Enter; /reset starts over; Ctrl-D (end of input)
    or /exit leaves. Greedy unless --temperature is given."""

    model: str = positional("LLM name, Hugging Face folder or .gguf file")
    max_new_tokens: int = 512  # tokens to generate at most per answer (≥ 1)
    system: str | None = None  # system message (default: the template's own, if any)


def register(sub: argparse._SubParsersAction) -> None:
    command(
        sub,
        "chat",
        ChatOptions,
        cmd_chat,
        help="chat with an instruct LLM (e.g. smollm2-135m-instruct): history, streaming, /reset, Ctrl-D",
    )


def cmd_chat(args: ChatOptions, parsed: Parsed) -> int:
    if args.temperature is None:
        args = dataclasses.replace(args, temperature=0.0)
    model = load_llm_for_cli(args)
    tok = model.tokenizer
    if not tok.chat_template:
        raise NeuratlasError(f"{args.model} has no chat template: use `neuratlas generate --raw` instead")
    interactive = sys.stdin.isatty()
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict[str, str]] = []
    if interactive:
        print(f"{args.model}: type a message; /reset starts over, Ctrl-D leaves.", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:  # end of input
            break
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            history = []
            print("(conversation reset)", file=sys.stderr if interactive else sys.stdout, flush=True)
            continue
        history.append({"role": "user", "content": text})
        ids = tok.encode_chat(system + history)
        while len(ids) >= model.cfg.max_seq_len - 16 and len(history) > 1:  # forget the oldest exchange
            history = history[2:] if len(history) > 2 else history[-1:]
            ids = tok.encode_chat(system + history)
        if len(ids) >= model.cfg.max_seq_len:
            history.pop()
            print(
                f"error: the message of {len(ids)} tokens does not fit the context of {model.cfg.max_seq_len}",
                file=sys.stderr,
            )
            continue
        answer = stream_text(model, tok, ids, args, sys.stdout, args.stop)
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": answer})
    if interactive:
        print(file=sys.stderr)
    return 0
