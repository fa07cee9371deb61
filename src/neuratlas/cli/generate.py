"""``neuratlas generate MODEL --prompt TEXT``: continue text with a language model, streaming tokens.

MODEL is a training run / checkpoint of a Neuratlas language model, or a pretrained LLM: a registered
name (``smollm2-135m-instruct``), a Hugging Face Llama-family folder or a GGUF file. An instruct model's
prompt goes through its chat template unless ``--raw``; several ``--prompt`` run as one left-padded batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TextIO

import torch

from neuratlas.cli.options import Parsed, command, device_option, positional, repeatable
from neuratlas.errors import NeuratlasError


@dataclass
class SamplingOptions:
    """The model and the decoding options shared by ``generate`` and ``chat``."""

    model: str = positional("run folder, checkpoint, LLM name, Hugging Face folder or .gguf file")
    max_new_tokens: int = 300  # tokens to generate at most (≥ 1)
    # 0 is greedy (the default for pretrained LLMs; 0.8 for trained checkpoints)
    temperature: float | None = None
    top_k: int | None = None  # sample among the k likeliest tokens only
    top_p: float | None = None  # sample among the likeliest tokens whose probabilities add up to p
    repetition_penalty: float = 1.0  # > 1 makes tokens already in the text less likely (1.1–1.3 is usual)
    stop: list[str] = repeatable("stop when this text appears (repeatable); the model's end tokens always stop")
    seed: int = 0  # of the sampling generator
    # the whole model in bf16, weights, activations and KV cache (for GPUs; on a CPU --quantize bf16 is faster)
    bf16: bool = False
    # weight-only quantized linear layers (pretrained LLMs), activations in fp32: bf16, int8 per channel or
    # int4 in groups of 32 (a GGUF file's Q4_0/Q4_1 blocks are used as they are)
    quantize: Literal["bf16", "int8", "int4"] | None = None
    device: str = device_option()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens must be ≥ 1, got {self.max_new_tokens}")
        if self.quantize and self.bf16:
            raise ValueError("--quantize and --bf16 exclude each other (quantized layers keep fp32 activations)")


@dataclass
class GenerateOptions(SamplingOptions):
    """Continue PROMPT with a language model (KV-cached decoding), streaming the tokens. MODEL: a run folder or
    checkpoint of a Neuratlas language model, or a pretrained LLM (a registered name such as
    smollm2-135m-instruct, a Hugging Face Llama/Mistral/Qwen2 folder, a .gguf file). An instruct model's prompt
    goes through its chat template unless --raw; several --prompt run as one left-padded batch. --temperature 0
    is greedy; --top_k and --top_p restrict sampling."""

    prompt: list[str] = repeatable("text to continue (repeatable: the prompts run as one batch; default: a newline)")
    system: str | None = None  # system message for an instruct model's chat template
    raw: bool = False  # give the prompt to an instruct model as is (no template)
    no_cache: bool = False  # recompute the whole context every token (slow)


def register(sub: argparse._SubParsersAction) -> None:
    command(
        sub,
        "generate",
        GenerateOptions,
        cmd_generate,
        help="generate text from a language model (a run, an LLM name, a HF folder or a GGUF file), streaming",
    )


def load_llm_for_cli(opts: SamplingOptions):
    """The pretrained LLM named by ``opts.model`` in the precision the options ask for, on its device."""
    from neuratlas.device import resolve_device
    from neuratlas.weights import load_llm
    from neuratlas.weights.llama import quantize_llm

    device = resolve_device(opts.device, option="--device")
    model = load_llm(opts.model, dtype=torch.bfloat16 if opts.bf16 else torch.float32)
    if opts.quantize:
        quantize_llm(model, opts.quantize)
    if model.tokenizer is None:
        raise NeuratlasError(f"{opts.model} has no tokenizer (tokenizer.json) to turn text into tokens")
    return model.to(device)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


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


def stream_text(model, tok, ids: list[int], args: SamplingOptions, out: TextIO, stops: Sequence[str]) -> str:
    """Generate after ``ids`` (one sequence), writing the text to ``out`` as it comes; the text, cut at the
    first stop string. A token that ends in the middle of a UTF-8 character waits for its next bytes."""
    stop_ids = list(getattr(tok, "stop_ids", None) or ([tok.eot_id] if tok.eot_id is not None else []))
    device = _device(model)
    g = torch.Generator(device).manual_seed(args.seed)
    new: list[int] = []
    shown = ""
    n = args.max_new_tokens
    if getattr(model, "tokenizer", None) is not None:  # a pretrained LLM: stop at its context, no sliding
        n = min(n, model.cfg.max_seq_len - len(ids))
    stream = model.stream(
        torch.tensor([ids], device=device),
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


def cmd_generate(args: GenerateOptions, parsed: Parsed) -> int:
    from neuratlas.weights import is_llm

    if is_llm(args.model):
        return generate_llm(args)
    return generate_run(args)


def generate_llm(args: GenerateOptions) -> int:
    if args.temperature is None:
        args = dataclasses.replace(args, temperature=0.0)
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


def generate_batch(model, tok, rows: list[list[int]], args: SamplingOptions) -> list[str]:
    """Several prompts as one left-padded batch (each row with its own positions); the answers' texts."""
    width = max(len(r) for r in rows)
    pad = tok.eos_id if tok.eos_id is not None else 0
    device = _device(model)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = True
    stop_ids = tok.stop_ids
    steps = model.stream(
        ids.to(device),
        min(args.max_new_tokens, model.cfg.max_seq_len - width),
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop_tokens=stop_ids,
        use_cache=not getattr(args, "no_cache", False),
        generator=torch.Generator(device).manual_seed(args.seed),
        mask=mask.to(device),
    )
    new = torch.stack(list(steps), 1).cpu().tolist()
    texts = []
    for row in new:
        cut = next((j for j, t in enumerate(row) if t in stop_ids), len(row))
        text = tok.decode(row[:cut])
        at = min((text.find(s) for s in args.stop if s and s in text), default=-1)
        texts.append(text[:at] if at >= 0 else text)
    return texts


def generate_run(args: GenerateOptions) -> int:
    """A Neuratlas language-model checkpoint (a training run): continue the prompt as plain text."""
    from neuratlas.device import resolve_device
    from neuratlas.models.checkpoint import read_checkpoint
    from neuratlas.text.tokenizers import tokenizer_from_dict

    if args.quantize:
        raise NeuratlasError("--quantize is for pretrained LLMs (a name, a HF folder or a GGUF file)")
    if args.prompt and len(args.prompt) > 1:
        raise NeuratlasError("several --prompt (a batch) are for pretrained LLMs")
    if args.temperature is None:
        args = dataclasses.replace(args, temperature=0.8)
    device = resolve_device(args.device, option="--device")
    ckpt = read_checkpoint(args.model)
    if "tokenizer" not in ckpt.extra:
        raise NeuratlasError(f"{ckpt.path} has no tokenizer: it is not a language-model checkpoint")
    model = ckpt.build_model()
    if not hasattr(model, "stream"):
        raise NeuratlasError(f"{ckpt.model_name} cannot generate text (it is not a decoder-only language model)")
    model = model.to(device)
    if args.bf16:
        model = model.to(torch.bfloat16)
    tok = tokenizer_from_dict(ckpt.extra["tokenizer"])
    prompt = (args.prompt or ["\n"])[0]
    out = sys.stdout
    out.write(prompt)
    stream_text(model, tok, tok.encode(prompt), args, out, args.stop)
    out.write("\n")
    return 0
