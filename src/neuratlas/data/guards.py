"""Reading a user's files with bounds checked from their headers, before anything is decoded or allocated.

A file is data from outside: a 200-byte PNG can declare 20,000 × 20,000 pixels, a .npy can declare a shape
of 10¹² elements or hold pickled Python objects. Every reader of images and arrays in Neuratlas goes through
:func:`open_image` and :func:`load_npy`, which read the header, compare what it declares with a fixed limit
and with the memory available now, and refuse with one line naming the file. Pillow's own decompression-bomb
check (a warning above 89 megapixels, an exception above 179) is replaced by this one: its warning would be
printed as a Python warning and its exception named as Pillow's.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from neuratlas.errors import NeuratlasError
from neuratlas.models.budget import available_memory

# 2**27 pixels (134 megapixels): above the largest photographs cameras take (~100 MP), below Pillow's error
# threshold (179 MP), so a file Pillow would refuse is refused here first, by the same rule for every format.
MAX_PIXELS = 1 << 27
# Decoding makes a few full-size copies (the decoded image, the 8-bit one, the RGB one) before the resize;
# an image whose decoded size times this factor exceeds the memory available now is refused.
COPIES = 4
_BYTES_PER_SAMPLE = {"I": 4, "F": 4, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "1": 1}


class TooLarge(NeuratlasError, ValueError):
    """A file declaring more than Neuratlas will decode; the message does not repeat the path (callers that
    collect reasons per file print the path themselves), :func:`named` adds it."""


def named(path: Any, e: Exception) -> NeuratlasError:
    return NeuratlasError(f"{path}: {e}")


def check_pixels(width: int, height: int, mode: str, memory: int | None = None) -> None:
    """Refuse an image whose declared size is over :data:`MAX_PIXELS` or would not fit in memory decoded."""
    pixels = width * height
    try:
        from PIL import Image

        bands = Image.getmodebands(mode)
    except (ImportError, KeyError, ValueError):
        bands = 4
    decoded = pixels * bands * _BYTES_PER_SAMPLE.get(mode, 1)
    memory = available_memory() if memory is None else memory
    if pixels > MAX_PIXELS or COPIES * decoded > memory:
        why = (
            f"over the limit of {MAX_PIXELS / 1e6:.0f} megapixels"
            if pixels > MAX_PIXELS
            else f"{COPIES} × {decoded / 2**30:.2f} GiB decoded is more than the {memory / 2**30:.2f} GiB of "
            "memory available"
        )
        raise TooLarge(
            f"its header declares {width:,}×{height:,} pixels ({mode}, {pixels / 1e6:.0f} megapixels), "
            f"{why}; refused before decoding (a decompression bomb, or an image to downscale first)"
        )


@contextmanager
def open_image(source: str | Path | IO[bytes]) -> Iterator[Any]:
    """``PIL.Image.open`` with the size checked from the header before any pixel is decoded: raises
    :class:`TooLarge` for an image over the limits (never Pillow's DecompressionBombError or Warning)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(source)
        except Image.DecompressionBombError as e:  # over 179 MP: Pillow stops before we see the header
            pixels = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{int(pixels.group(1)) / 1e6:.0f} megapixels" if pixels else "more than 179 megapixels"
            raise TooLarge(
                f"its header declares {size}, over the limit of {MAX_PIXELS / 1e6:.0f} megapixels; "
                "refused before decoding (a decompression bomb, or an image to downscale first)"
            ) from None
        with img:
            check_pixels(img.size[0], img.size[1], img.mode)
            yield img


def load_npy(path: str | Path, memory: int | None = None) -> np.ndarray:
    """A ``.npy`` file's numeric array. Its header is read first: Python objects (dtype ``object``, which
    only unpickling could read, and unpickling can run code) are refused, and so is a shape that needs more
    bytes than the file holds or than the memory available now. Every problem is one line naming the file."""
    p = Path(path)
    fmt = np.lib.format
    try:
        with open(p, "rb") as f:
            major, _ = fmt.read_magic(f)
            shape, fortran, dtype = (fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0)(f)
            offset = f.tell()
        size = p.stat().st_size
    except (ValueError, OSError, EOFError, TypeError, SyntaxError) as e:
        raise NeuratlasError(f"{p} is not a readable .npy file ({type(e).__name__}: {e})") from None
    if dtype.hasobject:
        raise NeuratlasError(
            f"{p} holds Python objects (dtype {dtype}), not numbers; Neuratlas reads .npy files "
            "without unpickling (which could run code from the file): save a numeric array"
        )
    need = math.prod(shape) * dtype.itemsize
    if need > size - offset:
        raise NeuratlasError(
            f"{p}: its header declares shape {tuple(shape)} of {dtype} ({need:,} bytes) but the "
            f"file holds {size - offset:,} bytes of data (truncated or forged)"
        )
    memory = available_memory() if memory is None else memory
    if 2 * need > memory:
        raise NeuratlasError(
            f"{p}: an array of {need / 2**30:.2f} GiB does not fit the {memory / 2**30:.2f} GiB of memory available"
        )
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise NeuratlasError(f"{p} is not a readable .npy file ({type(e).__name__}: {e})") from None
