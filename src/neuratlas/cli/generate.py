"""``neuratlas generate CHECKPOINT --prompt TEXT``: sample from a GPT, printing tokens as they come."""

from __future__ import annotations

import argparse
import sys

import torch

from neuratlas.errors import NeuratlasError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text from a GPT checkpoint, streaming tokens",
        description="Continue PROMPT with a language-model checkpoint (KV-cached decoding). "
        "--temperature 0 is greedy; --top-k and --top-p restrict sampling.",
    )
    p.add_argument("checkpoint", help="a run folder or a .safetensors checkpoint of a language model")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        help="stop when this text appears (repeatable); the tokenizer's end-of-text token always stops",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context every token (slow)")
    p.add_argument("--bf16", action="store_true",
                   help="bf16 weights and KV cache: half the bytes read per token (pays where bf16 kernels are "
                        "fast, e.g. GPUs and AMX CPUs; without AMX the fp32 fast path is quicker)")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace, extra: list[str]) -> int:
    from neuratlas.models.checkpoint import read_checkpoint
    from neuratlas.text.tokenizers import tokenizer_from_dict

    ckpt = read_checkpoint(args.checkpoint)
    if "tokenizer" not in ckpt.extra:
        raise NeuratlasError(f"{ckpt.path} has no tokenizer: it is not a language-model checkpoint")
    model = ckpt.build_model()
    if not hasattr(model, "stream"):
        raise NeuratlasError(
            f"{ckpt.model_name} cannot generate text (it is not a decoder-only language model)"
        )
    if args.bf16:
        model = model.to(torch.bfloat16)
    if args.max_new_tokens < 1:
        raise NeuratlasError("--max-new-tokens must be ≥ 1")
    tok = tokenizer_from_dict(ckpt.extra["tokenizer"])
    ids = torch.tensor([tok.encode(args.prompt)])
    stop_ids = [tok.eot_id] if tok.eot_id is not None else []
    g = torch.Generator().manual_seed(args.seed)
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
