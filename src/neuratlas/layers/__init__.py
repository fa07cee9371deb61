"""Shared building blocks: every model family takes its activations, norms and conv blocks from here."""

from neuratlas.layers.activations import ACTIVATIONS, get_activation
from neuratlas.layers.conv import ConvNormAct, DropPath, SqueezeExcite, make_divisible
from neuratlas.layers.norms import RMSNorm, get_norm

__all__ = [
    "ACTIVATIONS",
    "ConvNormAct",
    "DropPath",
    "RMSNorm",
    "SqueezeExcite",
    "get_activation",
    "get_norm",
    "make_divisible",
]
