"""DCGAN (Radford et al. 2016): a generator of transposed convolutions and a discriminator of strided ones.

Generator: z (B, latent_dim) -> project to a (4·dim or 2·dim) map of 4×4 or 7×7 -> [ConvTranspose 4×4/2 -> BN
-> ReLU] ... -> ConvTranspose -> tanh, so 28×28 (Fashion-MNIST), 32×32 and 64×64 all work. Discriminator:
[Conv 4×4/2 -> norm -> LeakyReLU(0.2)] ... -> one logit (no sigmoid: the losses take logits). The DCGAN init
draws conv weights from N(0, 0.02) and BN scales from N(1, 0.02).

``norm`` on the discriminator picks the variant: ``batch`` (classic DCGAN, non-saturating loss), ``spectral``
(spectral normalisation, for the hinge loss) or ``none`` (WGAN-GP: the gradient penalty forbids batch norm).

``gan`` is the pair that a GAN run trains and checkpoints as one model: ``{"name": "gan", "generator": {"name":
"dcgan-generator", ...}, "discriminator": {"name": "dcgan-discriminator", ...}}``. One checkpoint rebuilds both
networks (so a run resumes, evaluates and samples like any other), and calling the pair calls its generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.models.registry import MODELS, create_model, register_model


def _start_and_depth(img_size: int) -> tuple[int, int]:
    """The smallest map (4 or 7) and the number of ×2 upsamplings that reach ``img_size``."""
    for start in (7, 4):
        size, depth = img_size, 0
        while size > start and size % 2 == 0:
            size, depth = size // 2, depth + 1
        if size == start and depth >= 1:
            return start, depth
    raise ValueError(f"img_size {img_size} must be 4·2^k or 7·2^k (e.g. 28, 32, 64)")


def dcgan_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


@dataclass
class GeneratorConfig:
    latent_dim: int = 100
    dim: int = 64  # channels before the last layer; doubles per stage going back towards z
    in_chans: int = 1  # channels of the images it makes
    img_size: int = 28

    def __post_init__(self) -> None:
        _start_and_depth(self.img_size)


class Generator(nn.Module):
    Config = GeneratorConfig

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        start, depth = _start_and_depth(cfg.img_size)
        width = cfg.dim * 2 ** (depth - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(cfg.latent_dim, width, start, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]  # (B, width, start, start)
        for _ in range(depth - 1):
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        layers += [nn.ConvTranspose2d(width, cfg.in_chans, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.config.latent_dim:
            raise NeuratlasError(
                f"the generator expects noise shaped (batch, {self.config.latent_dim}), got {tuple(z.shape)}"
            )
        return self.net(z[:, :, None, None])  # images in [-1, 1]

    def dummy_input(self, batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, self.config.latent_dim)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.config.latent_dim, generator=generator)
        return self(z.to(next(self.parameters()).device))


@dataclass
class DiscriminatorConfig:
    dim: int = 64
    in_chans: int = 1
    img_size: int = 28
    norm: Literal["batch", "spectral", "none"] = "batch"

    def __post_init__(self) -> None:
        _start_and_depth(self.img_size)
        if self.norm not in ("batch", "spectral", "none"):
            raise ValueError(f"norm must be batch, spectral or none, got {self.norm!r}")


class Discriminator(nn.Module):
    Config = DiscriminatorConfig

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        start, depth = _start_and_depth(cfg.img_size)
        sn = nn.utils.parametrizations.spectral_norm if cfg.norm == "spectral" else (lambda m: m)
        layers: list[nn.Module] = []
        width, c_in = cfg.dim, cfg.in_chans
        for i in range(depth):
            layers.append(sn(nn.Conv2d(c_in, width, 4, 2, 1, bias=cfg.norm != "batch" or i == 0)))
            if cfg.norm == "batch" and i > 0:  # DCGAN: no batch norm on the first layer
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.LeakyReLU(0.2, True))
            c_in, width = width, width * 2
        layers.append(sn(nn.Conv2d(c_in, 1, start, 1, 0)))  # (B, 1, 1, 1): one logit per image
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def dummy_input(self, batch: int = 2) -> torch.Tensor:
        c = self.config
        return torch.randn(batch, c.in_chans, c.img_size, c.img_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.ndim != 4 or x.shape[1:] != (c.in_chans, c.img_size, c.img_size):
            raise NeuratlasError(
                f"the discriminator expects images shaped (batch, {c.in_chans}, {c.img_size}, "
                f"{c.img_size}), got {tuple(x.shape)}"
            )
        return self.net(x).flatten()


register_model("dcgan-generator", Generator, "DCGAN generator: z(100) -> 28×28 via transposed convs, BN, ReLU, tanh")
register_model("dcgan-discriminator", Discriminator, "DCGAN discriminator: strided convs, BN, LeakyReLU -> logit")
register_model(
    "dcgan-discriminator-sn",
    Discriminator,
    "DCGAN discriminator with spectral normalisation (for the hinge loss)",
    norm="spectral",
)


@dataclass
class GANPairConfig:
    generator: dict[str, Any] = field(default_factory=lambda: {"name": "dcgan-generator"})
    discriminator: dict[str, Any] = field(default_factory=lambda: {"name": "dcgan-discriminator"})
    in_chans: int = 1  # given to both networks unless their own options set it (the data implies it)
    img_size: int = 28

    def __post_init__(self) -> None:
        for part in ("generator", "discriminator"):
            spec = getattr(self, part)
            if not isinstance(spec, dict) or "name" not in spec:
                raise ValueError(f"{part} must be a mapping with a 'name' (a registered model), got {spec!r}")


class GANPair(nn.Module):
    """A generator and its discriminator, saved, averaged and restored together; ``pair(z)`` generates."""

    Config = GANPairConfig

    def __init__(self, cfg: GANPairConfig) -> None:
        super().__init__()
        self.generator = self._build(cfg, cfg.generator)
        self.discriminator = self._build(cfg, cfg.discriminator)
        if not hasattr(self.generator.config, "latent_dim"):
            raise NeuratlasError(
                f"the generator {cfg.generator['name']!r} is not a GAN generator (it has no latent_dim)"
            )

    @staticmethod
    def _build(cfg: GANPairConfig, spec: dict[str, Any]) -> nn.Module:
        spec = dict(spec)
        name = spec.pop("name")
        fields = MODELS.get(name).config_class.__dataclass_fields__
        shared = {k: v for k, v in (("in_chans", cfg.in_chans), ("img_size", cfg.img_size)) if k in fields}
        return create_model(name, **{**shared, **spec})

    @property
    def latent_dim(self) -> int:
        return self.generator.config.latent_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def dummy_input(self, batch: int = 2) -> torch.Tensor:
        return self.generator.dummy_input(batch)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.generator.sample(n, generator)


register_model("gan", GANPair, "a GAN's generator + discriminator, trained by the gan task as one model")
