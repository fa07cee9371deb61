"""ResNet (He et al. 2015): residual blocks let very deep networks train.

``depth`` picks the published layouts — 18/34 use basic blocks, 50/101/152 bottlenecks — or, with
``style="cifar"``, the 6n+2 networks of the paper's CIFAR section (ResNet-20/56/110). ``residual=False``
removes the shortcuts, giving the "plain" networks the paper compares against.

Init: Kaiming-normal (fan_out) for convs; the last BatchNorm gamma of each residual branch is zero
(``zero_init_residual``), so every block starts as the identity (Goyal et al. 2017).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from neuratlas.layers import ConvNormAct, DropPath, get_activation
from neuratlas.layers.activations import Activation
from neuratlas.layers.conv import init_conv_weights
from neuratlas.models._vision import ImageClassifier
from neuratlas.models.registry import register_model

IMAGENET_LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


@dataclass
class ResNetConfig:
    depth: int = 18
    style: Literal["imagenet", "cifar"] = "imagenet"
    stem: Literal["imagenet", "small"] = "imagenet"  # small: 3×3 stride-1 conv, no max pool (28–64 px)
    in_chans: int = 3
    num_classes: int = 1000
    width: int = 64  # channels of the first stage; doubles per stage
    residual: bool = True
    zero_init_residual: bool = True
    drop_path: float = 0.0
    dropout: float = 0.0
    act: Activation = "relu"

    def __post_init__(self) -> None:
        if self.style == "imagenet" and self.depth not in IMAGENET_LAYOUTS:
            raise ValueError(
                f"depth must be one of {sorted(IMAGENET_LAYOUTS)} for style='imagenet' "
                "(or use style='cifar' with depth = 6n+2)"
            )
        if self.style == "cifar" and (self.depth - 2) % 6:
            raise ValueError("style='cifar' needs depth = 6n+2 (8, 20, 32, 44, 56, 110, ...)")

    @property
    def layout(self) -> tuple[str, tuple[int, ...]]:
        if self.style == "cifar":
            return "basic", ((self.depth - 2) // 6,) * 3
        return IMAGENET_LAYOUTS[self.depth]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int, cfg: ResNetConfig, drop_path: float) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_ch, ch, 3, stride, act=cfg.act)
        self.conv2 = ConvNormAct(ch, ch, 3, act=None)
        self.shortcut = _shortcut(in_ch, ch, stride) if cfg.residual else None
        self.drop_path = DropPath(drop_path)
        self.act = get_activation(cfg.act, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop_path(self.conv2(self.conv1(x)))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.act(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int, cfg: ResNetConfig, drop_path: float) -> None:
        super().__init__()
        out_ch = ch * self.expansion
        self.conv1 = ConvNormAct(in_ch, ch, 1, act=cfg.act)
        self.conv2 = ConvNormAct(ch, ch, 3, stride, act=cfg.act)  # stride on the 3×3 (ResNet v1.5)
        self.conv3 = ConvNormAct(ch, out_ch, 1, act=None)
        self.shortcut = _shortcut(in_ch, out_ch, stride) if cfg.residual else None
        self.drop_path = DropPath(drop_path)
        self.act = get_activation(cfg.act, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop_path(self.conv3(self.conv2(self.conv1(x))))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.act(out)


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return ConvNormAct(in_ch, out_ch, 1, stride, act=None)  # projection shortcut (option B)


class ResNet(ImageClassifier):
    Config = ResNetConfig

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        block_name, layers = cfg.layout
        block = BasicBlock if block_name == "basic" else Bottleneck
        width = 16 if cfg.style == "cifar" and cfg.width == 64 else cfg.width
        if cfg.stem == "imagenet":
            self.stem = nn.Sequential(ConvNormAct(cfg.in_chans, width, 7, 2, act=cfg.act), nn.MaxPool2d(3, 2, 1))
            stride0 = 4
        else:
            self.stem = ConvNormAct(cfg.in_chans, width, 3, 1, act=cfg.act)
            stride0 = 1
        total, done = sum(layers), 0
        stages, in_ch, stride = [], width, stride0
        self.stage_channels, self.stage_strides = [], []
        for i, n in enumerate(layers):
            ch = width * 2**i
            blocks = []
            for j in range(n):
                s = 2 if (j == 0 and i > 0) else 1
                blocks.append(block(in_ch, ch, s, cfg, cfg.drop_path * done / max(total - 1, 1)))
                in_ch = ch * block.expansion
                done += 1
            stride *= 2 if i > 0 else 1
            stages.append(nn.Sequential(*blocks))
            self.stage_channels.append(in_ch)
            self.stage_strides.append(stride)
        self.stages = nn.ModuleList(stages)
        self.head_conv = nn.Identity()
        self._build_head(in_ch, cfg.num_classes, cfg.dropout)
        init_conv_weights(self)
        if cfg.zero_init_residual and cfg.residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    last = m.conv3 if isinstance(m, Bottleneck) else m.conv2
                    nn.init.zeros_(last[1].weight)


for _d in (18, 34, 50, 101, 152):
    register_model(f"resnet{_d}", ResNet, f"ResNet-{_d}, ImageNet layout", depth=_d)
for _d in (8, 20, 56, 110):
    register_model(
        f"resnet{_d}-cifar",
        ResNet,
        f"ResNet-{_d} (6n+2, 16/32/64 channels) for small images",
        depth=_d,
        style="cifar",
        stem="small",
        num_classes=10,
    )
    register_model(
        f"plain{_d}-cifar",
        ResNet,
        f"the same {_d} layers without shortcuts (paper's plain net)",
        depth=_d,
        style="cifar",
        stem="small",
        num_classes=10,
        residual=False,
    )
