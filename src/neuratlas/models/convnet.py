"""Plain conv/pool/fully-connected networks in the LeNet/AlexNet tradition.

Stages of ``convs_per_stage`` 3×3 (or ``kernel_size``) convolutions, each followed by max pooling, then a
fully-connected classifier. Init: Kaiming-normal for ReLU convs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from neuratlas.layers import get_activation
from neuratlas.layers.activations import Activation
from neuratlas.layers.conv import init_conv_weights
from neuratlas.models._vision import ImageClassifier
from neuratlas.models.registry import register_model


@dataclass
class ConvNetConfig:
    in_chans: int = 1
    num_classes: int = 10
    channels: tuple[int, ...] = (32, 64, 128)
    convs_per_stage: int = 2
    kernel_size: int = 3
    norm: bool = True  # BatchNorm after each conv
    act: Activation = "relu"
    pool: Literal["max", "avg"] = "max"
    hidden: tuple[int, ...] = ()
    dropout: float = 0.2
    global_pool: bool = True  # False: flatten the last map into the FC layers (LeNet)
    img_size: int = 28

    def __post_init__(self) -> None:
        if self.pool not in ("max", "avg"):
            raise ValueError("pool must be 'max' or 'avg'")
        if self.img_size < 2 ** len(self.channels):
            raise ValueError(f"img_size {self.img_size} is too small for {len(self.channels)} pooling stages")


class ConvNet(ImageClassifier):
    Config = ConvNetConfig

    def __init__(self, cfg: ConvNetConfig) -> None:
        super().__init__()
        self.stem = nn.Identity()
        pool = nn.MaxPool2d if cfg.pool == "max" else nn.AvgPool2d
        stages, width = [], cfg.in_chans
        for ch in cfg.channels:
            layers: list[nn.Module] = []
            for _ in range(cfg.convs_per_stage):
                layers += [nn.Conv2d(width, ch, cfg.kernel_size, padding=cfg.kernel_size // 2, bias=not cfg.norm)]
                if cfg.norm:
                    layers.append(nn.BatchNorm2d(ch))
                layers.append(get_activation(cfg.act, inplace=True))
                width = ch
            layers.append(pool(2))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = list(cfg.channels)
        self.stage_strides = [2 ** (i + 1) for i in range(len(cfg.channels))]
        self.head_conv = nn.Identity()
        side = cfg.img_size
        for _ in cfg.channels:
            side //= 2
        features = width if cfg.global_pool else width * side * side
        mlp: list[nn.Module] = []
        for h in cfg.hidden:
            mlp += [nn.Linear(features, h), get_activation(cfg.act, inplace=True), nn.Dropout(cfg.dropout)]
            features = h
        self.fc = nn.Sequential(*mlp)
        self._build_head(features, cfg.num_classes, cfg.dropout if not cfg.hidden else 0.0)
        self.pool = nn.AdaptiveAvgPool2d(1) if cfg.global_pool else nn.Identity()
        init_conv_weights(self)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.fc(torch.flatten(self.pool(x), 1))))


register_model(
    "lenet5",
    ConvNet,
    "LeNet-5 style: 5×5 convs 6→16, avg pool, FC 120→84, tanh",
    channels=(6, 16),
    convs_per_stage=1,
    kernel_size=5,
    norm=False,
    act="tanh",
    pool="avg",
    hidden=(120, 84),
    dropout=0.0,
    global_pool=False,
)
register_model("convnet", ConvNet, "3 stages × 2 conv-BN-ReLU (32/64/128), global pool, dropout")
register_model("convnet-wide", ConvNet, "3 stages × 2 conv-BN-ReLU (64/128/256)", channels=(64, 128, 256))
