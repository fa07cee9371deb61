"""What every image classifier shares: features -> pool -> dropout -> linear head, and multi-scale maps.

Families build ``stem`` and ``stages`` (an nn.ModuleList); detection and segmentation read
``feature_maps(x)`` — the last map at each stride — exactly as classification reads ``forward_features``.
"""

from __future__ import annotations

import torch
from torch import nn


class ImageClassifier(nn.Module):
    stem: nn.Module
    stages: nn.ModuleList
    head_conv: nn.Module
    stage_channels: list[int]
    stage_strides: list[int]

    def _build_head(self, features: int, num_classes: int, dropout: float) -> None:
        self.num_features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(features, num_classes) if num_classes > 0 else nn.Identity()

    def dummy_input(self, batch: int = 2) -> torch.Tensor:
        """A small valid input, used by the registry-wide smoke test."""
        size = getattr(self.config, "img_size", 64)
        return torch.randn(batch, self.config.in_chans, size, size)

    def check_input(self, x: torch.Tensor) -> None:
        in_chans = self.config.in_chans
        if x.ndim != 4 or x.shape[1] != in_chans:
            from neuratlas.errors import NeuratlasError

            raise NeuratlasError(
                f"{type(self).__name__} expects images shaped (batch, {in_chans}, height, width), got {tuple(x.shape)}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head_conv(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.flatten(self.pool(x), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.forward_head(self.forward_features(x))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of the last stage at each distinct stride (for FPNs and U-Nets)."""
        x = self.stem(x)
        maps: list[torch.Tensor] = []
        for stage, stride, nxt in zip(self.stages, self.stage_strides, self.stage_strides[1:] + [0]):
            x = stage(x)
            if nxt != stride:
                maps.append(x)
        return maps

    @property
    def feature_channels(self) -> list[int]:
        s = self.stage_strides
        return [c for c, st, nxt in zip(self.stage_channels, s, s[1:] + [0]) if nxt != st]

    @property
    def feature_strides(self) -> list[int]:
        s = self.stage_strides
        return [st for st, nxt in zip(s, s[1:] + [0]) if nxt != st]
