"""Losses by name. Classification targets are class indices; losses that need one-hot get it here."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neuratlas.errors import NeuratlasError

LOSSES = ("cross_entropy", "nll", "mse", "l1", "huber", "bce", "focal")


def classification_loss(
    name: str, logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Loss of (B, K) logits against (B,) class indices."""
    if name == "cross_entropy":
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    if name == "nll":
        return F.nll_loss(F.log_softmax(logits, -1), target)
    onehot = F.one_hot(target, logits.shape[-1]).to(logits.dtype)
    if label_smoothing:
        onehot = onehot * (1 - label_smoothing) + label_smoothing / logits.shape[-1]
    if name == "mse":
        return F.mse_loss(logits.softmax(-1), onehot)
    if name == "bce":
        return F.binary_cross_entropy_with_logits(logits, onehot)
    if name == "focal":
        return sigmoid_focal_loss(logits, onehot).mean()
    raise NeuratlasError(
        f"loss {name!r} does not apply to classification; use one of cross_entropy, nll, mse, bce, focal"
    )


def regression_loss(name: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if name == "mse":
        return F.mse_loss(pred, target)
    if name == "l1":
        return F.l1_loss(pred, target)
    if name == "huber":
        return F.huber_loss(pred, target)
    raise NeuratlasError(f"loss {name!r} does not apply to regression; use one of mse, l1, huber")


def sigmoid_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017), elementwise: down-weights easy examples by (1 - p_t)^gamma."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss
