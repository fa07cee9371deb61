"""``neuratlas generate CHECKPOINT --prompt TEXT``: sample from a GPT, printing tokens as they come."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch

from neuratlas.cli.options import Parsed, command, positional, repeatable
from neuratlas.errors import NeuratlasError


@dataclass
class GenerateOptions:
    """Continue PROMPT with a language-model checkpoint (KV-cached decoding), printing tokens as they come.
    --temperature 0 is greedy; --top-k and --top-p restrict sampling."""

    checkpoint: str = positional("a run folder or a .safetensors checkpoint of a language model")
    prompt: str = "\n"  # text to continue
    max_new_tokens: int = 300
    temperature: float = 0.8  # 0: greedy
    top_k: int | None = None  # sample among the k most likely tokens only
    top_p: float | None = None  # sample among the most likely tokens whose probabilities sum to p
    stop: list[str] = repeatable(
        "stop when this text appears (repeatable); the tokenizer's end-of-text token always stops"
    )
    seed: int = 0
    no_cache: bool = False  # recompute the whole context every token (slow; a check of the cache)
    # bf16 weights and KV cache: half the bytes read per token (pays where bf16 kernels are fast, e.g. GPUs
    # and AMX CPUs; without AMX the fp32 fast path is quicker)
    bf16: bool = False
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps


def register(sub: argparse._SubParsersAction) -> None:
    command(
        sub, "generate", GenerateOptions, cmd_generate, help="generate text from a GPT checkpoint, streaming tokens"
    )


def cmd_generate(args: GenerateOptions, parsed: Parsed) -> int:
    from neuratlas.models.checkpoint import read_checkpoint
    from neuratlas.text.tokenizers import tokenizer_from_dict

    ckpt = read_checkpoint(args.checkpoint)
    if "tokenizer" not in ckpt.extra:
        raise NeuratlasError(f"{ckpt.path} has no tokenizer: it is not a language-model checkpoint")
    model = ckpt.build_model()
    if not hasattr(model, "stream"):
        raise NeuratlasError(f"{ckpt.model_name} cannot generate text (it is not a decoder-only language model)")
    from neuratlas.device import resolve_device

    device = resolve_device(args.device)
    model = model.to(device)
    if args.bf16:
        model = model.to(torch.bfloat16)
    if args.max_new_tokens < 1:
        raise NeuratlasError("--max-new-tokens must be ≥ 1")
    tok = tokenizer_from_dict(ckpt.extra["tokenizer"])
    ids = torch.tensor([tok.encode(args.prompt)], device=device)
    stop_ids = [tok.eot_id] if tok.eot_id is not None else []
    g = torch.Generator(device=device).manual_seed(args.seed)  # draws on the device the logits are on
    out = sys.stdout
    out.write(args.prompt)
    new: list[int] = []
    shown = ""
    for nxt in model.stream(
        ids,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        stop_tokens=stop_ids,
        use_cache=not args.no_cache,
        generator=g,
    ):
        new.append(int(nxt[0]))
        text = tok.decode(new)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
            continue
        stop_at = min((text.find(s) for s in args.stop if s and s in text), default=-1)
        if stop_at >= 0:
            text = text[:stop_at]
        out.write(text[len(shown) :])
        out.flush()
        shown = text
        if stop_at >= 0 or (stop_ids and new[-1] in stop_ids):
            break
    out.write("\n")
    return 0
