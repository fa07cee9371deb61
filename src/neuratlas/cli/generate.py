"""``neuratlas generate MODEL_OR_RUN --prompt TEXT``: continue text with a language model, streaming tokens.

MODEL_OR_RUN is a training run / checkpoint of a Neuratlas language model, or a pretrained LLM: a registered
name (``smollm2-135m-instruct``), a Hugging Face Llama-family folder or a GGUF file. An instruct model's
prompt goes through its chat template unless ``--raw``; several ``--prompt`` run as one left-padded batch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

import torch

from neuratlas.errors import NeuratlasError


def add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """The decoding options shared by ``generate`` and ``chat``."""
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="0 is greedy (the default for pretrained LLMs; 0.8 for trained checkpoints)",
    )
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="> 1 makes tokens already in the text less likely (1.1–1.3 is usual)",
    )
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        help="stop when this text appears (repeatable); the model's end tokens always stop",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 weights and KV cache: half the bytes read per token (pays where bf16 kernels are "
        "fast, e.g. GPUs and AMX CPUs; without AMX the fp32 fast path is quicker)",
    )
    p.add_argument(
        "--quantize",
        choices=["int8", "int4"],
        default=None,
        help="weight-only quantized linear layers (pretrained LLMs): int8 per channel or int4 in groups "
        "of 32 (a GGUF file's Q4_0/Q4_1 blocks are used as they are)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text from a language model (a run, an LLM name, a HF folder or a GGUF file), streaming",
        description="Continue PROMPT with a language model (KV-cached decoding). MODEL_OR_RUN: a run folder or "
        "checkpoint of a Neuratlas language model, or a pretrained LLM (a registered name such as "
        "smollm2-135m-instruct, a Hugging Face Llama/Mistral/Qwen2 folder, a .gguf file). --temperature 0 "
        "is greedy; --top-k and --top-p restrict sampling.",
    )
    p.add_argument("model", metavar="MODEL_OR_RUN", help="run folder, checkpoint, LLM name, HF folder or .gguf file")
    p.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="text to continue (repeatable: the prompts run as one batch; default: a newline)",
    )
    p.add_argument("--system", default=None, help="system message for an instruct model's chat template")
    p.add_argument("--raw", action="store_true", help="give the prompt to an instruct model as is (no template)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context every token (slow)")
    add_sampling_args(p, max_new_tokens=300)
    p.set_defaults(func=cmd_generate)


def load_llm_for_cli(args: argparse.Namespace):
    """The pretrained LLM named by ``args.model`` in the precision the options ask for."""
    from neuratlas.weights import load_llm
    from neuratlas.weights.llama import quantize_llm

    if args.quantize and args.bf16:
        raise NeuratlasError("--quantize and --bf16 exclude each other (quantized layers compute in bf16)")
    model = load_llm(args.model, dtype=torch.bfloat16 if args.bf16 else torch.float32)
    if args.quantize:
        quantize_llm(model, args.quantize)
    if model.tokenizer is None:
        raise NeuratlasError(f"{args.model} has no tokenizer (tokenizer.json) to turn text into tokens")
    return model


def prompt_ids(model, tok, text: str, *, system: str | None, raw: bool, name: str) -> list[int]:
    """The prompt's token ids: through the chat template unless ``raw`` (or the model has none)."""
    if raw or not tok.chat_template:
        ids = tok.encode(text)
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        ids = tok.encode_chat(messages)
    check_context(model, len(ids), name)
    return ids


def check_context(model, n: int, name: str) -> None:
    ctx = model.cfg.max_seq_len
    if n >= ctx:
        raise NeuratlasError(f"{name}: the prompt of {n} tokens does not fit the context of {ctx} tokens")
    if n == 0:
        raise NeuratlasError(f"{name}: the prompt is empty")


def stream_text(model, tok, ids: list[int], args: argparse.Namespace, out: TextIO, stops: Sequence[str]) -> str:
    """Generate after ``ids`` (one sequence), writing the text to ``out`` as it comes; the text, cut at the
    first stop string. A token that ends in the middle of a UTF-8 character waits for its next bytes."""
    stop_ids = list(getattr(tok, "stop_ids", None) or ([tok.eot_id] if tok.eot_id is not None else []))
    g = torch.Generator().manual_seed(args.seed)
    new: list[int] = []
    shown = ""
    n = args.max_new_tokens
    if getattr(model, "tokenizer", None) is not None:  # a pretrained LLM: stop at its context, no sliding
        n = min(n, model.cfg.max_seq_len - len(ids))
    stream = model.stream(
        torch.tensor([ids]),
        n,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop_tokens=stop_ids,
        use_cache=not getattr(args, "no_cache", False),
        generator=g,
    )
    for nxt in stream:
        token = int(nxt[0])
        if token in stop_ids:
            break
        new.append(token)
        text = tok.decode(new)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
            continue
        stop_at = min((text.find(s) for s in stops if s and s in text), default=-1)
        if stop_at >= 0:
            text = text[:stop_at]
        out.write(text[len(shown) :])
        out.flush()
        shown = text
        if stop_at >= 0:
            break
    return shown


def cmd_generate(args: argparse.Namespace, extra: list[str]) -> int:
    from neuratlas.weights import is_llm

    if args.max_new_tokens < 1:
        raise NeuratlasError("--max-new-tokens must be ≥ 1")
    if is_llm(args.model):
        return generate_llm(args)
    return generate_run(args)


def generate_llm(args: argparse.Namespace) -> int:
    if args.temperature is None:
        args.temperature = 0.0
    model = load_llm_for_cli(args)
    tok = model.tokenizer
    prompts = args.prompt or ["\n"]
    rows = [prompt_ids(model, tok, p, system=args.system, raw=args.raw, name=args.model) for p in prompts]
    out = sys.stdout
    if len(rows) == 1:
        stream_text(model, tok, rows[0], args, out, args.stop)
        out.write("\n")
        return 0
    for text in generate_batch(model, tok, rows, args):
        out.write(text + "\n\n")
    return 0


def generate_batch(model, tok, rows: list[list[int]], args: argparse.Namespace) -> list[str]:
    """Several prompts as one left-padded batch (each row with its own positions); the answers' texts."""
    width = max(len(r) for r in rows)
    pad = tok.eos_id if tok.eos_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = True
    stop_ids = tok.stop_ids
    steps = model.stream(
        ids,
        min(args.max_new_tokens, model.cfg.max_seq_len - width),
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop_tokens=stop_ids,
        use_cache=not getattr(args, "no_cache", False),
        generator=torch.Generator().manual_seed(args.seed),
        mask=mask,
    )
    new = torch.stack(list(steps), 1).tolist()
    texts = []
    for row in new:
        cut = next((j for j, t in enumerate(row) if t in stop_ids), len(row))
        text = tok.decode(row[:cut])
        at = min((text.find(s) for s in args.stop if s and s in text), default=-1)
        texts.append(text[:at] if at >= 0 else text)
    return texts


def generate_run(args: argparse.Namespace) -> int:
    """A Neuratlas language-model checkpoint (a training run): continue the prompt as plain text."""
    from neuratlas.models.checkpoint import read_checkpoint
    from neuratlas.text.tokenizers import tokenizer_from_dict

    if args.quantize:
        raise NeuratlasError("--quantize is for pretrained LLMs (a name, a HF folder or a GGUF file)")
    if args.prompt and len(args.prompt) > 1:
        raise NeuratlasError("several --prompt (a batch) are for pretrained LLMs")
    if args.temperature is None:
        args.temperature = 0.8
    ckpt = read_checkpoint(args.model)
    if "tokenizer" not in ckpt.extra:
        raise NeuratlasError(f"{ckpt.path} has no tokenizer: it is not a language-model checkpoint")
    model = ckpt.build_model()
    if not hasattr(model, "stream"):
        raise NeuratlasError(f"{ckpt.model_name} cannot generate text (it is not a decoder-only language model)")
    if args.bf16:
        model = model.to(torch.bfloat16)
    tok = tokenizer_from_dict(ckpt.extra["tokenizer"])
    prompt = (args.prompt or ["\n"])[0]
    out = sys.stdout
    out.write(prompt)
    stream_text(model, tok, tok.encode(prompt), args, out, args.stop)
    out.write("\n")
    return 0
