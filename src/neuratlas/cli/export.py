"""export: a run's model as ONNX, a torch.export program or a Hugging Face folder, checked on its own data."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from neuratlas.cli.options import Parsed, command, device_option, positional


@dataclass
class ExportOptions:
    """Export RUN (a run folder or a .safetensors checkpoint) to --out (default: RUN/export/FORMAT). onnx and
    pt2 files are run in onnxruntime / torch.export.load on the run's validation batch and compared with eager
    PyTorch (max abs difference, speed ratio); hf folders are loaded with transformers' AutoModel classes and
    compared. The files are always traced on the CPU; --device picks where the check runs them (onnxruntime's
    CUDA provider, the loaded program moved to the GPU) beside the eager model on the same device."""

    run: str = positional("a run folder or a .safetensors checkpoint")
    format: Literal["onnx", "pt2", "hf"] = "onnx"  # what to write
    out: str | None = None  # output folder (must not exist unless --force; default: RUN/export/FORMAT)
    force: bool = False  # replace an existing output folder
    device: str = device_option("cpu", "where the check runs the exported model and the eager one")


def register(sub: argparse._SubParsersAction) -> None:
    command(
        sub,
        "export",
        ExportOptions,
        cmd_export,
        help="export a run's model (onnx, pt2, hf), checked against eager PyTorch",
    )


def cmd_export(args: ExportOptions, parsed: Parsed) -> int:
    from neuratlas.device import resolve_device
    from neuratlas.export import export_run
    from neuratlas.export.check import device_name

    device = resolve_device(args.device, option="--device")  # a device this machine lacks: one line, first
    result = export_run(args.run, args.format, args.out, force=args.force, device=device)
    print(f"wrote {result.out}: {', '.join(result.files)}")
    if result.example:
        print(f"checked on {result.example} ({device_name(device)}):")
    for c in result.checks:
        print(f"  {c.line()}")
    return 0
