"""U-Net (Ronneberger et al. 2015) with an encoder taken from the registry's CNNs.

The encoder's ``feature_maps`` (last map at each stride, e.g. 4/8/16/32 for ResNet) are the contracting
path; the decoder walks back up, at each step upsampling, concatenating the encoder map of that stride
(the skip connection that restores the detail pooling threw away) and mixing with two 3×3 convs. A small
full-resolution branch on the raw input is the last skip, so boundaries one pixel wide survive even when
the encoder starts at stride 4. Inputs of any size are padded to a multiple of the deepest stride and the
logits cropped back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.layers import ConvNormAct
from neuratlas.models.detection import build_backbone
from neuratlas.models.registry import register_model


@dataclass
class UNetConfig:
    encoder: str = "resnet18"  # any registered CNN with feature_maps (resnet*, mobilenet-*, efficientnet-*)
    encoder_args: dict[str, Any] = field(default_factory=dict)  # e.g. {"width": 32}
    # encoder from real ImageNet weights (grey: RGB kernels summed), loaded by neuratlas.create_model / trainer
    pretrained: Literal["", "imagenet-lite0"] = ""
    num_classes: int = 2  # including background
    in_chans: int = 1
    decoder_dim: int = 128  # channels after the deepest decoder step; halves at each step up (>= 16)
    stem_dim: int = 16  # channels of the full-resolution branch
    img_size: int = 64  # size of dummy_input

    def __post_init__(self) -> None:
        if self.pretrained and self.encoder != "efficientnet-lite0":
            raise ValueError("pretrained='imagenet-lite0' needs encoder='efficientnet-lite0'")
        if self.num_classes < 2:
            raise ValueError("num_classes counts the background too: use 2 for a binary mask")


class DecoderBlock(nn.Module):
    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(ConvNormAct(in_ch + skip_ch, out_ch, 3), ConvNormAct(out_ch, out_ch, 3))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], 1))


class UNet(nn.Module):
    Config = UNetConfig

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = build_backbone(cfg.encoder, cfg.in_chans, cfg.encoder_args, cfg.pretrained)
        if not hasattr(self.encoder, "feature_maps"):
            raise NeuratlasError(f"encoder {cfg.encoder!r} has no feature_maps(); use a CNN (resnet*, ...)")
        chans, strides = self.encoder.feature_channels, self.encoder.feature_strides
        self.max_stride = max(strides)
        self.full_res = nn.Sequential(
            ConvNormAct(cfg.in_chans, cfg.stem_dim, 3), ConvNormAct(cfg.stem_dim, cfg.stem_dim, 3)
        )
        skips = list(reversed(chans[:-1])) + [cfg.stem_dim]  # skip channels from deep to shallow
        if strides[0] == 1:  # an encoder that keeps full resolution already has its stride-1 skip
            skips = skips[:-1]
            self.full_res = None
        blocks, in_ch = [], chans[-1]
        for i, skip_ch in enumerate(skips):
            out_ch = max(cfg.decoder_dim // 2**i, 16)
            blocks.append(DecoderBlock(in_ch, skip_ch, out_ch))
            in_ch = out_ch
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_ch, cfg.num_classes, 1)

    def dummy_input(self, batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, self.cfg.in_chans, self.cfg.img_size, self.cfg.img_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes, H, W) logits."""
        if x.ndim != 4 or x.shape[1] != self.cfg.in_chans:
            raise NeuratlasError(f"the U-Net expects images (batch, {self.cfg.in_chans}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        s = self.max_stride
        ph, pw = (-h) % s, (-w) % s
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "constant")
        feats = self.encoder.feature_maps(x)
        skips = list(reversed(feats[:-1])) + ([self.full_res(x)] if self.full_res is not None else [])
        y = feats[-1]
        for block, skip in zip(self.decoder, skips):
            y = block(y, skip)
        y = self.head(y)
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return y[..., :h, :w]


register_model("unet-resnet18", UNet, "U-Net with a ResNet-18 encoder (strides 4-32) and a full-resolution skip")
register_model(
    "unet-resnet18-slim",
    UNet,
    "U-Net, half-width ResNet-18 encoder (CPU-friendly)",
    encoder_args={"width": 32},
    decoder_dim=64,
)
register_model(
    "unet-mobilenet-v2",
    UNet,
    "U-Net with a MobileNet V2 encoder (strides 2-32)",
    encoder="mobilenet-v2",
    decoder_dim=96,
)
register_model(
    "unet-lite0-imagenet",
    UNet,
    "U-Net on EfficientNet-Lite0 with real ImageNet weights",
    encoder="efficientnet-lite0",
    pretrained="imagenet-lite0",
    decoder_dim=96,
)
register_model(
    "unet-efficientnet-b0",
    UNet,
    "U-Net with an EfficientNet-B0 encoder (strides 2-32)",
    encoder="efficientnet-b0",
    decoder_dim=96,
)
