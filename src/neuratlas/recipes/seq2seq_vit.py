"""Recipes for the encoder–decoder Transformer (grapheme-to-phoneme on CMUdict) and the Vision Transformer
(Fashion-MNIST, the same 55k/5k/10k split as the CNN recipes in ``recipes/vision.py``).

The ``*-quick`` recipes are the tour's: a couple of CPU minutes, with ``time_limit`` as a safety net on a
slower machine (training then stops cleanly and the held-out metric is still measured).
"""

from neuratlas.recipes.registry import register_recipe

CMUDICT = {"name": "cmudict", "batch_size": 256}
FMNIST = {"name": "fashion-mnist", "batch_size": 256}


def _g2p(
    model: str,
    steps: int | None = None,
    epochs: float = 1.0,
    lr: float = 2e-3,
    beam: int = 1,
    smoothing: float = 0.1,
    val_words: int | None = 500,
    batch_size: int = 256,
    **trainer,
) -> dict:
    return {
        "model": {"name": model},
        "data": {**CMUDICT, "batch_size": batch_size},
        "task": {"name": "seq2seq", "label_smoothing": smoothing, "beam_size": beam, "val_words": val_words},
        "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 0.01, "betas": (0.9, 0.98)},
        "schedule": {"name": "cosine", "warmup_frac": 0.05, "min_lr_ratio": 0.02},
        "trainer": {"epochs": epochs, "max_steps": steps, "grad_clip": 1.0, **trainer},
    }


register_recipe(
    "g2p-transformer-quick",
    _g2p("transformer-2017-g2p-tiny", steps=1000, lr=2e-3, eval_every=1000, time_limit=105),
    "2017 encoder–decoder (d 128, 2+2 layers) on CMUdict G2P, 1,000 steps of 256 pairs; greedy "
    "WER/PER on 10k held-out words",
    family="encoder_decoder",
    tour=True,
    target="test WER ≤ 0.60",
)
register_recipe(
    "g2p-transformer-2017",
    _g2p("transformer-2017-g2p", epochs=30, lr=1e-3, beam=4, val_words=2000),
    "2017 encoder–decoder (post-LN, sinusoidal, ReLU; d 256, 3+3 layers), 30 epochs, beam 4",
    family="encoder_decoder",
    target="test WER ≤ 0.25, PER ≤ 0.06",
)
register_recipe(
    "g2p-transformer-modern",
    _g2p("transformer-modern-g2p", epochs=30, lr=1e-3, beam=4, val_words=2000),
    "modern switches (pre-RMSNorm, GQA, RoPE, SwiGLU) as an encoder–decoder, 30 epochs, beam 4",
    family="encoder_decoder",
    target="test WER ≤ 0.25, PER ≤ 0.06",
)


def _vit(model: str, epochs: float, lr: float = 2e-3, wd: float = 0.05, data: dict | None = None, **trainer) -> dict:
    return {
        "model": {"name": model},
        "data": data or dict(FMNIST),
        "task": {"name": "classification", "label_smoothing": 0.1},
        "optimizer": {"name": "adamw", "lr": lr, "weight_decay": wd},
        "schedule": {"name": "cosine", "warmup_frac": 0.05},
        "trainer": {"epochs": epochs, "grad_clip": 1.0, **trainer},
    }


register_recipe(
    "vit-fashion-quick",
    _vit("vit-fashion-p7", 2, time_limit=110),
    "ViT with 7×7 patches (16 tokens + class token), d 128, 4 layers, 2 epochs",
    family="vit",
    tour=True,
    target="test accuracy ≥ 0.72",
)
register_recipe(
    "vit-fashion",
    _vit("vit-fashion-p4", 40, lr=1e-3, data={**FMNIST, "erase": 0.25}),
    "ViT with 4×4 patches (49 tokens), d 128, 6 layers, 40 epochs with cutout",
    family="vit",
    target="test accuracy ≥ 0.91",
)
