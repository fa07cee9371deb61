"""CLIP recipes: a conv-net/char-transformer dual encoder on real image–text pairs.

``clip-fashion-quick`` (the tour recipe) pairs Fashion-MNIST images with captions drawn from 8 templates per
class — the images are real, the captions are SYNTHETIC — and reports zero-shot accuracy on the 10,000 test
images from text prompts alone. ``clip-emoji`` trains on ~2,900 Noto Color Emoji with their CLDR names and
reports retrieval on 400 test names never seen in training.
"""

from neuratlas.recipes.registry import register_recipe


def _run(
    model: dict,
    data: dict,
    epochs: float,
    lr: float = 2e-3,
    wd: float = 0.1,
    metric: str = "zero_shot_accuracy",
    **trainer,
) -> dict:
    return {
        "model": model,
        "data": data,
        "task": {"name": "contrastive", "metric": metric},
        "optimizer": {"name": "adamw", "lr": lr, "weight_decay": wd},
        "schedule": {"name": "onecycle", "pct_start": 0.1},
        "trainer": {"epochs": epochs, **trainer},
    }


register_recipe(
    "clip-fashion-quick",
    _run({"name": "clip-convnet"}, {"name": "fashion-mnist-captions", "batch_size": 256}, 1),
    "CLIP on Fashion-MNIST images with SYNTHETIC captions (8 templates per class), 1 epoch; "
    "zero-shot accuracy on the test set from text prompts alone",
    family="clip",
    tour=True,
    target="test zero-shot accuracy ≥ 0.75 (chance 0.10)",
)
register_recipe(
    "clip-fashion-vit",
    _run({"name": "clip-vit"}, {"name": "fashion-mnist-captions", "batch_size": 256}, 3, lr=1e-3),
    "CLIP with a tiny ViT image encoder on Fashion-MNIST with synthetic template captions, 3 epochs",
    family="clip",
    target="test zero-shot accuracy ≥ 0.75",
)
register_recipe(
    "clip-emoji",
    _run(
        {"name": "clip-convnet-emoji"}, {"name": "emoji-names", "batch_size": 128}, 30, lr=2e-3, metric="i2t_recall@5"
    ),
    "CLIP on ~2,900 Noto Color Emoji + CLDR names; retrieval among 400 test names never trained on",
    family="clip",
    target="test i2t recall@5 well above chance (5/400 = 0.0125)",
)
