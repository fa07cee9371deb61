"""Pictures of what a CNN learned: first-layer filters and the activation maps of each stage for one image —
"edges, then textures, then objects"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.plotting import panel_grid, save_png


def _normalised(images: torch.Tensor) -> np.ndarray:
    """(N, H, W) or (N, H, W, 3) -> figure-ready array tiles, each normalised to [0, 1]."""
    lo = images.flatten(1).min(1).values.view(-1, *[1] * (images.ndim - 1))
    hi = images.flatten(1).max(1).values.view(-1, *[1] * (images.ndim - 1))
    return ((images - lo) / (hi - lo + 1e-8)).cpu().numpy()


def first_layer_filters(model: nn.Module, out_png: Path) -> Path:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise NeuratlasError(f"{type(model).__name__} has no convolution to visualise")
    w = conv.weight.detach().float()  # (out, in, k, k)
    imgs = w[:, :3] if w.shape[1] >= 3 else w[:, 0]
    if imgs.ndim == 4:
        imgs = imgs.permute(0, 2, 3, 1)
    title = f"first-layer filters ({w.shape[0]} × {w.shape[1]}×{w.shape[2]}×{w.shape[3]})"
    return _save_tiles(imgs[:64], out_png, title)


def _save_tiles(imgs: torch.Tensor, out_png: Path, title: str, ncols: int = 8) -> Path:
    arr = _normalised(imgs)
    fig, axes = panel_grid(len(arr), (1.1, 1.1), max_cols=ncols, extra_height=0.5)
    for ax in axes:
        ax.axis("off")
    for ax, img in zip(axes, arr):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, out_png, dpi=120)


def activation_maps(model: nn.Module, image: torch.Tensor, out_dir: Path, per_stage: int = 16) -> list[Path]:
    """The strongest ``per_stage`` channels after each stage for one normalised image (1, C, H, W)."""
    if not hasattr(model, "stages"):
        raise NeuratlasError(f"{type(model).__name__} has no stages to visualise (CNN families only)")
    model.eval()
    paths = []
    with torch.no_grad():
        x = model.stem(image)
        for i, stage in enumerate(model.stages):
            x = stage(x)
            fmap = x[0]
            top = fmap.flatten(1).abs().mean(1).topk(min(per_stage, fmap.shape[0])).indices
            paths.append(
                _save_tiles(
                    fmap[top],
                    out_dir / f"activations_stage{i + 1}.png",
                    f"stage {i + 1}: {fmap.shape[0]} channels at {fmap.shape[1]}×{fmap.shape[2]}",
                )
            )
    return paths
