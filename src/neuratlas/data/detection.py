"""DeepForest tree crowns: real aerial RGB photos with hand-drawn boxes (Weinstein et al. 2019, MIT).

Training uses the two large Yellowstone (YELL) crops cut into overlapping tiles; the bottom ``val_frac`` of
the larger crop is held out as a validation strip, and ``OSBS_029`` — another NEON site, in Florida — is
the test image (``test_image="SOAP_061"``, a California site with 37 crowns, is a second unseen site).
Tiles are uint8 tensors in memory; boxes are a padded (N, M, 4) tensor with labels -1 on padding, so a
batch is a pure function of (seed, index) like every other Neuratlas loader.

Box-aware augmentations (zoom, crop, flips, 90° rotations, colour jitter) live here too; they move the boxes
with the pixels, which ``tests/test_detection.py`` checks by painting boxes into masks.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from neuratlas.data.guards import TooLarge, load_npy, named, open_image
from neuratlas.data.registry import register_dataset
from neuratlas.errors import NeuratlasError
from neuratlas.layers.boxes import box_area
from neuratlas.sources import DataSource, package_dir

YELL = ["2019_YELL_2_528000_4978000_image_crop2", "2019_YELL_2_541000_4977000_image_crop"]
TEST_IMAGE = "OSBS_029"  # the held-out site (Florida); SOAP_061 (California) is a second one
TEST_SITES = (TEST_IMAGE, "SOAP_061")

DEEPFOREST = DataSource(
    name="deepforest",
    files={
        f"{YELL[0]}.png": "a9bdb0f4447fdd899d22f567e0e20ba8320c5413b2ad0cd0ac8d9f3b6e0f9767",
        f"{YELL[0]}.xml": "bd431af6a5086d721eb731b22f5ea28cd8a8eab06883efc1c665391acbc68e11",
        f"{YELL[1]}.png": "178e58a23cc2642226a364a30f71bd9258ddc1b012c826f12250914a90c7a131",
        f"{YELL[1]}.xml": "cefe4b96888bacbf8af1674f000082e549aa707aa6590d545effb23e43f26631",
        f"{TEST_IMAGE}.png": "d9477c6a00e4902c7bee487d4c5582c3b8b9a2f77f3908a29628b816b291e6ee",
        f"{TEST_IMAGE}.xml": "1f68c4011d7b351c29ca755072e77f3d16e6fd1f995bd05a9dd4eb952b55373c",
        "SOAP_061.png": "256508f1a62149bec4a80879077a865caf50e8cace095e6564c76befa480d424",
        "SOAP_061.xml": "4833280af75fd9c47965a93e38945282835e9e725cac412bdb9469d63480947c",
    },
    offline=[lambda: package_dir("deepforest", "data")],
    base_url="https://raw.githubusercontent.com/weecology/DeepForest/v2.1.0/src/deepforest/data",
    install_hint="Install the package that ships it: `pip install --no-deps deepforest==2.1.0`",
)


# --- reading and checking files --------------------------------------------------------------------------
def read_rgb(path: str | Path, channels: int = 3) -> torch.Tensor:
    """An image file -> uint8 (C, H, W). RGBA loses its alpha; any other channel count is an error."""
    p = Path(path)
    if not p.is_file():
        raise NeuratlasError(f"image {p} does not exist")
    if p.suffix.lower() == ".npy":
        arr = load_npy(p)
    else:
        try:
            import PIL  # noqa: F401 (a clear line when Pillow is missing)
        except ImportError:
            raise NeuratlasError("reading images needs Pillow: `pip install Pillow`") from None
        try:
            with open_image(p) as img:
                arr = np.asarray(img.convert("RGB") if img.mode in ("P", "RGBA", "CMYK", "YCbCr") else img)
        except TooLarge as e:
            raise named(p, e) from None
        except OSError as e:
            raise NeuratlasError(f"{p} is not a readable image: {e}") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] != channels:
        got = arr.shape[-1] if arr.ndim == 3 else arr.shape
        raise NeuratlasError(f"{p}: expected a {channels}-channel image, got {got} channel(s) (shape {arr.shape})")
    if arr.dtype != np.uint8:
        arr = np.clip(arr.astype(np.float32) * (255.0 / max(float(arr.max()), 1.0)), 0, 255).astype(np.uint8)
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).contiguous()


def read_voc(path: str | Path, width: int, height: int) -> tuple[torch.Tensor, list[str]]:
    """Pascal VOC boxes (xmin, ymin, xmax, ymax) and class names, checked against the image size."""
    p = Path(path)
    try:
        root = ET.parse(p).getroot()
    except (ET.ParseError, OSError) as e:
        raise NeuratlasError(f"{p} is not a readable Pascal VOC annotation file: {e}") from None
    boxes, names = [], []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        try:
            boxes.append([float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")])
        except (AttributeError, TypeError, ValueError):
            raise NeuratlasError(f"{p}: object {len(boxes)} has no valid <bndbox>") from None
        names.append((obj.findtext("name") or "object").strip())
    if not boxes:
        raise NeuratlasError(f"{p}: the annotation file has no boxes")
    b = torch.tensor(boxes)
    check_boxes(b, width, height, p)
    return b, names


def check_boxes(boxes: torch.Tensor, width: int, height: int, where: str | Path) -> None:
    """Zero-area boxes and boxes outside the image are annotation errors, reported by index."""
    bad = ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).nonzero().flatten()
    if len(bad):
        raise NeuratlasError(
            f"{where}: box {bad[0].item()} {boxes[bad[0]].tolist()} has zero area ({len(bad)} such boxes)"
        )
    out = ((boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height)).nonzero()
    if len(out):
        i = out[0].item()
        raise NeuratlasError(
            f"{where}: box {i} {boxes[i].tolist()} lies outside the {width}×{height} image ({len(out)} such boxes)"
        )


# --- tiling ----------------------------------------------------------------------------------------------
def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering ``length`` with windows of ``tile`` overlapping by ``overlap``; the last one is
    flush with the edge (so no window hangs off the image unless the image is smaller than a tile)."""
    if overlap >= tile:
        raise NeuratlasError(f"tile overlap ({overlap}) must be smaller than the tile ({tile})")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, tile - overlap))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def crop_boxes(
    boxes: torch.Tensor, x0: float, y0: float, w: float, h: float, min_visible: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes shifted into the window (x0, y0, w, h) and clipped to it; ``keep`` marks boxes that keep at least
    ``min_visible`` of their area (and are at least 2 px wide and tall)."""
    shifted = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    lim = torch.tensor([w, h, w, h], dtype=boxes.dtype)
    clipped = torch.minimum(shifted.clamp(min=0), lim)
    keep = (
        (box_area(clipped) >= min_visible * box_area(shifted))
        & (clipped[..., 2] - clipped[..., 0] >= 2)
        & (clipped[..., 3] - clipped[..., 1] >= 2)
    )
    return clipped, keep


def make_tiles(
    image: torch.Tensor, boxes: torch.Tensor, tile: int, overlap: int, min_visible: float = 0.4
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Cut (C, H, W) into (T, C, tile, tile) tiles (zero-padded at edges) with the boxes each one holds."""
    c, h, w = image.shape
    tiles, tile_boxes = [], []
    for y0 in tile_origins(h, tile, overlap):
        for x0 in tile_origins(w, tile, overlap):
            t = image.new_zeros(c, tile, tile)
            patch = image[:, y0 : y0 + tile, x0 : x0 + tile]
            t[:, : patch.shape[1], : patch.shape[2]] = patch
            b, keep = crop_boxes(boxes, x0, y0, patch.shape[2], patch.shape[1], min_visible)
            tiles.append(t)
            tile_boxes.append(b[keep])
    return torch.stack(tiles), tile_boxes


def pad_boxes(box_lists: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of (Mi, 4) boxes -> (N, M, 4) boxes and (N, M) labels (0 = object, -1 = padding)."""
    m = max(1, max(len(b) for b in box_lists))
    boxes = torch.zeros(len(box_lists), m, 4)
    labels = torch.full((len(box_lists), m), -1, dtype=torch.long)
    for i, b in enumerate(box_lists):
        boxes[i, : len(b)] = b
        labels[i, : len(b)] = 0
    return boxes, labels


# --- box-aware augmentation of padded batches --------------------------------------------------------------
def zoom_uint8(image: torch.Tensor, factor: float, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A (C, H, W) uint8 image zoomed by ``factor`` (or to ``size``): bilinear, antialiased when shrinking."""
    x = F.interpolate(
        image[None].float(),
        size=size,
        scale_factor=None if size else factor,
        mode="bilinear",
        align_corners=False,
        antialias=factor < 1,
    )
    return x[0].round().clamp(0, 255).to(image.dtype)


def random_scale_with_boxes(
    images: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    amount: float,
    g: torch.Generator,
    min_visible: float = 0.4,
) -> tuple[torch.Tensor, ...]:
    """Zoom each image by a log-uniform factor in [1 / (1 + amount), 1 + amount] about a random window, keeping
    its size: a zoomed-in image is cropped, a zoomed-out one padded with its mean colour. Crowns then come in
    more sizes than one site's trees at one ground resolution. Boxes follow; those mostly cut away become
    padding. uint8 in, uint8 out (bilinear, antialiased when shrinking)."""
    if amount <= 0:
        return images, boxes, labels
    b, c, h, w = images.shape
    factors = torch.exp((torch.rand(b, generator=g) * 2 - 1) * math.log1p(amount)).tolist()
    u = torch.rand(b, 2, generator=g).tolist()
    out, new_boxes, new_labels = torch.empty_like(images), torch.zeros_like(boxes), labels.clone()
    for i, s in enumerate(factors):
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        zoomed = zoom_uint8(images[i], s, size=(nh, nw))
        # the window's origin in the zoomed image; negative where the zoomed image is smaller (padding)
        oy, ox = round(u[i][0] * (nh - h)), round(u[i][1] * (nw - w))
        canvas = images.new_empty(c, h, w)
        canvas[:] = images[i].float().mean((1, 2)).round().to(images.dtype)[:, None, None]
        ys, xs = max(oy, 0), max(ox, 0)  # source start in the zoomed image
        yd, xd = max(-oy, 0), max(-ox, 0)  # destination start on the canvas
        hh, ww = min(nh - ys, h - yd), min(nw - xs, w - xd)
        canvas[:, yd : yd + hh, xd : xd + ww] = zoomed[:, ys : ys + hh, xs : xs + ww]
        out[i] = canvas
        scaled = boxes[i] * torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=boxes.dtype)
        clipped, keep = crop_boxes(scaled, ox, oy, w, h, min_visible)
        keep &= labels[i] >= 0
        new_boxes[i] = clipped * keep[:, None]
        new_labels[i] = torch.where(keep, labels[i], -1)
    return out, new_boxes, new_labels


def random_crop_with_boxes(
    images: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    size: int,
    g: torch.Generator,
    min_visible: float = 0.4,
) -> tuple[torch.Tensor, ...]:
    """A random ``size``×``size`` window per image; boxes follow, those mostly cut away become padding."""
    b, _, h, w = images.shape
    oy = torch.randint(0, h - size + 1, (b,), generator=g).tolist()
    ox = torch.randint(0, w - size + 1, (b,), generator=g).tolist()
    out = torch.stack([images[i, :, oy[i] : oy[i] + size, ox[i] : ox[i] + size] for i in range(b)])
    shift = torch.tensor([ox, oy, ox, oy], dtype=boxes.dtype).T[:, None, :]  # (B, 1, 4)
    shifted = boxes - shift
    clipped = shifted.clamp(min=0, max=size)
    keep = (
        (box_area(clipped) >= min_visible * box_area(shifted))
        & (clipped[..., 2] - clipped[..., 0] >= 2)
        & (clipped[..., 3] - clipped[..., 1] >= 2)
        & (labels >= 0)
    )
    return out, clipped * keep[..., None], torch.where(keep, labels, -1)


def hflip_with_boxes(images: torch.Tensor, boxes: torch.Tensor, which: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Mirror left-right the images selected by the bool mask ``which`` (B,): x -> W - x, x1 and x2 swap."""
    w = images.shape[-1]
    flipped = torch.stack([w - boxes[..., 2], boxes[..., 1], w - boxes[..., 0], boxes[..., 3]], -1)
    return (
        torch.where(which[:, None, None, None], images.flip(-1), images),
        torch.where(which[:, None, None], flipped, boxes),
    )


def vflip_with_boxes(images: torch.Tensor, boxes: torch.Tensor, which: torch.Tensor) -> tuple[torch.Tensor, ...]:
    h = images.shape[-2]
    flipped = torch.stack([boxes[..., 0], h - boxes[..., 3], boxes[..., 2], h - boxes[..., 1]], -1)
    return (
        torch.where(which[:, None, None, None], images.flip(-2), images),
        torch.where(which[:, None, None], flipped, boxes),
    )


def rot90_with_boxes(images: torch.Tensor, boxes: torch.Tensor, which: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Rotate square images 90° counter-clockwise (``torch.rot90``): pixel (y, x) moves to (W - 1 - x, y),
    so a box [x1, y1, x2, y2] becomes [y1, W - x2, y2, W - x1]."""
    w = images.shape[-1]
    rotated = torch.stack([boxes[..., 1], w - boxes[..., 2], boxes[..., 3], w - boxes[..., 0]], -1)
    return (
        torch.where(which[:, None, None, None], images.rot90(1, (-2, -1)), images),
        torch.where(which[:, None, None], rotated, boxes),
    )


def colour_jitter(
    images: torch.Tensor, g: torch.Generator, strength: float, channel: float = 0.0, greyscale: float = 0.0
) -> torch.Tensor:
    """Random brightness, contrast and saturation per image, then per-channel gains of ±``channel`` (a
    different camera's or season's colour balance) and, with probability ``greyscale``, the grey image (only
    shape and texture left to go by). uint8 in, uint8 out."""
    if strength <= 0 and channel <= 0 and greyscale <= 0:
        return images
    b = images.shape[0]
    x = images.float()

    def factor(amount: float, channels: int = 1) -> torch.Tensor:
        return 1 + (torch.rand(b, channels, 1, 1, generator=g) * 2 - 1) * amount

    x = x * factor(strength)  # brightness
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * factor(strength) + mean  # contrast
    grey = x.mean(1, keepdim=True)
    x = (x - grey) * factor(strength) + grey  # saturation
    if channel > 0:
        x = x * factor(channel, x.shape[1])
    if greyscale > 0:
        to_grey = (torch.rand(b, 1, 1, 1, generator=g) < greyscale).to(x.dtype)
        x = x + to_grey * (x.mean(1, keepdim=True) - x)
    return x.clamp(0, 255).to(torch.uint8)


# --- the eight dihedral views of an image (test-time augmentation) ------------------------------------------
DIHEDRAL = [(k, flip) for k in range(4) for flip in (False, True)]


def dihedral_view(image: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """(C, H, W) image mirrored left-right (if ``flip``), then rotated ``k`` × 90° counter-clockwise."""
    if flip:
        image = image.flip(-1)
    return image.rot90(k, (-2, -1)).contiguous()


def undo_dihedral_boxes(boxes: torch.Tensor, k: int, flip: bool, height: int, width: int) -> torch.Tensor:
    """Boxes found on ``dihedral_view(image, k, flip)`` in the coordinates of the original ``height`` ×
    ``width`` image. One counter-clockwise turn maps (x, y) to (y, W - x); undoing it maps (x', y') of the
    turned image, whose height is the width W before the turn, back to (W - y', x')."""
    h, w = (width, height) if k % 2 else (height, width)  # the view's size
    for _ in range(k % 4):
        x1, y1, x2, y2 = boxes.unbind(-1)
        boxes = torch.stack([h - y2, x1, h - y1, x2], -1)
        h, w = w, h
    if flip:
        x1, y1, x2, y2 = boxes.unbind(-1)
        boxes = torch.stack([width - x2, y1, width - x1, y2], -1)
    return boxes


# --- the data set -------------------------------------------------------------------------------------------
@dataclass
class TreeDataConfig:
    tile_size: int = 400  # training tiles cut from the YELL crops
    tile_overlap: int = 100
    crop_size: int = 320  # random crop per tile each step (a multiple of 32)
    batch_size: int = 8
    val_frac: float = 0.2  # bottom fraction of the large YELL crop held out for validation
    min_visible: float = 0.4  # a box cut by a tile or crop edge stays if this fraction remains
    augment: bool = True
    rotate: bool = True  # random 90° rotations (aerial images have no "up")
    jitter: float = 0.2  # brightness / contrast / saturation jitter strength (0 disables)
    channel_jitter: float = 0.0  # per-channel gain jitter (colour balance)
    greyscale: float = 0.0  # probability of training on the grey image
    scale_jitter: float = 0.0  # > 0: zoom tiles by a factor in [1 / (1 + s), 1 + s] before cropping
    test_image: str = TEST_IMAGE  # the held-out site evaluated as "test" (one of TEST_SITES)
    # "dataset": standardise with the training tiles' channel statistics; "image": every crop or tile by its
    # own (a new site's brighter ground or other camera then looks like the training site's)
    normalize: Literal["dataset", "image"] = "dataset"

    def __post_init__(self) -> None:
        if self.crop_size > self.tile_size or self.crop_size % 32:
            raise ValueError("crop_size must be a multiple of 32 (the deepest stride) and at most tile_size")
        if not 0 < self.val_frac < 0.9:
            raise ValueError("val_frac must be in (0, 0.9)")
        if self.test_image not in TEST_SITES:
            raise ValueError(f"test_image must be one of {', '.join(TEST_SITES)}, got {self.test_image!r}")
        if not 0 <= self.scale_jitter < 1:
            raise ValueError("scale_jitter must be in [0, 1): the largest zoom factor is 1 + scale_jitter")


@dataclass
class DetectionImage:
    """One whole image for evaluation, with its ground truth."""

    name: str
    image: torch.Tensor  # uint8 (3, H, W)
    boxes: torch.Tensor  # (M, 4) xyxy
    labels: torch.Tensor  # (M,)


@dataclass
class TreeData:
    cfg: TreeDataConfig
    tiles: torch.Tensor  # uint8 (N, 3, T, T)
    boxes: torch.Tensor  # (N, M, 4)
    labels: torch.Tensor  # (N, M), -1 = padding
    val: list[DetectionImage]
    test: list[DetectionImage]
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str


def load_image_with_boxes(folder: Path, stem: str) -> tuple[torch.Tensor, torch.Tensor]:
    image = read_rgb(folder / f"{stem}.png")
    boxes, _ = read_voc(folder / f"{stem}.xml", image.shape[2], image.shape[1])
    return image, boxes


def load_trees(cfg: TreeDataConfig) -> TreeData:
    folder, source = DEEPFOREST.locate()
    big, big_boxes = load_image_with_boxes(folder, YELL[0])
    cut = int(round(big.shape[1] * (1 - cfg.val_frac)))
    val_img = big[:, cut:]
    vb, vkeep = crop_boxes(big_boxes, 0, cut, big.shape[2], big.shape[1] - cut, 0.5)
    tb, tkeep = crop_boxes(big_boxes, 0, 0, big.shape[2], cut, cfg.min_visible)
    pieces = [(big[:, :cut], tb[tkeep]), load_image_with_boxes(folder, YELL[1])]
    tiles, box_lists = [], []
    for img, bx in pieces:
        t, bl = make_tiles(img, bx, cfg.tile_size, cfg.tile_overlap, cfg.min_visible)
        tiles.append(t)
        box_lists += bl
    tiles_t = torch.cat(tiles)
    boxes, labels = pad_boxes(box_lists)
    test_img, test_boxes = load_image_with_boxes(folder, cfg.test_image)
    flat = tiles_t.permute(1, 0, 2, 3).reshape(3, -1).float() / 255
    mean, std = tuple(flat.mean(1).tolist()), tuple(flat.std(1).tolist())
    val = [
        DetectionImage(
            f"{YELL[0]} (bottom {cfg.val_frac:.0%})",
            val_img.contiguous(),
            vb[vkeep],
            torch.zeros(int(vkeep.sum()), dtype=torch.long),
        )
    ]
    test = [DetectionImage(cfg.test_image, test_img, test_boxes, torch.zeros(len(test_boxes), dtype=torch.long))]
    return TreeData(cfg, tiles_t, boxes, labels, val, test, ["Tree"], mean, std, source)


register_dataset(
    "deepforest-trees",
    load_trees,
    TreeDataConfig,
    "DeepForest tree crowns: YELL crops tiled for training, OSBS_029 (other site) as test",
)
