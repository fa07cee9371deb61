"""``neuratlas bench export``: every exportable family's recipe trained for a few steps on its real data, then
exported as ONNX and as a torch.export program exactly as ``neuratlas export`` does it, each file checked on
the run's own validation batch: max |exported − eager| and the exported runtime's speed as a ratio to eager
PyTorch's, measured in the same process on the same number of threads."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from neuratlas.bench import BENCHMARKS
from neuratlas.errors import NeuratlasError

# family -> (recipe, overrides); the recipes are the families' own (tour) recipes
FAMILIES: dict[str, tuple[str, dict[str, str]]] = {
    "MLP": ("mlp-fashion-quick", {}),
    "ConvNet": ("convnet-fashion-quick", {}),
    "ResNet-20": ("resnet-fashion-quick", {}),
    "MobileNet V2": ("mobilenet-fashion-quick", {}),
    "EfficientNet-B0": ("efficientnet-fashion-quick", {}),
    "ViT": ("vit-fashion-quick", {}),
    "MiniLM classifier": ("bert-rotten-tomatoes-quick", {}),
    "BERT masked LM": ("bert-shakespeare-mlm", {}),
    "GPT": ("gpt-shakespeare-char-quick", {}),
    "GPT modern (RoPE, GQA)": ("transformer-modern-shakespeare", {}),
    "LSTM forecaster": ("lstm-airpassengers-quick", {}),
    "GRU forecaster": ("gru-airpassengers", {}),
    "LSTM classifier": (
        "lstm-rotten-tomatoes",
        {
            "model.name": "lstm-classifier",
            "model.bidirectional": "false",
            "model.n_layer": "1",
            "model.pooling": "last",
        },
    ),
    "U-Net": ("unet-nuclei-quick", {}),
    "FCOS": ("fcos-trees-scratch", {}),
    "RetinaNet": ("retinanet-trees", {}),
    "GCN": ("gcn-cora", {}),
    "CLIP": ("clip-fashion-quick", {}),
}
SMALL_DATA = {"limit_train": 256, "val_size": 128, "batch_size": 8}


def _short_run(recipe_name: str, overrides: dict[str, str], out: Path) -> Path:
    """The recipe trained for 2 steps on a slice of its data (weights just past initialisation are enough to
    check an export; the validation batch is the recipe's own)."""
    from neuratlas.data import DATASETS
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    recipe = get_recipe(recipe_name)
    run = recipe.run_config(overrides)
    fields = {f.name for f in dataclasses.fields(DATASETS.get(run.data["name"]).config_class)}
    data = {
        f"data.{k}": str(v)
        for k, v in SMALL_DATA.items()
        if k in fields and k != "val_size" and isinstance(run.data.get(k, 0), int | None)
    }
    run = recipe.run_config(
        {
            **overrides,
            **data,
            "trainer.out_dir": str(out),
            "trainer.run_name": "run",
            "trainer.progress": "false",
            "trainer.loggers": "csv",
            "trainer.max_steps": "2",
            "trainer.eval_every": "1000000",
            "trainer.time_limit": "none",
            "trainer.budget_schedule": "false",
        }
    )
    return Trainer(run).fit().run_dir


@dataclass
class ExportBenchOptions:
    families: list[str] = field(default_factory=list)  # only these families or recipes (comma-separated)
    threads: int = 1


def bench_export(options: ExportBenchOptions) -> list[str]:
    from neuratlas.export import export_run
    from neuratlas.export.check import cpu_name

    only, threads = options.families, options.threads
    torch.set_num_threads(threads)
    lines = [
        f"export parity and speed ({cpu_name()}, {threads} thread{'s' * (threads > 1)}): max |exported − eager| on "
        "the run's validation batch; speed = exported / eager",
        "",
        "| family | recipe | samples | ONNX max diff | onnxruntime / eager | pt2 max diff | torch.export / eager |",
        "|---|---|---|---|---|---|---|",
    ]
    for family, (recipe, overrides) in FAMILIES.items():
        if only and family not in only and recipe not in only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                run_dir = _short_run(recipe, overrides, Path(tmp))
                checks = {fmt: export_run(run_dir, fmt, Path(tmp) / fmt).checks for fmt in ("onnx", "pt2")}
            except NeuratlasError as e:
                lines.append(f"| {family} | {recipe} | – | {str(e)[:150]} | | | |")
                continue
        for o, p in zip(checks["onnx"], checks["pt2"]):
            part = f" ({o.part})" if o.part != "model" else ""
            lines.append(
                f"| {family}{part} | {recipe} | {o.samples} | {o.max_abs_diff:.1e} | {o.speed_ratio:.2f}× | "
                f"{p.max_abs_diff:.1e} | {p.speed_ratio:.2f}× |"
            )
    return lines


BENCHMARKS.add(
    "export",
    bench_export,
    ExportBenchOptions,
    description="ONNX and torch.export parity and speed against eager PyTorch "
    "for every exportable family on its recipe's validation batch (--families A,B, --threads N)",
)
