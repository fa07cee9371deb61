"""MobileNet V1 (depthwise-separable convs) and V2 (inverted residuals with linear bottlenecks).

A depthwise 3×3 conv filters each channel alone and a pointwise 1×1 conv mixes channels: about
1/8–1/9 of a standard 3×3 conv's multiply-adds. ``version`` selects V1 or V2; ``width_mult`` scales
channels. Init: Kaiming-normal convs, N(0, 0.01) classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from neuratlas.layers import ConvNormAct, make_divisible
from neuratlas.layers.conv import init_conv_weights, set_depthwise_fp32
from neuratlas.models._vision import ImageClassifier
from neuratlas.models.registry import register_model

# V1: (out_channels, stride) of each depthwise-separable layer
V1_LAYERS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
# V2: (expansion t, out_channels c, repeats n, first stride s) — Table 2 of Sandler et al. 2018
V2_SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


@dataclass
class MobileNetConfig:
    version: Literal[1, 2] = 2
    width_mult: float = 1.0
    in_chans: int = 3
    num_classes: int = 1000
    # grouped convs in fp32 under CPU bf16 autocast (oneDNN's bf16 depthwise backward is slow; see layers.conv.Conv2d)
    depthwise_fp32_on_cpu: bool = True
    small_input: bool = False  # stride-1 stem and first stride-2 layer removed, for 28–64 px images
    dropout: float = 0.2


class DepthwiseSeparable(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__(
            ConvNormAct(in_ch, in_ch, 3, stride, groups=in_ch, act="relu"), ConvNormAct(in_ch, out_ch, 1, act="relu")
        )


class InvertedResidual(nn.Module):
    """1×1 expand -> 3×3 depthwise -> 1×1 linear projection; identity shortcut when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvNormAct(in_ch, hidden, 1, act="relu6"))
        layers += [
            ConvNormAct(hidden, hidden, 3, stride, groups=hidden, act="relu6"),
            ConvNormAct(hidden, out_ch, 1, act=None),
        ]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_residual else self.block(x)


class MobileNet(ImageClassifier):
    Config = MobileNetConfig

    def __init__(self, cfg: MobileNetConfig) -> None:
        super().__init__()
        w = cfg.width_mult
        stem_ch = make_divisible(32 * w)
        stride = 1 if cfg.small_input else 2
        self.stem = ConvNormAct(cfg.in_chans, stem_ch, 3, stride, act="relu" if cfg.version == 1 else "relu6")
        blocks: list[tuple[nn.Module, int, int]] = []  # (block, out_channels, stride)
        in_ch, first_down = stem_ch, cfg.small_input
        if cfg.version == 1:
            for c, s in V1_LAYERS:
                s, first_down = (1, False) if (first_down and s == 2) else (s, first_down)
                out = make_divisible(c * w)
                blocks.append((DepthwiseSeparable(in_ch, out, s), out, s))
                in_ch = out
            last = in_ch
            self.head_conv = nn.Identity()
        else:
            for t, c, n, s in V2_SETTINGS:
                out = make_divisible(c * w)
                for i in range(n):
                    st = s if i == 0 else 1
                    if first_down and st == 2:
                        st, first_down = 1, False
                    blocks.append((InvertedResidual(in_ch, out, st, t), out, st))
                    in_ch = out
            last = make_divisible(1280 * max(1.0, w))
            self.head_conv = ConvNormAct(in_ch, last, 1, act="relu6")
        self.stages, self.stage_channels, self.stage_strides = _group_by_stride(blocks, stride)
        self._build_head(last, cfg.num_classes, cfg.dropout)
        init_conv_weights(self)
        set_depthwise_fp32(self, cfg.depthwise_fp32_on_cpu)


def _group_by_stride(blocks: list[tuple[nn.Module, int, int]], stride: int):
    """Group consecutive blocks into stages that each begin with a stride-2 block."""
    groups: list[list[nn.Module]] = []
    channels, strides = [], []
    for block, out, s in blocks:
        if s == 2 or not groups:
            stride *= s
            groups.append([])
            channels.append(out)
            strides.append(stride)
        groups[-1].append(block)
        channels[-1] = out
    return nn.ModuleList(nn.Sequential(*g) for g in groups), channels, strides


register_model("mobilenet-v1", MobileNet, "MobileNet V1, width 1.0 (ImageNet: 4.2M params)", version=1)
register_model("mobilenet-v2", MobileNet, "MobileNet V2, width 1.0 (ImageNet: 3.5M params)", version=2)
register_model(
    "mobilenet-v2-small",
    MobileNet,
    "MobileNet V2 ×0.5 for 28–64 px images",
    version=2,
    width_mult=0.5,
    small_input=True,
    num_classes=10,
    in_chans=1,
)
