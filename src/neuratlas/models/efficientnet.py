"""EfficientNet B0–B7 (Tan & Le 2019): MBConv blocks with squeeze-excitation, scaled by one coefficient.

Compound scaling multiplies width by α^φ, depth by β^φ and resolution by γ^φ; the published (width,
depth, resolution, dropout) per variant are in ``VARIANTS``. ``lite=True`` gives EfficientNet-Lite
(no SE, ReLU6, fixed stem and head) for which real ImageNet weights exist offline.
Init: Kaiming-normal convs, N(0, 0.01) classifier; stochastic depth rises linearly to ``drop_path``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from neuratlas.layers import ConvNormAct, DropPath, SqueezeExcite, make_divisible
from neuratlas.layers.conv import init_conv_weights, set_depthwise_fp32
from neuratlas.models._vision import ImageClassifier
from neuratlas.models.mobilenet import _group_by_stride
from neuratlas.models.registry import register_model

# (expand ratio, kernel, stride, in_channels, out_channels, repeats) of B0's seven stages
B0_STAGES = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]
# name: (width_mult, depth_mult, resolution, dropout)
VARIANTS = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
    "lite0": (1.0, 1.0, 224, 0.2),
}


@dataclass
class EfficientNetConfig:
    width_mult: float = 1.0
    depth_mult: float = 1.0
    resolution: int = 224  # the resolution the variant was scaled for (informational for the data layer)
    in_chans: int = 3
    num_classes: int = 1000
    # grouped convs in fp32 under CPU bf16 autocast (oneDNN's bf16 depthwise backward is slow; see layers.conv.Conv2d)
    depthwise_fp32_on_cpu: bool = True
    dropout: float = 0.2
    drop_path: float = 0.2
    lite: bool = False
    small_input: bool = False  # stride-1 stem for 28–64 px images
    bn_eps: float = 1e-5
    # "symmetric" (PyTorch, k//2 each side) or "same" (TensorFlow SAME: stride-2 convs pad right/bottom
    # only). Imported TF-trained weights (EfficientNet-Lite0, bn_eps=1e-3) need "same".
    padding: Literal["symmetric", "same"] = "symmetric"

    def __post_init__(self) -> None:
        if self.padding not in ("symmetric", "same"):
            raise ValueError(f"padding must be 'symmetric' or 'same', got {self.padding!r}")


# The switches of the TensorFlow-trained ImageNet Lite0 weights (neuratlas.weights.import_efficientnet_lite0):
# a model built with them has the architecture those weights expect.
LITE0_TF = {"padding": "same", "bn_eps": 1e-3}


class MBConv(nn.Module):
    """Mobile inverted bottleneck: expand 1×1 -> depthwise k×k -> SE -> project 1×1, residual if shapes match."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        expand: int,
        se: bool,
        act: str,
        drop_path: float,
        bn_eps: float,
        tf_same: bool = False,
    ) -> None:
        super().__init__()
        hidden = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvNormAct(in_ch, hidden, 1, act=act, bn_eps=bn_eps))
        layers.append(
            ConvNormAct(hidden, hidden, kernel, stride, groups=hidden, act=act, bn_eps=bn_eps, tf_same=tf_same)
        )
        if se:
            layers.append(SqueezeExcite(hidden, max(1, in_ch // 4), act=act))
        layers.append(ConvNormAct(hidden, out_ch, 1, act=None, bn_eps=bn_eps))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + self.drop_path(out) if self.use_residual else out


class EfficientNet(ImageClassifier):
    Config = EfficientNetConfig

    def __init__(self, cfg: EfficientNetConfig) -> None:
        super().__init__()
        act = "relu6" if cfg.lite else "silu"
        ch = lambda c: make_divisible(c * cfg.width_mult)  # noqa: E731
        reps = lambda n: int(math.ceil(n * cfg.depth_mult))  # noqa: E731
        stem_ch = 32 if cfg.lite else ch(32)
        stem_stride = 1 if cfg.small_input else 2
        same = cfg.padding == "same"
        self.stem = ConvNormAct(cfg.in_chans, stem_ch, 3, stem_stride, act=act, bn_eps=cfg.bn_eps, tf_same=same)
        total = sum(reps(n) for *_, n in B0_STAGES)
        blocks, in_ch, idx = [], stem_ch, 0
        for i, (e, k, s, _, c, n) in enumerate(B0_STAGES):
            out = ch(c)
            n = n if (cfg.lite and i in (0, len(B0_STAGES) - 1)) else reps(n)  # Lite keeps first/last depth
            for j in range(n):
                st = s if j == 0 else 1
                blocks.append(
                    (
                        MBConv(in_ch, out, k, st, e, not cfg.lite, act, cfg.drop_path * idx / total, cfg.bn_eps, same),
                        out,
                        st,
                    )
                )
                in_ch, idx = out, idx + 1
        self.stages, self.stage_channels, self.stage_strides = _group_by_stride(blocks, stem_stride)
        head_ch = 1280 if cfg.lite else ch(1280)
        self.head_conv = ConvNormAct(in_ch, head_ch, 1, act=act, bn_eps=cfg.bn_eps)
        self._build_head(head_ch, cfg.num_classes, cfg.dropout)
        init_conv_weights(self)
        set_depthwise_fp32(self, cfg.depthwise_fp32_on_cpu)


for _name, (_w, _d, _r, _p) in VARIANTS.items():
    register_model(
        f"efficientnet-{_name}",
        EfficientNet,
        f"EfficientNet-{_name.upper()}: width ×{_w}, depth ×{_d}, {_r} px",
        width_mult=_w,
        depth_mult=_d,
        resolution=_r,
        dropout=_p,
        lite=_name.startswith("lite"),
    )
register_model(
    "efficientnet-b0-small",
    EfficientNet,
    "EfficientNet-B0 ×0.5 width for 28–64 px images",
    width_mult=0.5,
    depth_mult=0.5,
    in_chans=1,
    num_classes=10,
    small_input=True,
    drop_path=0.1,
)
