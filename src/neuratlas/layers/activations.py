"""Activations chosen by name, so configs stay serialisable (``act="gelu"``)."""

from __future__ import annotations

from typing import Literal

from torch import nn

from neuratlas.errors import NeuratlasError

# the names below, for configs' type hints (so --help lists them and a typo is refused when parsed)
Activation = Literal[
    "relu", "relu6", "sigmoid", "tanh", "gelu", "silu", "swish", "leaky_relu", "elu", "hardswish", "identity"
]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,  # a.k.a. swish
    "swish": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "hardswish": nn.Hardswish,
    "identity": nn.Identity,
}


def get_activation(name: str, inplace: bool = False) -> nn.Module:
    try:
        cls = ACTIVATIONS[name.lower()]
    except KeyError:
        raise NeuratlasError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}") from None
    if inplace and cls in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.LeakyReLU, nn.Hardswish):
        return cls(inplace=True)
    return cls()
