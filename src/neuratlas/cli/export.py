"""export: a run's model as ONNX, a torch.export program or a Hugging Face folder, checked on its own data."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a run's model (onnx, pt2, hf), checked against eager PyTorch",
        description="Export RUN (a run folder or a .safetensors checkpoint) to --out (default: "
        "RUN/export/FORMAT). onnx and pt2 files are run in onnxruntime / torch.export.load on the "
        "run's validation batch and compared with eager PyTorch (max abs difference, speed ratio); "
        "hf folders are loaded with transformers' AutoModel classes and compared.",
    )
    p.add_argument("run", help="a run folder or a .safetensors checkpoint")
    p.add_argument("--format", required=True, help="onnx | pt2 | hf")
    p.add_argument("--out", help="output folder (must not exist unless --force)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace, extra: list[str]) -> int:
    from neuratlas.export import export_run
    from neuratlas.export.check import cpu_name
    from neuratlas.export.core import check_format

    check_format(args.format)
    result = export_run(args.run, args.format, args.out, force=args.force)
    print(f"wrote {result.out}: {', '.join(result.files)}")
    if result.example:
        print(f"checked on {result.example} ({cpu_name()}):")
    for c in result.checks:
        print(f"  {c.line()}")
    return 0
