"""visualize: first-layer filters and per-stage activation maps of a CNN checkpoint as PNGs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from neuratlas.cli.options import Parsed, command, device_option, positional


@dataclass
class VisualizeOptions:
    """Save the first layer's filters and each stage's activation maps of a CNN CHECKPOINT as PNGs."""

    checkpoint: str = positional("a run folder or a .safetensors checkpoint of a CNN")
    image: str | None = None  # image file to trace (default: the first test image of the data set)
    out: str | None = None  # output folder (default: <run>/visualize)
    device: str = device_option()


def register(sub: argparse._SubParsersAction) -> None:
    command(
        sub,
        "visualize",
        VisualizeOptions,
        cmd_visualize,
        help="save first-layer filters and activation maps (PNG) of a CNN checkpoint",
    )


def cmd_visualize(args: VisualizeOptions, parsed: Parsed) -> int:
    from neuratlas.data import load_dataset
    from neuratlas.data.transforms import normalize
    from neuratlas.device import resolve_device
    from neuratlas.models.checkpoint import read_checkpoint
    from neuratlas.tasks.classification import load_image
    from neuratlas.visualize import activation_maps, first_layer_filters

    device = resolve_device(args.device, option="--device")
    ckpt = read_checkpoint(args.checkpoint)
    model = ckpt.build_model().to(device)
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
        paths += activation_maps(model, x.to(device), out)
    for p in paths:
        print(p)
    return 0
