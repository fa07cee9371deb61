"""sample: an alias of ``neuratlas predict RUN N`` for GAN runs (a PNG grid of N generated images)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="alias of `neuratlas predict RUN N` for GAN runs: a PNG grid of N images",
        description="An alias of `neuratlas predict CHECKPOINT N [--seed S] [--score true] --out "
        "DIR`: draw N images from the generator of a GAN run (or checkpoint) into DIR/samples.png.",
    )
    p.add_argument("checkpoint", help="a GAN run folder or one of its checkpoints")
    p.add_argument("n", nargs="?", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    p.add_argument("--out", default="predictions", help="folder for samples.png (default predictions)")
    p.add_argument("--score", action="store_true", help="title each image with the judge classifier's class")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace, extra: list[str]) -> int:
    from neuratlas.cli.core import cmd_predict

    options = ["--seed", str(args.seed), *(["--score", "true"] if args.score else [])]
    return cmd_predict(argparse.Namespace(checkpoint=args.checkpoint, inputs=[str(args.n)], out=args.out), options)
