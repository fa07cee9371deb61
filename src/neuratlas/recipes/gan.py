"""GAN recipes on Fashion-MNIST: the ``gan`` pair (generator + discriminator) trained by the ``gan`` task, with
the GAN's own options in the run's ``gan`` section (``--gan.loss``, ``--gan.d_lr``, ...)."""

from typing import Any

from neuratlas.recipes.registry import register_recipe

ADAM = {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999]}


def _gan(
    loss: str,
    disc: dict[str, Any],
    epochs: float,
    dim: int = 64,
    n_critic: int = 1,
    lr_d: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    batch_size: int = 64,
    **trainer: Any,
) -> dict[str, Any]:
    """A run config: the generator's optimizer is ``optimizer``, the discriminator's differs in lr and betas."""
    return {
        "model": {
            "name": "gan",
            "generator": {"name": "dcgan-generator", "dim": dim},
            "discriminator": {**disc, "dim": dim},
        },
        "data": {"name": "fashion-mnist", "batch_size": batch_size, "augment": False},
        "task": {"name": "gan"},
        "gan": {"loss": loss, "n_critic": n_critic, "d_lr": lr_d, "d_betas": list(betas)},
        "optimizer": {**ADAM, "betas": list(betas)},
        "schedule": {"name": "constant"},
        "trainer": {"epochs": epochs, **trainer},
    }


register_recipe(
    "dcgan-fashion-quick",
    _gan("ns", {"name": "dcgan-discriminator"}, 1, dim=32, max_steps=1500, eval_every=750),
    "DCGAN (dim 32), non-saturating loss, 1,500 steps of 64 Fashion-MNIST images (1.7 epochs)",
    family="gan",
    tour=True,
    target="Fréchet distance (judge features) ≤ 8; ≥ 9/10 classes covered",
)
register_recipe(
    "dcgan-fashion",
    _gan("ns", {"name": "dcgan-discriminator"}, 10, batch_size=128),
    "DCGAN (dim 64), non-saturating loss, 10 epochs",
    family="gan",
    target="10/10 classes covered",
)
register_recipe(
    "sngan-fashion",
    _gan("hinge", {"name": "dcgan-discriminator-sn"}, 10, lr_d=4e-4, betas=(0.0, 0.9), batch_size=128),
    "DCGAN architecture, spectrally normalised discriminator + hinge loss (TTUR), 10 epochs",
    family="gan",
    target="10/10 classes covered",
)
register_recipe(
    "wgan-gp-fashion",
    _gan("wgan-gp", {"name": "dcgan-discriminator", "norm": "none"}, 10, n_critic=5, lr_d=1e-4, betas=(0.0, 0.9)),
    "DCGAN architecture as a WGAN-GP critic (no batch norm, 5 critic steps), 10 epochs",
    family="gan",
    target="10/10 classes covered",
)
