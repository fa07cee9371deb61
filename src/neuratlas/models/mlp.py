"""Multilayer perceptron: layers of neurons with weights and biases, the fundamentals of the article.

Init: PyTorch's default (Kaiming-uniform, a=√5) for hidden layers, which suits ReLU-family activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.layers import get_activation, get_norm
from neuratlas.layers.activations import Activation
from neuratlas.models.registry import register_model


@dataclass
class MLPConfig:
    in_features: int = 784
    hidden: tuple[int, ...] = (512, 256)
    num_classes: int = 10
    act: Activation = "relu"
    norm: Literal["none", "batchnorm1d", "layernorm"] = "none"
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.in_features <= 0 or any(h <= 0 for h in self.hidden):
            raise ValueError("in_features and hidden sizes must be positive")
        get_activation(self.act)


class MLP(nn.Module):
    Config = MLPConfig

    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = cfg.in_features
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), get_norm(cfg.norm, h), get_activation(cfg.act)]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, cfg.num_classes)

    def dummy_input(self, batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, self.config.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.config.in_features:
            raise NeuratlasError(
                f"MLP expects {self.config.in_features} input features per sample "
                f"(set --model.in_features), got {x.shape[1]}"
            )
        return self.head(self.body(x))


register_model("mlp", MLP, "2 hidden layers (512, 256), ReLU, dropout 0.1")
register_model("mlp-tiny", MLP, "one hidden layer of 64 units", hidden=(64,), dropout=0.0)
register_model(
    "mlp-deep", MLP, "6 hidden layers of 256 with LayerNorm and GELU", hidden=(256,) * 6, act="gelu", norm="layernorm"
)
