"""GAN recipes on Fashion-MNIST. Two optimizers do not fit ``Trainer.fit``, so they run through
``neuratlas.tasks.gan.gan_runner``; ``neuratlas train NAME`` and the tour both use it."""

from neuratlas.recipes.registry import register_recipe
from neuratlas.tasks.gan import GAN_PARTS, gan_runner

ADAM = {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999]}


def _gan(name: str, loss: str, disc: dict, epochs: float, dim: int = 64, n_critic: int = 1, lr_d: float = 2e-4,
         betas=(0.5, 0.999), batch_size: int = 64, **trainer) -> dict:
    """A RunConfig for the generator (so every recipe validates like any other) + the GAN-only parts."""
    GAN_PARTS[name] = {"discriminator": {"dim": dim, **disc}, "gan": {"loss": loss, "n_critic": n_critic},
                       "d_optimizer": {**ADAM, "lr": lr_d, "betas": list(betas)}}
    return {
        "model": {"name": "dcgan-generator", "dim": dim},
        "data": {"name": "fashion-mnist", "batch_size": batch_size, "augment": False},
        "optimizer": {**ADAM, "betas": list(betas)},
        "schedule": {"name": "constant"},
        "trainer": {"epochs": epochs, **trainer},
    }


register_recipe("dcgan-fashion-quick",
                _gan("dcgan-fashion-quick", "ns", {"name": "dcgan-discriminator"}, 1, dim=32, max_steps=1500,
                     eval_every=750),
                "DCGAN (dim 32), non-saturating loss, 1,500 steps of 64 Fashion-MNIST images (1.7 epochs)",
                family="gan", tour=True,
                target="Fréchet distance (judge features) ≤ 8; ≥ 9/10 classes covered", runner=gan_runner)
register_recipe("dcgan-fashion",
                _gan("dcgan-fashion", "ns", {"name": "dcgan-discriminator"}, 10, batch_size=128),
                "DCGAN (dim 64), non-saturating loss, 10 epochs", family="gan",
                target="10/10 classes covered", runner=gan_runner)
register_recipe("sngan-fashion",
                _gan("sngan-fashion", "hinge", {"name": "dcgan-discriminator-sn"}, 10, lr_d=4e-4, betas=(0.0, 0.9),
                     batch_size=128),
                "DCGAN architecture, spectrally normalised discriminator + hinge loss (TTUR), 10 epochs",
                family="gan", target="10/10 classes covered", runner=gan_runner)
register_recipe("wgan-gp-fashion",
                _gan("wgan-gp-fashion", "wgan-gp", {"name": "dcgan-discriminator", "norm": "none"}, 10, n_critic=5,
                     lr_d=1e-4, betas=(0.0, 0.9)),
                "DCGAN architecture as a WGAN-GP critic (no batch norm, 5 critic steps), 10 epochs",
                family="gan", target="10/10 classes covered", runner=gan_runner)
