"""Training-paradigm recipes: transfer (pretrained → fine-tune), self-supervised pretraining, federated.

Transfer recipes are ordinary runs with a ``transfer`` section (``neuratlas train lite0-fashion-finetune
--transfer.lr_decay 0.5``); self-supervised pretraining is an ordinary task (``tasks/self_supervised.py``).
"""

from __future__ import annotations

from typing import Any

from neuratlas.recipes.registry import register_recipe

FMNIST = {"name": "fashion-mnist", "batch_size": 128}

# --- transfer -----------------------------------------------------------------------------------------


def _transfer_recipe(
    name: str,
    model: dict,
    transfer: dict,
    description: str,
    steps: int,
    lr: float,
    target: str = "",
    tour: bool = False,
) -> None:
    cfg = {
        "model": model,
        "data": {**FMNIST, "val_size": 1000},
        "task": {"name": "classification", "label_smoothing": 0.1},
        "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 1e-4},
        "schedule": {"name": "onecycle", "pct_start": 0.2},
        "trainer": {"max_steps": steps},
        "transfer": transfer,
    }
    register_recipe(name, cfg, description, family="transfer", tour=tour, target=target)


# EfficientNet-Lite0 at 28×28 grey: the RGB stem kernels are summed for one channel and the stem runs at
# stride 1 (``small_input``), so the ImageNet features see a 28-px image at the scale of a 56-px one.
LITE0 = {"name": "efficientnet-lite0", "small_input": True, "padding": "same", "bn_eps": 1e-3, "drop_path": 0.05}
_transfer_recipe(
    "lite0-fashion-finetune",
    LITE0,
    {"checkpoint": "imagenet-lite0", "lr_decay": 0.7},
    "EfficientNet-Lite0 from real ImageNet weights, fine-tuned 150 steps on Fashion-MNIST "
    "(discriminative lrs ×0.7 per stage)",
    150,
    2e-3,
    target="test accuracy ≥ 0.85",
    tour=True,
)
_transfer_recipe(
    "lite0-fashion-scratch",
    LITE0,
    {"checkpoint": ""},
    "the same Lite0 and schedule from random initialisation (the baseline)",
    150,
    2e-3,
)
_transfer_recipe(
    "lite0-fashion-linear",
    LITE0,
    {"checkpoint": "imagenet-lite0", "freeze": "stem.*,stages.*,head_conv.*"},
    "frozen ImageNet Lite0 features + a trained linear head",
    150,
    5e-3,
)
_transfer_recipe(
    "lite0-fashion-gradual",
    LITE0,
    {"checkpoint": "imagenet-lite0", "lr_decay": 0.7, "unfreeze_every": 20},
    "ULMFiT-style gradual unfreezing: one more stage every 20 steps",
    150,
    2e-3,
)
_transfer_recipe(
    "convnet-from-checkpoint",
    {"name": "convnet"},
    {"checkpoint": "", "freeze": "stages.0.*"},
    "any Neuratlas checkpoint as initialisation: --transfer.checkpoint RUN (first stage frozen)",
    300,
    2e-3,
)

# The real all-MiniLM-L6-v2 (models/bert.py imports it) on Rotten Tomatoes: full fine-tune vs LoRA on the
# attention projections vs a frozen encoder with a trained linear head; same data, steps and schedule.
_MINILM_RT = {
    "model": {"name": "minilm-l6", "dropout": 0.1},
    "data": {"name": "rotten-tomatoes", "tokenizer": "all-MiniLM-L6-v2", "max_len": 48, "batch_size": 32},
    "task": {"name": "text-classification"},
    "optimizer": {"name": "adamw", "lr": 2e-4, "weight_decay": 0.01},
    "schedule": {"name": "linear", "warmup_frac": 0.1},
    "trainer": {"max_steps": 150, "eval_every": 150, "grad_clip": 1.0},
}
for _name, _tc, _lr, _desc in (
    ("minilm-rt-full", {}, 2e-4, "all 22.7M weights train"),
    (
        "minilm-rt-lora",
        {"lora_rank": 8, "lora_alpha": 16, "lora_targets": "*.attn.qkv,*.attn.proj"},
        1e-3,
        "LoRA r=8 on every attention projection, the rest frozen",
    ),
    ("minilm-rt-frozen", {"freeze": "embed.*,encoder.*"}, 3e-3, "frozen encoder, linear head only"),
):
    register_recipe(
        _name,
        {**_MINILM_RT, "optimizer": {**_MINILM_RT["optimizer"], "lr": _lr}, "transfer": _tc},
        f"all-MiniLM-L6-v2 on Rotten Tomatoes, 150 steps: {_desc}",
        family="transfer",
        target="test accuracy ≥ 0.75",
    )

# --- self-supervised pretraining (ordinary Trainer runs of tasks/self_supervised.py) --------------------

for _method, _desc in (
    ("rotation", "predict the rotation (0/90/180/270°) of unlabelled Fashion-MNIST"),
    ("simclr", "SimCLR: two augmented views, NT-Xent loss, unlabelled Fashion-MNIST"),
):
    register_recipe(
        f"ssl-{_method}-fashion",
        {
            "model": {"name": "convnet", "num_classes": 4 if _method == "rotation" else 128},
            "data": {**FMNIST, "batch_size": 256, "augment": False, "val_size": 5000},
            "task": {"name": "self-supervised", "method": _method},
            "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4},
            "schedule": {"name": "onecycle", "pct_start": 0.2},
            "trainer": {"epochs": 1},
        },
        f"{_desc}; val/test metric = linear-probe accuracy on frozen features",
        family="self-supervised",
        tour=_method == "rotation",
        target="linear-probe test accuracy ≥ 0.80",
    )

# --- federated ----------------------------------------------------------------------------------------
# Ordinary runs plus a ``federated`` section: LeNet-5 on Fashion-MNIST (train + val pooled, no augmentation),
# clients taking SGD steps (lr 0.05, momentum 0.9) on their own shard; `neuratlas train fedavg-fashion-quick
# --federated.rounds 10 --optimizer.name adamw` changes either like any run.

_FED_RUN = {
    "model": {"name": "lenet5"},
    "data": {**FMNIST, "val_size": 0, "augment": False},
    "task": {"name": "classification"},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "constant"},
}


def _federated_recipe(
    name: str,
    federated: dict[str, Any],
    description: str,
    batch_size: int = 32,
    limit_train: int | None = None,
    target: str = "",
    tour: bool = False,
) -> None:
    cfg = {
        **_FED_RUN,
        "data": {**_FED_RUN["data"], "batch_size": batch_size, "limit_train": limit_train},
        "federated": federated,
    }
    register_recipe(name, cfg, description, family="federated", tour=tour, target=target)


_federated_recipe(
    "fedavg-fashion-quick",
    {"clients": 10, "rounds": 6, "fraction": 0.5, "alpha": 0.5},
    "FedAvg, 10 clients with Dirichlet(0.5) non-IID shards of 20k Fashion-MNIST images, 5 per "
    "round, 6 rounds, LeNet-5; vs centralised training on the same data and sample budget",
    batch_size=64,
    limit_train=20000,
    target="test accuracy ≥ 0.65 (centralised, same budget: ≈ 0.85)",
    tour=True,
)
_federated_recipe(
    "fedavg-fashion-iid",
    {"clients": 10, "rounds": 30, "fraction": 0.5, "alpha": 0.0},
    "FedAvg, 10 IID clients, 30 rounds (niid-bench: 89.23% with a larger CNN, 50 rounds)",
    target="test accuracy ≥ 0.87",
)
_federated_recipe(
    "fedavg-fashion-dirichlet",
    {"clients": 10, "rounds": 30, "fraction": 0.5, "alpha": 0.5},
    "FedAvg, 10 clients with Dirichlet(0.5) non-IID shards, 30 rounds (the IID recipe's set-up otherwise)",
    target="test accuracy ≥ 0.84",
)
_federated_recipe(
    "fedprox-fashion-iid",
    {"clients": 10, "rounds": 30, "fraction": 0.5, "alpha": 0.0, "strategy": "fedprox", "prox_mu": 0.01},
    "FedProx (μ=0.01), 10 IID clients, 30 rounds",
    target="test accuracy ≥ 0.87",
)
_federated_recipe(
    "fedprox-fashion-dirichlet",
    {"clients": 10, "rounds": 30, "fraction": 0.5, "alpha": 0.5, "strategy": "fedprox", "prox_mu": 0.01},
    "FedProx (μ=0.01), 10 clients with Dirichlet(0.5) non-IID shards, 30 rounds",
    target="test accuracy ≥ 0.84",
)
_federated_recipe(
    "fedprox-fashion-noniid",
    {"clients": 10, "rounds": 30, "fraction": 0.5, "alpha": 0.3, "strategy": "fedprox", "prox_mu": 0.01},
    "FedProx (μ=0.01), 10 clients with Dirichlet(0.3) shards, 30 rounds",
    target="test accuracy ≥ 0.82",
)
