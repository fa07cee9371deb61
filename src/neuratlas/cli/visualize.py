"""visualize: first-layer filters and per-stage activation maps of a CNN checkpoint as PNGs."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("visualize", help="save first-layer filters and activation maps (PNG) of a CNN checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--image", help="image file to trace (default: the first test image of the data set)")
    p.add_argument("--out", default=None, help="output folder (default: <run>/visualize)")
    p.set_defaults(func=cmd_visualize)


def cmd_visualize(args: argparse.Namespace, extra: list[str]) -> int:
    from neuratlas.data import load_dataset
    from neuratlas.data.transforms import normalize
    from neuratlas.models.checkpoint import read_checkpoint
    from neuratlas.tasks.classification import load_image
    from neuratlas.visualize import activation_maps, first_layer_filters

    ckpt = read_checkpoint(args.checkpoint)
    model = ckpt.build_model()
    out = Path(args.out) if args.out else ckpt.path.parent.parent / "visualize"
    out.mkdir(parents=True, exist_ok=True)
    paths = [first_layer_filters(model, out / "filters_layer1.png")]
    extra_info = ckpt.extra
    if "input_shape" in extra_info:
        c, h, w = extra_info["input_shape"]
        if args.image:
            img = load_image(args.image, c, h, w)
        else:
            img = load_dataset({"name": extra_info["dataset"]}).test[0][0]
        x = normalize(img[None], tuple(extra_info["mean"]), tuple(extra_info["std"]))
        paths += activation_maps(model, x, out)
    for p in paths:
        print(p)
    return 0
