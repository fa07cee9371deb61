"""Training-paradigm recipes: transfer (pretrained → fine-tune), self-supervised pretraining, federated.

Transfer recipes are ordinary runs with a ``transfer`` section (``neuratlas train lite0-fashion-finetune
--transfer.lr_decay 0.5``); self-supervised pretraining is an ordinary task (``tasks/self_supervised.py``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from neuratlas.config import build_config
from neuratlas.recipes.registry import Recipe, register_recipe

FMNIST = {"name": "fashion-mnist", "batch_size": 128}

# --- transfer -----------------------------------------------------------------------------------------


def _transfer_recipe(name: str, model: dict, transfer: dict, description: str, steps: int, lr: float,
                     target: str = "", tour: bool = False) -> None:
    cfg = {"model": model, "data": {**FMNIST, "val_size": 1000},
           "task": {"name": "classification", "label_smoothing": 0.1},
           "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 1e-4},
           "schedule": {"name": "onecycle", "pct_start": 0.2}, "trainer": {"max_steps": steps},
           "transfer": transfer}
    register_recipe(name, cfg, description, family="transfer", tour=tour, target=target)


# EfficientNet-Lite0 at 28×28 grey: the RGB stem kernels are summed for one channel and the stem runs at
# stride 1 (``small_input``), so the ImageNet features see a 28-px image at the scale of a 56-px one.
LITE0 = {"name": "efficientnet-lite0", "small_input": True, "padding": "same", "bn_eps": 1e-3,
         "drop_path": 0.05}
_transfer_recipe("lite0-fashion-finetune", LITE0, {"checkpoint": "imagenet-lite0", "lr_decay": 0.7},
                 "EfficientNet-Lite0 from real ImageNet weights, fine-tuned 150 steps on Fashion-MNIST "
                 "(discriminative lrs ×0.7 per stage)", 150, 2e-3, target="test accuracy ≥ 0.85", tour=True)
_transfer_recipe("lite0-fashion-scratch", LITE0, {"checkpoint": ""},
                 "the same Lite0 and schedule from random initialisation (the baseline)", 150, 2e-3)
_transfer_recipe("lite0-fashion-linear", LITE0,
                 {"checkpoint": "imagenet-lite0", "freeze": "stem.*,stages.*,head_conv.*"},
                 "frozen ImageNet Lite0 features + a trained linear head", 150, 5e-3)
_transfer_recipe("lite0-fashion-gradual", LITE0,
                 {"checkpoint": "imagenet-lite0", "lr_decay": 0.7, "unfreeze_every": 20},
                 "ULMFiT-style gradual unfreezing: one more stage every 20 steps", 150, 2e-3)
_transfer_recipe("convnet-from-checkpoint", {"name": "convnet"}, {"checkpoint": "", "freeze": "stages.0.*"},
                 "any Neuratlas checkpoint as initialisation: --transfer.checkpoint RUN (first stage frozen)",
                 300, 2e-3)

# The real all-MiniLM-L6-v2 (models/bert.py imports it) on Rotten Tomatoes: full fine-tune vs LoRA on the
# attention projections vs a frozen encoder with a trained linear head; same data, steps and schedule.
_MINILM_RT = {"model": {"name": "minilm-l6", "dropout": 0.1},
              "data": {"name": "rotten-tomatoes", "tokenizer": "all-MiniLM-L6-v2", "max_len": 48,
                       "batch_size": 32},
              "task": {"name": "text-classification"},
              "optimizer": {"name": "adamw", "lr": 2e-4, "weight_decay": 0.01},
              "schedule": {"name": "linear", "warmup_frac": 0.1},
              "trainer": {"max_steps": 150, "eval_every": 150, "grad_clip": 1.0}}
for _name, _tc, _lr, _desc in (
        ("minilm-rt-full", {}, 2e-4, "all 22.7M weights train"),
        ("minilm-rt-lora", {"lora_rank": 8, "lora_alpha": 16, "lora_targets": "*.attn.qkv,*.attn.proj"}, 1e-3,
         "LoRA r=8 on every attention projection, the rest frozen"),
        ("minilm-rt-frozen", {"freeze": "embed.*,encoder.*"}, 3e-3, "frozen encoder, linear head only")):
    register_recipe(_name, {**_MINILM_RT, "optimizer": {**_MINILM_RT["optimizer"], "lr": _lr}, "transfer": _tc},
                    f"all-MiniLM-L6-v2 on Rotten Tomatoes, 150 steps: {_desc}", family="transfer",
                    target="test accuracy ≥ 0.75")

# --- self-supervised pretraining (ordinary Trainer runs of tasks/self_supervised.py) --------------------

for _method, _desc in (("rotation", "predict the rotation (0/90/180/270°) of unlabelled Fashion-MNIST"),
                       ("simclr", "SimCLR: two augmented views, NT-Xent loss, unlabelled Fashion-MNIST")):
    register_recipe(
        f"ssl-{_method}-fashion",
        {"model": {"name": "convnet", "num_classes": 4 if _method == "rotation" else 128},
         "data": {**FMNIST, "batch_size": 256, "augment": False, "val_size": 5000},
         "task": {"name": "self-supervised", "method": _method},
         "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4},
         "schedule": {"name": "onecycle", "pct_start": 0.2}, "trainer": {"epochs": 1}},
        f"{_desc}; val/test metric = linear-probe accuracy on frozen features", family="self-supervised",
        tour=_method == "rotation", target="linear-probe test accuracy ≥ 0.80")

# --- federated ----------------------------------------------------------------------------------------

_FEDERATED: dict[str, dict[str, Any]] = {}


def _split(overrides: dict[str, str], prefix: str) -> tuple[dict[str, str], dict[str, str]]:
    mine = {k[len(prefix) + 1:]: v for k, v in overrides.items() if k.startswith(prefix + ".")}
    return mine, {k: v for k, v in overrides.items() if not k.startswith(prefix + ".")}


def federated_comparison(cfg, out: Path, compare: tuple[str, ...] = ("centralised",),
                         progress: bool = True) -> list[str]:
    """Run ``cfg`` and the comparison runs on the same data; plot accuracy per round; return table lines."""
    from neuratlas.paradigms.federated import core

    out.mkdir(parents=True, exist_ok=True)
    data = core.load_federated_data(cfg)
    runs = [core.simulate(cfg, data, progress=progress)]
    for other in compare:
        if other == "centralised":
            runs.append(core.centralised(cfg, data, progress=progress))
        else:  # "fedprox", "fedavg": the other strategy on the same split
            alt = dataclasses.replace(cfg, strategy=other)
            runs.append(core.simulate(alt, data, core.client_shards(alt, data[0][1]), progress=progress))
    split = f"Dirichlet α={cfg.alpha}" if cfg.alpha else "IID"
    png = core.plot_histories(runs, out / "accuracy_per_round.png",
                         f"{cfg.model} on {cfg.dataset}: {cfg.clients} clients ({split}), "
                         f"{cfg.per_round}/round, {cfg.local_epochs} local epoch(s)")
    (out / "histories.json").write_text(json.dumps([vars(h) for h in runs], indent=2))
    lines = [f"{'run':28s} " + " ".join(f"r{r:<5d}" for r in runs[0].rounds) + "  time",
             *[f"{h.label:28s} " + " ".join(f"{a:.4f}" for a in h.accuracy) + f"  {h.seconds:.0f}s"
               for h in runs],
             f"weights uploaded per federated run: {runs[0].bytes_sent / 1e6:.1f} MB (raw data: 0 bytes)",
             f"plot: {png}"]
    if cfg.dp_clip > 0:
        lines.append(f"DP-FedAvg: update clip {cfg.dp_clip}, noise multiplier {cfg.dp_noise}")
    return lines


def run_federated(recipe: Recipe, overrides: dict[str, str]):
    from neuratlas.models import count_parameters, create_model
    from neuratlas.paradigms.federated.core import FederatedConfig, load_federated_data
    from neuratlas.tour import TourRow

    mine, rest = _split(overrides, "fed")
    cfg = build_config(FederatedConfig, {**_FEDERATED[recipe.name], **mine}, where="fed")
    out = Path(rest.get("trainer.out_dir", "runs")) / rest.get("trainer.run_name", recipe.name)
    progress = rest.get("trainer.progress", "true").lower() != "false"
    t0 = time.perf_counter()
    lines = federated_comparison(cfg, out, progress=progress)
    hist = json.loads((out / "histories.json").read_text())
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    (_, _), (xt, _), _, _, n_cls = load_federated_data(cfg)
    params = count_parameters(create_model(cfg.model, num_classes=n_cls, in_chans=xt.shape[1]))
    return TourRow(recipe.family, recipe.name, cfg.model,
                   f"{cfg.dataset} ({cfg.clients} clients, {'α=' + str(cfg.alpha) if cfg.alpha else 'IID'})",
                   f"test acc (centr. {hist[1]['accuracy'][-1]:.3f})", hist[0]["accuracy"][-1], params,
                   time.perf_counter() - t0, recipe.target, str(out / "accuracy_per_round.png"))


def _federated_recipe(name: str, fed: dict[str, Any], description: str, target: str = "",
                      tour: bool = False) -> None:
    _FEDERATED[name] = fed
    cfg = {"model": {"name": fed.get("model", "lenet5")}, "data": {"name": "fashion-mnist"}}
    register_recipe(name, cfg, description, family="federated", tour=tour, target=target,
                    runner=run_federated)


_federated_recipe("fedavg-fashion-quick",
                  {"clients": 10, "rounds": 6, "fraction": 0.5, "alpha": 0.5, "limit_train": 20000,
                   "batch_size": 64},
                  "FedAvg, 10 clients with Dirichlet(0.5) non-IID shards of 20k Fashion-MNIST images, 5 per "
                  "round, 6 rounds, LeNet-5; vs centralised training on the same data and sample budget",
                  target="test accuracy ≥ 0.65 (centralised, same budget: ≈ 0.85)", tour=True)
_federated_recipe("fedavg-fashion-iid",
                  {"clients": 10, "rounds": 30, "fraction": 0.5, "alpha": 0.0, "batch_size": 32},
                  "FedAvg, 10 IID clients, 30 rounds (niid-bench: 89.23% with a larger CNN, 50 rounds)",
                  target="test accuracy ≥ 0.87")
_federated_recipe("fedprox-fashion-noniid",
                  {"clients": 10, "rounds": 30, "fraction": 0.5, "alpha": 0.3, "strategy": "fedprox",
                   "prox_mu": 0.01, "batch_size": 32},
                  "FedProx (μ=0.01), 10 clients with Dirichlet(0.3) shards, 30 rounds",
                  target="test accuracy ≥ 0.82")
