"""Real image–text pairs for contrastive (CLIP-style) training.

- ``emoji-names``: every fully-qualified emoji (Emoji ≤ 15.0, what Debian's Noto Color Emoji 2.042 draws,
  3,655 with emoji 2.16) rendered by Pillow from ``fonts-noto-color-emoji`` and paired with its CLDR name from PyPI
  ``emoji`` ("scientist: dark skin tone" becomes "scientist dark skin tone"). The split is by NAME: the
  val and test names are never seen in training, so retrieval on them is zero-shot.
- ``fashion-mnist-captions``: Fashion-MNIST images with captions drawn from several hand-written templates
  per class ("a low resolution photo of a pullover."). The captions are synthetic — only the images and
  labels are real data.

Captions are character-tokenized (:class:`CharTokenizer` plus ``<eot>`` and ``<pad>``) once, into a table
``tokens[group, template]`` of padded ids; a *group* is one emoji name or one Fashion-MNIST class.
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from neuratlas.data.registry import load_dataset, register_dataset
from neuratlas.errors import NeuratlasError
from neuratlas.extras import require
from neuratlas.sources import DataSource, cache_dir
from neuratlas.text.tokenizers import CharTokenizer

EOT, PAD = "<eot>", "<pad>"

FASHION_TEMPLATES = [
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a picture of the {}.",
    "an image of a {}.",
    "a small grey {}.",
    "a blurry photo of a {}.",
    "the {}.",
]
FASHION_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
EMOJI_TEMPLATES = ["{}", "an emoji of {}.", "{} emoji"]

NOTO_EMOJI = DataSource(
    name="noto-emoji",
    files={"NotoColorEmoji.ttf": ""},
    offline=[lambda: Path("/usr/share/fonts/truetype/noto")],
    base_url="https://github.com/googlefonts/noto-emoji/raw/v2.042/fonts",
    install_hint="Install it with `apt-get install fonts-noto-color-emoji` (Debian/Ubuntu), or put "
    "NotoColorEmoji.ttf in ~/.cache/neuratlas/noto-emoji/",
)


@dataclass
class ImageTextConfig:
    batch_size: int = 256
    eval_batch_size: int = 1000
    split_seed: int = 0
    val_size: int = 5000  # fashion: images carved from the training set; emoji: see heldout_names
    heldout_names: int = 400  # emoji: names held out for val and for test each (never trained on)
    limit_train: int | None = None  # use only the first N training images (quick checks)
    crop_padding: int = 2  # random translation by up to this many pixels (0 disables)
    hflip: bool = False
    img_size: int = 32  # emoji render size (fashion keeps 28)
    max_emoji_version: float = 15.0  # Noto Color Emoji 2.042 draws Emoji 15.0


@dataclass
class ImageTextSplits:
    """uint8 images (N, C, H, W) with the group (name/class) of each; captions as a token table."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    names: list[str]  # one per group
    templates: list[str]  # caption = template.format(name)
    tokens: torch.Tensor  # (n_groups, n_templates, context_length) int64, padded with pad_id
    tokenizer: CharTokenizer
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    captions_note: str
    cfg: ImageTextConfig = field(default_factory=ImageTextConfig)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.token_id(PAD)

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.train[0].shape[1:]
        return int(c), int(h), int(w)

    def caption(self, group: int, template: int = 0) -> str:
        return self.templates[template].format(self.names[group])


def caption_tokenizer(texts: list[str]) -> CharTokenizer:
    """Printable ASCII plus any other character of the captions, then ``<eot>`` and ``<pad>``.

    ASCII is always in, so user prompts at prediction time ("jeans") never hit an unknown character; the
    held-out names' characters are in too (characters are not names: nothing about a held-out name leaks).
    """
    return CharTokenizer.from_text(string.printable[:95] + "".join(texts), specials=(EOT, PAD))


def encode_captions(tok: CharTokenizer, texts: list[str], context_length: int | None = None) -> torch.Tensor:
    """Captions -> (N, T) ids: the characters, ``<eot>``, then ``<pad>`` up to the longest (or T)."""
    ids = [tok.encode(t) + [tok.token_id(EOT)] for t in texts]
    length = context_length or max(len(i) for i in ids)
    if any(len(i) > length for i in ids):
        raise NeuratlasError(
            f"a caption is longer than context_length {length}: "
            f"{texts[max(range(len(ids)), key=lambda k: len(ids[k]))]!r}"
        )
    out = torch.full((len(ids), length), tok.token_id(PAD), dtype=torch.int64)
    for row, i in zip(out, ids):
        row[: len(i)] = torch.tensor(i)
    return out


def caption_table(names: list[str], templates: list[str]) -> tuple[torch.Tensor, CharTokenizer]:
    texts = [t.format(n) for n in names for t in templates]
    tok = caption_tokenizer(texts)
    return encode_captions(tok, texts).view(len(names), len(templates), -1), tok


# --- Fashion-MNIST with template captions ----------------------------------------------------------------
def load_fashion_captions(cfg: ImageTextConfig) -> ImageTextSplits:
    d = load_dataset(
        {
            "name": "fashion-mnist",
            "val_size": cfg.val_size,
            "split_seed": cfg.split_seed,
            "limit_train": cfg.limit_train,
        }
    )
    tokens, tok = caption_table(FASHION_NAMES, FASHION_TEMPLATES)
    return ImageTextSplits(
        train=d.train,
        val=d.val,
        test=d.test,
        names=list(FASHION_NAMES),
        templates=list(FASHION_TEMPLATES),
        tokens=tokens,
        tokenizer=tok,
        mean=d.mean,
        std=d.std,
        source=d.source,
        cfg=cfg,
        captions_note=f"captions are synthetic: {len(FASHION_TEMPLATES)} templates per class",
    )


# --- Noto Color Emoji with CLDR names -------------------------------------------------------------------
def emoji_names(max_version: float = 15.0) -> list[tuple[str, str]]:
    """(emoji, CLDR name) for every fully-qualified emoji up to ``max_version``, in a stable order."""
    emoji = require("emoji", "emoji names")
    out = []
    for char, info in emoji.EMOJI_DATA.items():
        if info.get("status") != emoji.STATUS["fully_qualified"] or info.get("E", 99) > max_version:
            continue
        name = info["en"].strip(":").replace("_", " ").replace(":", "").replace("’", "'").lower()
        out.append((char, " ".join(name.split())))
    return sorted(out)


def split_names(n_names: int, heldout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Disjoint (train, val, test) group indices: ``heldout`` names each for val and test, the rest train."""
    if not 0 < 2 * heldout < n_names:
        raise NeuratlasError(f"heldout_names must be in [1, {(n_names - 1) // 2}] for {n_names} names, got {heldout}")
    perm = torch.randperm(n_names, generator=torch.Generator().manual_seed(seed))
    return perm[2 * heldout :], perm[heldout : 2 * heldout], perm[:heldout]


def render_emoji(chars: list[str], font_path: Path, size: int) -> np.ndarray:
    """Draw each emoji with its colour bitmap (CBDT fonts only exist at 109 px), composite on white and
    downscale to size×size: uint8 (N, 3, size, size)."""
    from PIL import Image, ImageDraw, ImageFont
    from tqdm import tqdm

    font = ImageFont.truetype(str(font_path), 109)
    out = np.empty((len(chars), 3, size, size), dtype=np.uint8)
    for i, ch in enumerate(tqdm(chars, desc="rendering emoji", disable=len(chars) < 500, leave=False)):
        canvas = Image.new("RGBA", (160, 160), (255, 255, 255, 0))
        ImageDraw.Draw(canvas).text((12, 16), ch, font=font, embedded_color=True)
        box = canvas.getbbox() or (0, 0, 160, 160)
        glyph = canvas.crop(box)
        side = max(glyph.size)
        square = Image.new("RGBA", (side, side), (255, 255, 255, 0))
        square.paste(glyph, ((side - glyph.size[0]) // 2, (side - glyph.size[1]) // 2))
        white = Image.new("RGBA", square.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, square).convert("RGB").resize((size, size), Image.LANCZOS)
        out[i] = np.asarray(img).transpose(2, 0, 1)
    return out


def load_emoji_names(cfg: ImageTextConfig) -> ImageTextSplits:
    pairs = emoji_names(cfg.max_emoji_version)
    folder, source = NOTO_EMOJI.locate()
    font = folder / "NotoColorEmoji.ttf"
    cache = cache_dir("emoji-names", f"noto-{cfg.img_size}px-{len(pairs)}.npz")
    chars = [c for c, _ in pairs]
    images = None
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if list(z["chars"]) == chars and os.path.getmtime(cache) >= os.path.getmtime(font):
                images = z["images"]
    if images is None:
        images = render_emoji(chars, font, cfg.img_size)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, images=images, chars=np.array(chars))
    x = torch.from_numpy(images)
    names = [n for _, n in pairs]
    tokens, tok = caption_table(names, EMOJI_TEMPLATES)
    train, val, test = split_names(len(names), cfg.heldout_names, cfg.split_seed)
    if cfg.limit_train:
        train = train[: cfg.limit_train]
    x_f = x[train].float() / 255  # statistics of the training images only
    mean = tuple(x_f.mean((0, 2, 3)).tolist())
    std = tuple(x_f.std((0, 2, 3)).tolist())
    return ImageTextSplits(
        train=(x[train], train),
        val=(x[val], val),
        test=(x[test], test),
        names=names,
        templates=list(EMOJI_TEMPLATES),
        tokens=tokens,
        tokenizer=tok,
        mean=mean,
        std=std,
        source=source,
        cfg=cfg,
        captions_note=f"CLDR names of {len(names):,} emoji; val/test names never trained on",
    )


register_dataset(
    "fashion-mnist-captions",
    load_fashion_captions,
    ImageTextConfig,
    "Fashion-MNIST images with template captions (synthetic text, 8 templates per class)",
    img_size=28,
    hflip=True,
)
register_dataset(
    "emoji-names",
    load_emoji_names,
    ImageTextConfig,
    "3,655 Noto Color Emoji rendered 32×32 with their CLDR names; 400 + 400 names held out",
    batch_size=128,
    crop_padding=2,
)
