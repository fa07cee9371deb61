"""CLIP-style dual encoder (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision").

An image encoder (any registered Neuratlas CNN or ViT, built with ``num_classes=0`` so it returns pooled
features) and a text encoder (the shared transformer of ``models/transformer.py``: causal, pre-LayerNorm, and
the text's feature is the final state at its end-of-text token, as in CLIP) each feed a linear projection into
a joint space of ``embed_dim``. Both embeddings are L2-normalised; their cosine similarities times a learned
``logit_scale = exp(t)`` are the logits of a symmetric InfoNCE loss. ``t`` starts at log(1/0.07) and the
scale is clamped to at most 100 (CLIP's clamp), so the softmax cannot become arbitrarily sharp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.models.registry import MODELS, create_model, register_model
from neuratlas.models.transformer import Embeddings, Transformer, TransformerConfig, init_weights


@dataclass
class CLIPConfig:
    image_encoder: str = "convnet"  # any registered CNN or ViT; built with num_classes=0 (pooled features)
    image_options: dict[str, Any] = field(default_factory=dict)  # extra options for the image encoder
    in_chans: int = 1
    img_size: int = 28
    embed_dim: int = 128  # the joint image–text space
    vocab_size: int = 64  # set by the task from its tokenizer
    pad_id: int = 0  # padding token id (the end-of-text token is the last non-pad token)
    context_length: int = 48
    text_dim: int = 128
    text_layers: int = 2
    text_heads: int = 4
    dropout: float = 0.0
    init_temperature: float = 0.07  # CLIP's initial softmax temperature
    max_logit_scale: float = 100.0  # CLIP clamps exp(t) at 100

    def __post_init__(self) -> None:
        if self.image_encoder not in MODELS:
            raise ValueError(f"unknown image encoder {self.image_encoder!r}; see `neuratlas list models`")
        if self.init_temperature <= 0 or self.max_logit_scale <= 1:
            raise ValueError("init_temperature must be > 0 and max_logit_scale > 1")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id {self.pad_id} must be a token id below vocab_size {self.vocab_size}")

    def text_transformer(self) -> TransformerConfig:
        """CLIP's text transformer switches: causal, pre-LayerNorm, GELU, learned positions, biases."""
        return TransformerConfig(
            vocab_size=self.vocab_size,
            max_seq_len=self.context_length,
            dim=self.text_dim,
            n_layer=self.text_layers,
            n_head=self.text_heads,
            norm="pre_layernorm",
            positions="learned",
            ffn="gelu",
            bias=True,
            tie_embeddings=False,
            dropout=self.dropout,
            pad_vocab_multiple=1,
        )


def build_image_encoder(cfg: CLIPConfig) -> tuple[nn.Module, int]:
    """The named vision model without its classifier, and the width of its pooled features."""
    fields = MODELS.get(cfg.image_encoder).config_class.__dataclass_fields__
    options = {"num_classes": 0, "in_chans": cfg.in_chans, "img_size": cfg.img_size, **cfg.image_options}
    encoder = create_model(cfg.image_encoder, **{k: v for k, v in options.items() if k in fields})
    width = getattr(encoder, "num_features", None)
    if width is None:  # ViT and other families without ImageClassifier's head: measure it
        was = encoder.training
        encoder.eval()
        with torch.no_grad():
            out = encoder(torch.zeros(2, cfg.in_chans, cfg.img_size, cfg.img_size))
        encoder.train(was)
        if out.ndim != 2:
            raise NeuratlasError(
                f"image encoder {cfg.image_encoder!r} does not return pooled features "
                f"(got shape {tuple(out.shape)}); choose a CNN or ViT classifier"
            )
        width = out.shape[1]
    return encoder, int(width)


class TextEncoder(nn.Module):
    """Token ids (B, T), padded with ``pad_id`` after an end-of-text token -> (B, text_dim) features."""

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        tcfg = cfg.text_transformer()
        self.pad_id = cfg.pad_id
        self.embed = Embeddings(tcfg)
        self.transformer = Transformer(tcfg, causal=True)  # ends with the final LayerNorm
        init_weights(self, tcfg)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.transformer(self.embed(ids))
        # Causal attention: the last real token (end-of-text) has seen the whole caption and no padding.
        last = ((ids != self.pad_id).sum(1) - 1).clamp(min=0)
        return h[torch.arange(ids.shape[0], device=ids.device), last]


class CLIP(nn.Module):
    Config = CLIPConfig

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual, width = build_image_encoder(cfg)
        self.text = TextEncoder(cfg)
        self.image_proj = nn.Linear(width, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.embed_dim, bias=False)
        nn.init.normal_(self.image_proj.weight, std=width**-0.5)
        nn.init.normal_(self.text_proj.weight, std=cfg.text_dim**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))

    def dummy_input(self, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randn(batch, self.cfg.in_chans, self.cfg.img_size, self.cfg.img_size)
        ids = torch.randint(0, self.cfg.vocab_size, (batch, min(8, self.cfg.context_length)))
        return images, ids

    def scale(self) -> torch.Tensor:
        """exp(t), clamped to [1, max_logit_scale] (no gradient pushes it past the clamp)."""
        return self.logit_scale.clamp(0.0, math.log(self.cfg.max_logit_scale)).exp()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> L2-normalised (B, embed_dim) float32 embeddings."""
        c, s = self.cfg.in_chans, self.cfg.img_size
        if images.ndim != 4 or images.shape[1:] != (c, s, s):
            raise NeuratlasError(f"CLIP expects images shaped (batch, {c}, {s}, {s}), got {tuple(images.shape)}")
        return F.normalize(self.image_proj(self.visual(images)).float(), dim=-1)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> L2-normalised (B, embed_dim) float32 embeddings."""
        if ids.ndim != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise NeuratlasError(
                f"CLIP expects integer token ids shaped (batch, length), got {tuple(ids.shape)} {ids.dtype}"
            )
        if ids.shape[1] > self.cfg.context_length:
            raise NeuratlasError(f"captions of {ids.shape[1]} tokens exceed context_length {self.cfg.context_length}")
        if ids.numel() and not torch.compiler.is_exporting() and (ids.min() < 0 or ids.max() >= self.cfg.vocab_size):
            raise NeuratlasError(
                f"token ids must lie in [0, {self.cfg.vocab_size}); use the tokenizer saved with the checkpoint"
            )
        return F.normalize(self.text_proj(self.text(ids)).float(), dim=-1)

    def similarity(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities (N_images, N_texts), in float32 even under autocast."""
        with torch.autocast(image_emb.device.type, enabled=False):
            return self.scale() * image_emb.float() @ text_emb.float().T

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits per image (B_images, B_texts); their transpose are the logits per text."""
        return self.similarity(self.encode_image(images), self.encode_text(ids))


def clip_loss(logits_per_image: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE: mean of the image->text and text->image cross-entropies over a (B, B) logit matrix
    whose diagonal holds the true pairs.

    With ``groups`` (B,), every pair whose captions describe the same thing (e.g. the same Fashion-MNIST
    class) is a positive: the target of each row is uniform over its group instead of one-hot, so identical
    captions in one batch are not pushed apart. With all groups distinct this is exactly CLIP's loss.
    """
    logits = logits_per_image.float()
    if groups is None:
        target = torch.arange(len(logits), device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    same = (groups[:, None] == groups[None, :]).float()
    target = same / same.sum(1, keepdim=True)  # symmetric mask: rows and columns normalise alike
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


register_model(
    "clip-convnet",
    CLIP,
    "CLIP dual encoder: conv net (16/32/64) images + 2-layer char transformer text, 128-d joint space (28×28 grey)",
    image_options={"channels": (16, 32, 64), "dropout": 0.0},
)
register_model(
    "clip-vit",
    CLIP,
    "CLIP dual encoder: tiny ViT (7×7 patches, dim 128) images + 2-layer char transformer text (28×28 grey)",
    image_encoder="vit-fashion-p7",
    image_options={"n_layer": 2},
)
register_model(
    "clip-convnet-emoji",
    CLIP,
    "CLIP dual encoder for 32×32 RGB emoji: conv net (32/64/128) images + 2-layer char transformer text",
    in_chans=3,
    img_size=32,
    image_options={"dropout": 0.0},
)
