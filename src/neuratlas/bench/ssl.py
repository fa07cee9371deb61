"""What self-supervised pretraining buys: linear probe and fine-tuning with 1%, 10%, 100% of the labels.

    neuratlas bench ssl --quick            # ~3 idle CPU minutes: short pretraining, 2,000 test images
    neuratlas bench ssl --pretrain_steps 600 --finetune_steps 300 --test 10000

The same registry CNN (``convnet``) is pretrained without labels by rotation prediction and by SimCLR
(``tasks/self_supervised.py``), then evaluated against the same network from random initialisation on the
same labelled subsets: a linear probe on frozen features and a full fine-tune (fresh 10-way head).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from neuratlas.bench import BENCHMARKS
from neuratlas.data import load_dataset
from neuratlas.data.transforms import normalize, random_crop, random_hflip
from neuratlas.models import create_model
from neuratlas.tasks.self_supervised import embed, linear_probe

FRACTIONS = (0.01, 0.10, 1.0)


def pretrain(method: str, steps: int, model_name: str, seed: int, out_dir: str) -> nn.Module:
    """Train ``steps`` steps of the ssl-METHOD-fashion recipe (no evaluation, no checkpoint)."""
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    run = get_recipe(f"ssl-{method}-fashion").run_config(
        {
            "trainer.max_steps": str(steps),
            "trainer.seed": str(seed),
            "trainer.out_dir": out_dir,
            "trainer.progress": "false",
            "trainer.loggers": "csv",
            "model.name": model_name,
        }
    )
    trainer = Trainer(run)
    trainer.model.train()
    for _ in range(steps):
        trainer.train_step()
    return trainer.model


def finetune(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    mean,
    std,
    seed: int,
    batch: int = 128,
    lr: float = 2e-3,
) -> nn.Module:
    """All weights train with a fresh 10-way head, AdamW + cosine decay, light augmentation."""
    model = copy.deepcopy(model)
    model.classifier = nn.Linear(model.classifier.in_features, 10)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(batch, len(x)),), generator=g)
        xb = random_hflip(random_crop(x[idx], 2, g), g)
        loss = nn.functional.cross_entropy(model(normalize(xb, mean, std)), y[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean, std) -> float:
    model.eval()
    pred = torch.cat([model(normalize(x[i : i + 1000], mean, std)).argmax(-1) for i in range(0, len(x), 1000)])
    return (pred == y).float().mean().item()


@dataclass
class SSLOptions:
    quick: bool = False  # short budgets
    pretrain_steps: int | None = None  # default: 60 with --quick, else 600
    finetune_steps: int | None = None  # default: 40 with --quick, else 300
    test: int | None = None  # held-out images scored (default: 2,000 with --quick, else 10,000)
    model: str = "convnet"  # a registered CNN
    seed: int = 0
    out: str = "runs/bench-ssl"  # folder for the pretraining runs and plots


def ssl_benchmark(options: SSLOptions) -> list[str]:
    quick = options.quick
    pre_steps = options.pretrain_steps or (60 if quick else 600)
    ft_steps = options.finetune_steps or (40 if quick else 300)
    n_test = options.test or (2000 if quick else 10000)
    model_name = options.model
    seed = options.seed
    out_dir = options.out
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    data = load_dataset({"name": "fashion-mnist", "val_size": 5000})
    (x, y), (xt, yt), mean, std = data.train, data.test, data.mean, data.std
    xt, yt = xt[:n_test], yt[:n_test]
    prep = lambda v: normalize(v, mean, std)  # noqa: E731
    inits = {"random init": create_model(model_name, num_classes=10, in_chans=1)}
    times = {}
    for method in ("rotation", "simclr"):
        t = time.perf_counter()
        inits[method] = pretrain(method, pre_steps, model_name, seed, out_dir)
        times[method] = time.perf_counter() - t
    rows = []
    for name, model in inits.items():
        probe, tuned = [], []
        f_test = embed(model, xt, prep)
        for frac in FRACTIONS:
            n = max(10, int(frac * len(x)))
            f_train = embed(model, x[:n], prep)
            probe.append(linear_probe(f_train, y[:n], f_test, yt, 10))
            tuned_model = finetune(model, x[:n], y[:n], ft_steps, mean, std, seed)
            tuned.append(accuracy(tuned_model, xt, yt, mean, std))
        rows.append((name, probe, tuned))
    labels = " ".join(f"{f:>6.0%}" for f in FRACTIONS)
    lines = [
        f"Fashion-MNIST, {model_name}; labelled subsets of {len(x):,} training images; test on {n_test:,}",
        f"pretraining {pre_steps} steps × 256 images without labels (rotation "
        f"{times['rotation']:.0f} s, SimCLR {times['simclr']:.0f} s); "
        f"fine-tuning {ft_steps} steps × 128",
        "",
        f"| init | linear probe {labels} | fine-tune {labels} |",
        "|---|---|---|",
    ]
    for name, probe, tuned in rows:
        lines.append(
            f"| {name} | " + " ".join(f"{a:6.3f}" for a in probe) + " | " + " ".join(f"{a:6.3f}" for a in tuned) + " |"
        )
    lines.append(f"\n(total {time.perf_counter() - t0:.0f} s; columns: 1% / 10% / 100% of the labels)")
    return lines


BENCHMARKS.add(
    "ssl",
    ssl_benchmark,
    SSLOptions,
    description="self-supervised pretraining (rotation, SimCLR) vs "
    "random init: linear probe and fine-tune with 1/10/100% of labels",
)
