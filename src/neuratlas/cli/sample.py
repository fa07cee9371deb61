"""sample: draw images from a trained GAN generator into one PNG grid."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="write a grid of images from a GAN checkpoint",
                       description="Draw N images from the generator in CHECKPOINT (a GAN run folder or its "
                       "generator.safetensors) and save them as a PNG grid.")
    p.add_argument("checkpoint", help="GAN run folder or checkpoints/generator.safetensors")
    p.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png", help="PNG file to write")
    p.add_argument("--score", action="store_true", help="also score the samples with the judge classifier")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace, extra: list[str]) -> int:
    import torch

    from neuratlas.errors import NeuratlasError
    from neuratlas.models.checkpoint import read_checkpoint
    from neuratlas.models.gan import Generator
    from neuratlas.tasks.gan import save_grid

    path = Path(args.checkpoint)
    if path.is_dir():
        path = next((p for p in (path / "checkpoints" / "generator.safetensors", path / "generator.safetensors")
                     if p.is_file()), path / "checkpoints" / "generator.safetensors")
    if not path.is_file():
        raise NeuratlasError(f"{args.checkpoint} holds no GAN generator (looked for checkpoints/generator.safetensors)")
    if args.n < 1:
        raise NeuratlasError("--n must be at least 1")
    ckpt = read_checkpoint(path)
    model = ckpt.build_model()
    if not isinstance(model, Generator):
        raise NeuratlasError(f"{path} holds a {ckpt.model_name}, not a GAN generator")
    model.eval()
    with torch.no_grad():
        images = model.sample(args.n, torch.Generator().manual_seed(args.seed))
    labels = None
    if args.score:
        from neuratlas.tasks.gan import DEFAULT_JUDGE, load_judge

        gan = ckpt.run_config.get("gan", {})
        judge = load_judge(ckpt.run_config["data"], gan.get("judge") or DEFAULT_JUDGE, gan.get("judge_epochs", 1.0))
        _, logits = judge.features_and_logits(images)
        labels = [judge.classes[i] for i in logits.argmax(-1).tolist()]
    out = save_grid(images, Path(args.out), f"{ckpt.model_name}, step {ckpt.step}", labels)
    print(f"wrote {args.n} samples from {path} (step {ckpt.step}) to {out}")
    return 0
