"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

The image is cut into non-overlapping P×P patches, each linearly embedded (a convolution with kernel =
stride = P is exactly that); a learned class token is prepended, learned position embeddings are added, and
the sequence goes through the shared transformer encoder (``models/transformer.py``) with the paper's
switches: pre-LayerNorm, GELU MLP of 4·dim, biases, no attention mask. The class token's final (normed)
state feeds a linear classification head.

``vit-b16`` is ViT-Base/16 at 224×224 (86,567,656 parameters with the 1000-class head, as published);
``vit-fashion-*`` are small variants for 28×28 Fashion-MNIST, on the same split the CNN recipes use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.models.registry import register_model
from neuratlas.models.transformer import Transformer, TransformerConfig, init_weights


@dataclass
class ViTConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    ffn_dim: int | None = None  # None -> 4·dim
    dropout: float = 0.0
    norm_eps: float = 1e-6
    pool: Literal["cls", "mean"] = "cls"  # cls: the class token's state; mean: average of the patch tokens

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {self.pool!r}")

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    def transformer(self) -> TransformerConfig:
        """The shared encoder's switches for ViT: pre-LN, exact GELU, biases; positions are added here."""
        return TransformerConfig(
            vocab_size=1,
            max_seq_len=self.num_patches + 1,
            dim=self.dim,
            n_layer=self.n_layer,
            n_head=self.n_head,
            norm="pre_layernorm",
            norm_eps=self.norm_eps,
            positions="none",
            ffn="gelu",
            ffn_dim=self.ffn_dim,
            bias=True,
            tie_embeddings=False,
            dropout=self.dropout,
            pad_vocab_multiple=1,
        )


class ViT(nn.Module):
    Config = ViTConfig

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        tcfg = cfg.transformer()
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = Transformer(tcfg, causal=False)  # ends with the final LayerNorm (pre-norm stack)
        self.head = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        init_weights(self.encoder, tcfg)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)  # as in the paper's fine-tuning heads: start from uniform predictions
            nn.init.zeros_(self.head.bias)

    def dummy_input(self, batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, self.cfg.in_chans, self.cfg.img_size, self.cfg.img_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> token states (B, 1 + N, dim) after the final norm; index 0 is the class token."""
        c, s = self.cfg.in_chans, self.cfg.img_size
        if x.ndim != 4 or x.shape[1:] != (c, s, s):
            raise NeuratlasError(
                f"ViT expects images shaped (batch, {c}, {s}, {s}), got {tuple(x.shape)}; set "
                "img_size/in_chans to match the data"
            )
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim): one token per patch
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], 1)
        x = self.drop(x + self.pos_embed.to(x.dtype))
        return self.encoder(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x[:, 0] if self.cfg.pool == "cls" else x[:, 1:].mean(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


register_model("vit-b16", ViT, "ViT-Base/16 at 224×224: 12 layers, dim 768, 12 heads (86.6M parameters)")
register_model(
    "vit-s16", ViT, "ViT-Small/16 at 224×224: 12 layers, dim 384, 6 heads (22.1M parameters)", dim=384, n_head=6
)
register_model(
    "vit-ti16", ViT, "ViT-Tiny/16 at 224×224: 12 layers, dim 192, 3 heads (5.7M parameters)", dim=192, n_head=3
)
register_model(
    "vit-fashion-p4",
    ViT,
    "small ViT for 28×28 grey images: 4×4 patches (49 tokens), dim 128, 6 layers, 4 heads",
    img_size=28,
    patch_size=4,
    in_chans=1,
    num_classes=10,
    dim=128,
    n_layer=6,
    n_head=4,
    dropout=0.1,
)
register_model(
    "vit-fashion-p7",
    ViT,
    "tiny ViT for 28×28 grey images: 7×7 patches (16 tokens), dim 128, 4 layers, 4 heads (the quick tour model)",
    img_size=28,
    patch_size=7,
    in_chans=1,
    num_classes=10,
    dim=128,
    n_layer=4,
    n_head=4,
)
