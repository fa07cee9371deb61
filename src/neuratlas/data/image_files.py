"""A user's image files, decoded once: listing, content hashing, mode handling, resizing and the decode cache.

Every own-data image format (class folders, CSV lists, segmentation pairs, COCO, image–text CSVs, Hugging
Face image columns) goes through :class:`ImageStore`, so they share one behaviour:

- **Modes**: grey, RGB, RGBA/LA (composited over white: a transparent background is paper, not black),
  palette (expanded, transparency honoured), 16-bit and 32-bit integer and float images (scaled to 8 bits)
  are all read; ``channels`` is 1 when every image is grey, else 3 (or what the config says).
- **Sizes**: a :class:`ResizePolicy` (``crop``: scale the shorter side and centre-crop; ``squash``: scale
  both sides; ``pad``: fit inside and pad with black) maps every image to one (H, W).
- **Cache**: decoded uint8 arrays live in ``$NEURATLAS_CACHE/image-files`` keyed by the files' content
  hashes and the policy; a later epoch never decodes (the arrays are in memory) and a later run decodes only
  the files whose content changed. File contents are hashed only when a file's size or mtime changed.
- **Bad files** (unreadable, truncated, missing) are collected with the reason; the data set skips and lists
  them, or stops at the first with ``on_bad=error``. Nothing in the user's folder is ever written.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from neuratlas.data.guards import TooLarge, open_image
from neuratlas.errors import NeuratlasError
from neuratlas.sources import cache_dir

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
CACHE_VERSION = 1
SMALL_AREA = 128 * 128  # images up to this many pixels are decoded while their header is read
PARALLEL_MIN = 500  # new files per reading process (fewer: forking costs more than it saves)
Resize = Literal["crop", "squash", "pad"]


def warn(message: str) -> None:
    """One ``warning:`` line on stderr (the CLI's ``error:`` lines' quieter sibling)."""
    print(f"warning: {message}", file=sys.stderr)


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (nested folders included, hidden ones skipped), in a stable order.
    Names are filtered as strings: building a Path per directory entry costs more than the filter."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        out += [
            base / f
            for f in sorted(filenames)
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTS
        ]
    return out


def need_folder(path: str | Path, what: str = "folder") -> Path:
    p = Path(path).expanduser()
    if not str(path):
        raise NeuratlasError(f"no {what} given: set --data.root PATH")
    if not p.exists():
        raise NeuratlasError(f"{p}: no such {what}")
    if not p.is_dir():
        raise NeuratlasError(f"{p}: not a {what}")
    return p


def need_file(path: str | Path, what: str = "file") -> Path:
    p = Path(path).expanduser()
    if not str(path):
        raise NeuratlasError(f"no {what} given")
    if not p.is_file():
        raise NeuratlasError(f"{p}: no such {what}")
    return p


# --- decoding ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResizePolicy:
    """Every image becomes (channels, height, width) uint8 by ``mode``."""

    height: int
    width: int
    channels: int
    mode: Resize = "crop"

    def key(self) -> str:
        return f"{self.channels}x{self.height}x{self.width}-{self.mode}"

    def describe(self) -> str:
        kind = {1: "grey", 3: "RGB"}.get(self.channels, f"{self.channels}-channel")
        return f"{self.height}×{self.width} {kind} ({self.mode})"


def to_8bit(img):
    """Any Pillow image -> mode "L", "RGB", "LA" or "RGBA" with 8 bits per channel.

    16-bit images are scaled by their type's range (65535 → 255), not by their own maximum, so a dark image
    stays dark; float images are taken as [0, 1] when their maximum is at most 1, else scaled by it.
    """
    from PIL import Image

    mode = img.mode
    if mode in ("L", "RGB", "RGBA", "LA"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode in ("P", "PA"):
        return img.convert("RGBA")
    if mode.startswith("I") or mode == "F":
        a = np.asarray(img)
        if mode == "F":
            top = float(np.nanmax(a)) if a.size else 1.0
            a = a * (255.0 if top <= 1.0 else 255.0 / top)
        elif mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / (257.0 if a.max(initial=0) <= 65535 else float(a.max()) / 255.0)
        return Image.fromarray(np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV


def flatten_alpha(img):
    """LA/RGBA over white."""
    from PIL import Image

    if img.mode not in ("LA", "RGBA"):
        return img
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("L" if img.mode == "LA" else "RGB")


def fit(img, policy: ResizePolicy):
    """Resize a Pillow image to the policy's (H, W): antialiased bilinear, one resampling step."""
    from PIL import Image

    w, h = img.size
    tw, th = policy.width, policy.height
    if (w, h) == (tw, th):
        return img
    if policy.mode == "squash":
        return img.resize((tw, th), Image.BILINEAR)
    if policy.mode == "crop":  # the largest centred box of the target's aspect ratio, scaled to the target
        scale = max(tw / w, th / h)
        bw, bh = tw / scale, th / scale
        x0, y0 = (w - bw) / 2, (h - bh) / 2
        return img.resize((tw, th), Image.BILINEAR, box=(x0, y0, x0 + bw, y0 + bh))
    scale = min(tw / w, th / h)  # pad
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new(img.mode, (tw, th))
    canvas.paste(img.resize((nw, nh), Image.BILINEAR), ((tw - nw) // 2, (th - nh) // 2))
    return canvas


def decode(path, policy: ResizePolicy) -> np.ndarray:
    """One image file (a path or a binary file object) -> uint8 (C, H, W) under ``policy``; raises
    ValueError/OSError for a bad file."""
    with open_image(path) as img:
        if img.format == "JPEG" and policy.mode != "pad":  # DCT scaling: decode at ≥ the needed size only
            img.draft(img.mode, (policy.width, policy.height))
        img.load()  # a truncated file fails here (ImageFile.LOAD_TRUNCATED_IMAGES stays False)
        return finish(flatten_alpha(to_8bit(img)), policy)


def finish(img, policy: ResizePolicy) -> np.ndarray:
    """An 8-bit Pillow image (L, RGB) -> uint8 (C, H, W) of the policy's channels and size."""
    img = fit(img.convert("L" if policy.channels == 1 else "RGB"), policy)
    a = np.array(img, dtype=np.uint8)  # a writable copy (torch tensors are made from it)
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


def probe_file(item: tuple[str | bytes, int | None, str]) -> tuple[str | None, list, np.ndarray | None, tuple | None]:
    """(path or bytes, size hint, resize mode) -> (content hash, [width, height, mode, why unusable], the 8-bit
    pixels of a small image or None, (policy key, uint8 (C, H, W)) decoded under the likely policy or None).

    A small image (≤ 128×128) is decoded right away: on a cold start each file is then opened once, although
    the resize policy is chosen only after every header is known (opening is half of a small file's decode
    time). It is also finished under the policy it most likely gets (the size asked for, or its own square
    size; grey stays grey), so that in the common case nothing is left to do once the policy is known."""
    import io

    path, size, resize = item
    try:
        data = path if isinstance(path, bytes) else Path(path).read_bytes()
    except OSError as e:
        return None, [0, 0, "", f"unreadable ({e.strerror or e})"], None, None
    h = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        with open_image(io.BytesIO(data)) as img:
            w, hh, mode = img.size[0], img.size[1], img.mode
            if w * hh > SMALL_AREA:
                return h, [w, hh, mode, ""], None, None
            img.load()
            img8 = flatten_alpha(to_8bit(img))
        side = size or (w if w == hh else 0)
        done = None
        if side:
            policy = ResizePolicy(side, side, 1 if mode in GREY_MODES else 3, resize)
            done = (policy.key(), finish(img8, policy))
        # the pixels themselves only when the likely policy could not be guessed (a miss re-reads the file)
        return h, [w, hh, mode, ""], None if done else np.array(img8), done
    except Exception as e:  # Pillow raises many types for files that are not images
        return h, [0, 0, "", why_unreadable(e)], None, None


def decode_item(item: tuple[str, str | bytes, np.ndarray | None, ResizePolicy]) -> tuple[str, np.ndarray | str]:
    """(hash, path or the file's bytes, pixels decoded early or None, policy) -> (hash, uint8 (C, H, W) or why
    it failed)."""
    h, path, native, policy = item
    try:
        if native is not None:
            from PIL import Image

            return h, finish(Image.fromarray(native), policy)
        if isinstance(path, bytes):
            import io

            return h, decode(io.BytesIO(path), policy)
        return h, decode(Path(path), policy)
    except Exception as e:  # truncated/corrupt data surfaces only here, as OSError/ValueError/...
        return h, why_unreadable(e)


def read_label_map(path: Path) -> tuple[np.ndarray, str]:
    """A mask file -> (int64 (H, W) values, its Pillow mode). Palette PNGs give their palette indices (the
    class ids labelling tools write); RGB masks give packed colours R·65536 + G·256 + B, mapped to classes by
    the caller."""
    with open_image(path) as img:
        img.load()
        mode = img.mode
        if mode in ("RGB", "RGBA"):
            a = np.asarray(img.convert("RGB")).astype(np.int64)
            return (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2], mode
        if mode in ("LA", "PA"):
            img = img.getchannel(0)
        return np.asarray(img).astype(np.int64), mode


# --- the store ---------------------------------------------------------------------------------------------
@dataclass
class Header:
    """What one file is, without decoding its pixels."""

    hash: str
    width: int = 0
    height: int = 0
    mode: str = ""
    bad: str = ""  # why the file cannot be used ("" = fine)


@dataclass
class DecodedImages:
    images: np.ndarray  # uint8 (N, C, H, W) of the good files, in the order asked for
    good: list[int]  # indices (into the files asked for) that decoded
    bad: list[tuple[Path, str]]  # files that did not, with the reason
    decoded: int  # how many files were decoded in this call (0: everything came from the cache)
    policy: ResizePolicy


def _atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def default_workers() -> int:
    """Reading processes: one per CPU from 4 CPUs up. On 2 cores a second process cost more than it saved
    (forking a process that holds torch, and sending the pixels back): 4,000 small PNG/JPEG files read in
    1.41 s by one process, 1.96 s by two (2-core Xeon)."""
    n = os.cpu_count() or 1
    return n if n >= 4 else 1


def why_unreadable(e: Exception) -> str:
    """A short reason for a file Pillow could not read (its messages repeat the path, which we print)."""
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return "not an image Pillow can read"
    if isinstance(e, TooLarge):
        return str(e)
    return f"not a readable image ({type(e).__name__}: {e})"


@dataclass
class ImageStore:
    """Headers and decoded arrays of the image files of one data set, cached across runs.

    ``key`` names the data set's cache (its root folder or list file); the entries themselves are keyed by
    content hash, so two files with the same bytes share one decode and a changed file is decoded afresh.
    """

    key: str
    workers: int = 0  # reading processes for many new files (0: default_workers())
    progress: bool = True
    _index: dict = field(default_factory=dict, init=False, repr=False)
    size_hint: tuple[int | None, str] = (None, "crop")  # (size, resize mode) the policy will likely have
    _native: dict = field(default_factory=dict, init=False, repr=False)  # hash -> small image decoded early
    _done: dict = field(default_factory=dict, init=False, repr=False)  # hash -> (policy key, finished array)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(f"v{CACHE_VERSION}:{self.key}".encode()).hexdigest()[:20]
        self.folder = cache_dir("image-files")
        self.index_path = self.folder / f"{digest}.json"
        self.array_prefix = digest
        try:
            self._index = json.loads(self.index_path.read_text())
        except (OSError, ValueError):
            self._index = {}
        self._index.setdefault("files", {})
        self._index.setdefault("headers", {})
        self._index.setdefault("arrays", {})
        self._dirty = False

    # headers -----------------------------------------------------------------------------------------------
    def headers(self, paths: Sequence[Path]) -> list[Header]:
        """Each file's content hash, size and mode (or why it is unusable); files are read only when their
        size or mtime changed since the last run. New files are read in ``workers`` processes when there
        are many (Pillow's per-file work is Python code, so threads would queue on the GIL)."""
        files, known = self._index["files"], self._index["headers"]
        stamps: list[list[int] | str] = []
        new: list[int] = []
        names = [str(p) for p in paths]
        for i, name in enumerate(names):
            try:
                st = os.stat(name)
            except OSError:
                stamps.append("missing")
                continue
            stamp = [st.st_size, st.st_mtime_ns]
            stamps.append(stamp)
            rec = files.get(name)
            if not (rec and rec[:2] == stamp and rec[2] in known):
                new.append(i)
        if new:
            hint = self.size_hint
            results = self._map(probe_file, [(names[i], *hint) for i in new], "reading images")
            for i, (h, info, native, done) in zip(new, results):
                if h is None:  # the file could not be read at all
                    stamps[i] = info[3]
                    continue
                files[names[i]] = [*stamps[i], h]
                known.setdefault(h, info)
                if native is not None:
                    self._native[h] = native
                if done is not None:
                    self._done[h] = done
            self._dirty = True
        out = []
        for name, stamp in zip(names, stamps):
            if isinstance(stamp, str):
                out.append(Header("", bad=stamp))
                continue
            h = files[name][2]
            w, hh, mode, bad = known[h]
            out.append(Header(h, w, hh, mode, bad))
        return out

    def headers_of_bytes(self, blobs: Sequence[bytes | None]) -> list[Header]:
        """:meth:`headers` for images held in memory (a Hugging Face image column): hashed every time."""
        known = self._index["headers"]
        hashes = [hashlib.blake2b(b, digest_size=16).hexdigest() if b else "" for b in blobs]
        new = {h: b for h, b in zip(hashes, blobs) if h and h not in known}
        if new:
            items = [(b, *self.size_hint) for b in new.values()]
            for h, (_, info, native, done) in zip(new, self._map(probe_file, items, "reading images")):
                known[h] = info
                if native is not None:
                    self._native[h] = native
                if done is not None:
                    self._done[h] = done
            self._dirty = True
        return [Header(h, *known[h]) if h else Header("", bad="no image") for h in hashes]

    def _map(self, fn, items: list, desc: str) -> list:
        """``[fn(item) for item in items]``, in ``workers`` forked processes when there are many items:
        Pillow's per-file work is mostly Python, so threads would queue on the GIL."""
        from tqdm import tqdm

        workers = min(self.workers or default_workers(), max(1, len(items) // PARALLEL_MIN))
        show = dict(
            total=len(items), desc=desc, leave=False, file=sys.stderr, disable=not self.progress or len(items) < 2000
        )
        if workers <= 1:
            return list(tqdm(map(fn, items), **show))
        import multiprocessing

        # fork: the children need nothing but Pillow and numpy, and start in milliseconds
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(tqdm(pool.map(fn, items, chunksize=max(16, len(items) // (workers * 8))), **show))

    # decoded arrays ----------------------------------------------------------------------------------------
    def decode(
        self,
        paths: Sequence[Path],
        headers: Sequence[Header],
        policy: ResizePolicy,
        on_bad: str = "skip",
        blobs: Sequence[bytes] | None = None,
    ) -> DecodedImages:
        """uint8 arrays of ``paths`` under ``policy``: rows of the cached array where the content hash was
        decoded before under the same policy, fresh decodes (in threads) for the rest."""
        entry = self._index["arrays"].get(policy.key(), {})
        cached_rows: dict[str, int] = {h: i for i, h in enumerate(entry.get("hashes", []))}
        old = None
        if cached_rows:
            try:
                old = np.load(self.folder / entry["file"], mmap_mode="r")
                if old.shape[0] != len(cached_rows) or old.shape[1:] != (policy.channels, policy.height, policy.width):
                    old, cached_rows = None, {}
            except (OSError, ValueError, KeyError):
                old, cached_rows = None, {}
        known = self._index["headers"]
        bad: list[tuple[Path, str]] = []
        todo: dict[str, Path | bytes] = {}  # hash -> a file (or its bytes) with that content, to decode
        for k, (p, h) in enumerate(zip(paths, headers)):
            if h.bad:
                bad.append((p, h.bad))
            elif h.hash not in cached_rows and h.hash not in todo:
                todo[h.hash] = blobs[k] if blobs is not None else p
        if on_bad == "error" and bad:
            raise NeuratlasError(f"{bad[0][0]}: {bad[0][1]} (--data.on_bad skip leaves such files out)")
        fresh: dict[str, np.ndarray] = {}
        key = policy.key()
        for h in list(todo):  # finished while reading, under this very policy
            done = self._done.pop(h, None)
            if done is not None and done[0] == key:
                fresh[h] = done[1]
                del todo[h]
        if todo:
            items = [
                (h, p if isinstance(p, bytes) else str(p), self._native.pop(h, None), policy) for h, p in todo.items()
            ]
            for h, r in self._map(decode_item, items, "decoding images"):
                if isinstance(r, str):
                    known[h][3] = r
                    self._dirty = True
                else:
                    fresh[h] = r
            for p, h in zip(paths, headers):
                if not h.bad and h.hash in todo and h.hash not in fresh:
                    bad.append((p, known[h.hash][3]))
                    if on_bad == "error":
                        raise NeuratlasError(f"{p}: {known[h.hash][3]} (--data.on_bad skip leaves such files out)")
        good = [i for i, h in enumerate(headers) if not h.bad and (h.hash in cached_rows or h.hash in fresh)]
        # one row per distinct content, in first-seen order; every good file points at its row
        order = list(dict.fromkeys(headers[i].hash for i in good))
        rows = {h: k for k, h in enumerate(order)}
        table = np.empty((len(order), policy.channels, policy.height, policy.width), dtype=np.uint8)
        reused = [(k, cached_rows[h]) for h, k in rows.items() if h not in fresh]
        if reused:  # one gather from the cached array (row by row, a memmap costs microseconds per row)
            dst, src = (np.array(v) for v in zip(*reused))
            table[dst] = old[np.sort(src)][np.argsort(np.argsort(src))]
        for h, arr in fresh.items():
            table[rows[h]] = arr
        if fresh or set(order) != set(cached_rows):
            self._save_array(policy, table, order, entry.get("file"))
        self.flush()
        self._native.clear()
        self._done.clear()
        images = table[[rows[headers[i].hash] for i in good]] if good else table[:0]
        bad.sort(key=lambda b: str(b[0]))
        return DecodedImages(images, good, bad, len(fresh), policy)

    def _save_array(self, policy: ResizePolicy, table: np.ndarray, hashes: list[str], old: str | None) -> None:
        digest = hashlib.sha256((policy.key() + "".join(hashes)).encode()).hexdigest()[:16]
        name = f"{self.array_prefix}-{policy.key()}-{digest}.npy"
        _atomic_write_bytes(self.folder / name, lambda f: np.save(f, table, allow_pickle=False))
        self._index["arrays"][policy.key()] = {"file": name, "hashes": hashes}
        self._dirty = True
        if old and old != name:
            (self.folder / old).unlink(missing_ok=True)  # our own cache file, never a user's

    def flush(self) -> None:
        if self._dirty:
            text = json.dumps(self._index).encode()
            _atomic_write_bytes(self.index_path, lambda f: f.write(text))
            self._dirty = False


# --- choosing the policy -----------------------------------------------------------------------------------
def choose_policy(
    headers: Sequence[Header], size: int | None, channels: int | None, mode: Resize, auto_side: int = 64
) -> ResizePolicy:
    """The (H, W, C) everything is decoded to. ``size=None``: keep the images' size when they all share one
    square size of at most 128 px, else ``auto_side`` (the small-image models of the recipes see 28–64 px;
    give ``--data.size 224`` for an ImageNet-sized model). ``channels=None``: 1 if every image is grey."""
    good = [h for h in headers if not h.bad]
    if not good:
        raise NeuratlasError("no readable images")
    if channels is None:
        channels = 1 if all(h.mode in GREY_MODES for h in good) else 3
    if size is None:
        sizes = {(h.width, h.height) for h in good}
        ((w, h),) = sizes if len(sizes) == 1 else {(0, 1)}
        size = (
            w if (w == h and 0 < w <= 128) else min(auto_side, int(np.median([min(x.width, x.height) for x in good])))
        )
    if channels not in (1, 3):
        raise NeuratlasError(f"channels must be 1 or 3, got {channels}")
    return ResizePolicy(size, size, channels, mode)


def mode_counts(headers: Sequence[Header]) -> dict[str, int]:
    out: dict[str, int] = {}
    for h in headers:
        if not h.bad:
            out[h.mode] = out.get(h.mode, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def size_range(headers: Sequence[Header]) -> str:
    good = [h for h in headers if not h.bad]
    if not good:
        return "-"
    areas = sorted(good, key=lambda h: (h.width * h.height, h.width))
    lo, hi = areas[0], areas[-1]
    return f"{lo.width}×{lo.height}" + (
        "" if (lo.width, lo.height) == (hi.width, hi.height) else f" – {hi.width}×{hi.height}"
    )


# --- splitting ---------------------------------------------------------------------------------------------
def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (train, val, test): within each class, a seeded shuffle gives round(n·val) images to val and
    round(n·test) to test (classes with fewer than 3 images stay whole in train). Each class's draw depends
    only on (seed, class), so adding a class does not reshuffle the others."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise NeuratlasError(
            f"val_fraction and test_fraction must be in [0, 1) with a sum below 1, got "
            f"{val_fraction} and {test_fraction}"
        )
    parts: list[list[int]] = [[], [], []]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng = np.random.default_rng([seed, int(c)])
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        n_val = int(round(n * val_fraction)) if n >= 3 else 0
        n_test = int(round(n * test_fraction)) if n >= 3 else 0
        if n_val + n_test >= n:  # keep at least one training image
            n_test = max(0, n - 1 - n_val)
        parts[1] += idx[:n_val].tolist()
        parts[2] += idx[n_val : n_val + n_test].tolist()
        parts[0] += idx[n_val + n_test :].tolist()
    return tuple(np.array(sorted(p), dtype=np.int64) for p in parts)  # type: ignore[return-value]


def channel_stats(images: np.ndarray, limit: int = 10000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of (up to ``limit`` evenly spaced) uint8 images."""
    if len(images) == 0:
        return (0.5,), (0.25,)
    step = max(1, len(images) // limit)
    x = images[::step].astype(np.float32) / 255.0
    mean = x.mean(axis=(0, 2, 3))
    std = np.maximum(x.std(axis=(0, 2, 3)), 1e-3)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def list_bad(bad: Sequence[tuple[Path, str]], what: str, limit: int = 3) -> str:
    """``2 files skipped: a.png (truncated), b.jpg (...)`` for a warning line."""
    shown = "; ".join(f"{p}: {why}" for p, why in bad[:limit])
    more = f"; and {len(bad) - limit} more" if len(bad) > limit else ""
    return f"{len(bad)} {what} skipped: {shown}{more}"
