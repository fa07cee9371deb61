"""Image augmentation on whole uint8/float batches (B, C, H, W), driven by an explicit generator."""

from __future__ import annotations

import torch


def random_crop(x: torch.Tensor, padding: int, g: torch.Generator) -> torch.Tensor:
    """Pad by ``padding`` (zeros) and crop back at a random offset per image — a random translation."""
    b, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (padding,) * 4)
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=g)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=g)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (ox[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    out = xp.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=g) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_erase(x: torch.Tensor, g: torch.Generator, p: float = 0.5, max_frac: float = 0.4) -> torch.Tensor:
    """Cutout: zero a random rectangle in a fraction ``p`` of the images (DeVries & Taylor 2017)."""
    b, _, h, w = x.shape
    size_h = (torch.rand(b, generator=g) * max_frac * h).long() + 1
    size_w = (torch.rand(b, generator=g) * max_frac * w).long() + 1
    y0 = (torch.rand(b, generator=g) * (h - size_h + 1)).long()
    x0 = (torch.rand(b, generator=g) * (w - size_w + 1)).long()
    apply = torch.rand(b, generator=g) < p
    ys, xs = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    box = (
        (ys >= y0[:, None, None])
        & (ys < (y0 + size_h)[:, None, None])
        & (xs >= x0[:, None, None])
        & (xs < (x0 + size_w)[:, None, None])
        & apply[:, None, None]
    )
    return x.masked_fill(box[:, None], 0)


def normalize(x: torch.Tensor, mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> torch.Tensor:
    """uint8 or [0,1] float images -> standardised float32. ``mean=None``: each image by its own per-channel
    mean and std (a brighter or differently lit picture then looks like the training ones to the model)."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    if mean is None or std is None:
        return (x - x.mean((-2, -1), keepdim=True)) / x.std((-2, -1), keepdim=True).clamp_min(1e-3)
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s
