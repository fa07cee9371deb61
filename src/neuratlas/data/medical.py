"""Medical images with pixel labels, split so that no test pixel is seen in training.

- ``stardist-nuclei``: the 2018 Data Science Bowl fluorescence image shipped with StarDist (512×512,
  125 labelled nuclei). Quadrants: three train, one test; validation is a strip of one training quadrant
  that training crops never touch. Masks are instance ids; the semantic target is "nucleus" or, with
  ``boundary=true``, interior / boundary (a third class that keeps touching nuclei apart).
- ``colin27-lobes``: the Colin27 T1 brain (Debian ``mricron-data``) with the AAL atlas merged into seven
  regions, as axial slices. Slices come in blocks of 12: two train blocks, then one held out (alternately
  val and test); training slices within ``gap`` of a held-out slice are dropped, so no test slice has a
  training neighbour. ``context=c`` feeds the c slices above and below as extra input channels (2.5-D);
  with c ≤ gap no held-out input holds a training slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from neuratlas.data.guards import TooLarge, load_npy, named, open_image
from neuratlas.data.registry import register_dataset
from neuratlas.errors import NeuratlasError
from neuratlas.extras import require
from neuratlas.sources import DataSource, package_dir

STARDIST = DataSource(
    name="stardist-nuclei",
    files={
        "img2d.tif": "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
        "mask2d.tif": "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f",
    },
    offline=[lambda: package_dir("stardist", "data", "images")],
    base_url="https://raw.githubusercontent.com/stardist/stardist/0.9.2/stardist/data/images",
    install_hint="Install the package that ships it: `pip install --no-deps stardist==0.9.2`",
)
MRICRON = DataSource(
    name="mricron-templates",
    files={"ch2.nii.gz": "", "aal.nii.gz": "", "aal.nii.txt": ""},
    offline=[lambda: Path("/usr/share/mricron/templates")],
    install_hint="Install it with `apt-get install mricron-data` (Debian/Ubuntu), or put ch2.nii.gz, aal.nii.gz "
    "and aal.nii.txt in ~/.cache/neuratlas/mricron-templates/",
)

# AAL (116 regions) merged into lobes, by AAL index: the grouping of the WFU PickAtlas lobe labels.
LOBES = {
    "frontal": [*range(1, 29), 69, 70],
    "parietal": list(range(57, 69)),
    "temporal": [55, 56, *range(79, 91)],
    "occipital": list(range(43, 55)),
    "limbic & insula": list(range(29, 43)),
    "deep grey": list(range(71, 79)),
    "cerebellum": list(range(91, 117)),
}


# --- reading files and checking them ----------------------------------------------------------------------
def read_array(path: str | Path) -> np.ndarray:
    """An image or mask file as a numpy array: TIFF (tifffile), .npy, or PNG/JPEG (Pillow)."""
    p = Path(path)
    if not p.is_file():
        raise NeuratlasError(f"{p} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            return np.asarray(require("tifffile", "reading TIFF").imread(p))
        if suffix == ".npy":
            return load_npy(p)
        with open_image(p) as img:
            return np.asarray(img)
    except TooLarge as e:
        raise named(p, e) from None
    except NeuratlasError:
        raise
    except Exception as e:  # tifffile/PIL raise many types for broken files
        raise NeuratlasError(f"{p} is not a readable image: {type(e).__name__}: {e}") from None


def read_volume(path: str | Path) -> np.ndarray:
    nibabel = require("nibabel", "reading NIfTI volumes")
    try:
        return np.asarray(nibabel.load(str(path)).dataobj)
    except Exception as e:
        raise NeuratlasError(f"{path} is not a readable NIfTI volume: {type(e).__name__}: {e}") from None


def check_pair(image: np.ndarray, mask: np.ndarray, where: str) -> None:
    if image.shape[:2] != mask.shape[:2]:
        raise NeuratlasError(f"{where}: the mask's shape {mask.shape} differs from its image's {image.shape}")


def normalize_percentile(img: np.ndarray, lo: float = 1.0, hi: float = 99.8) -> np.ndarray:
    """Scale intensities so the ``lo``/``hi`` percentiles map to 0/1 (microscopy's usual normalisation)."""
    a, b = np.percentile(img, [lo, hi])
    return ((img.astype(np.float32) - a) / max(b - a, 1e-6)).astype(np.float32)


def axial_slice(volume: np.ndarray, z: int) -> np.ndarray:
    """(X, Y, Z) RAS volume -> the axial slice at z as an image: rows run anterior to posterior."""
    return np.ascontiguousarray(volume[:, :, z].T[::-1])


def slice_stack(volume: np.ndarray, z: int, context: int = 0) -> np.ndarray:
    """Axial slice ``z`` with ``context`` neighbours on each side (clamped at the volume's ends), (C, H, W)."""
    zs = np.clip(np.arange(z - context, z + context + 1), 0, volume.shape[2] - 1)
    return np.stack([axial_slice(volume, int(k)) for k in zs]).astype(np.float32)


def merge_aal(atlas: np.ndarray) -> np.ndarray:
    """AAL region indices (0-116) -> lobe classes 0 (background) .. 7, in the order of ``LOBES``."""
    lut = np.zeros(117, dtype=np.int64)
    for k, regions in enumerate(LOBES.values(), start=1):
        lut[regions] = k
    return lut[atlas.astype(np.int64)]


def boundary_classes(instances: np.ndarray) -> np.ndarray:
    """Instance ids -> 0 background, 1 interior, 2 boundary (a pixel whose 4-neighbour is another label)."""
    lab = instances
    edge = np.zeros(lab.shape, dtype=bool)
    for axis in (0, 1):
        diff = np.diff(lab, axis=axis) != 0
        pad_lo = [(0, 0), (0, 0)]
        pad_hi = [(0, 0), (0, 0)]
        pad_lo[axis], pad_hi[axis] = (1, 0), (0, 1)
        edge |= np.pad(diff, pad_lo) | np.pad(diff, pad_hi)
    out = (lab > 0).astype(np.int64)
    out[edge & (lab > 0)] = 2
    return out


# --- the data object both data sets produce -----------------------------------------------------------------
@dataclass
class SegmentationSplit:
    images: list[torch.Tensor]  # float (C, H, W), normalised
    masks: list[torch.Tensor]  # long (H, W) class ids
    instances: list[torch.Tensor] | None = None  # long (H, W) instance ids (nuclei), for instance F1


@dataclass
class SegmentationData:
    train: SegmentationSplit  # regions that random crops are cut from
    val: SegmentationSplit
    test: SegmentationSplit
    classes: list[str]
    crop_size: int  # 0: whole images (all training images then share one size)
    batch_size: int
    flips: bool
    rot90: bool
    intensity: float  # strength of random gain/gamma augmentation
    norm: str  # how predict must normalise a raw image: "percentile" | "max255"
    source: str
    description: str
    extra: dict = field(default_factory=dict)


@dataclass
class NucleiConfig:
    test_quadrant: int = 3  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
    val_rows: int = 64  # bottom rows of the first training quadrant held out for validation
    crop_size: int = 128
    batch_size: int = 8
    boundary: bool = False  # 3 classes (background, interior, boundary) instead of 2
    intensity: float = 0.2

    def __post_init__(self) -> None:
        if self.test_quadrant not in range(4):
            raise ValueError("test_quadrant must be 0, 1, 2 or 3")
        if self.crop_size > 256 - self.val_rows or self.crop_size % 32:
            raise ValueError(f"crop_size must be a multiple of 32 and at most {256 - self.val_rows}")


def quadrants(a: np.ndarray) -> list[np.ndarray]:
    h, w = a.shape[0] // 2, a.shape[1] // 2
    return [a[:h, :w], a[:h, w:], a[h:, :w], a[h:, w:]]


def load_nuclei(cfg: NucleiConfig) -> SegmentationData:
    folder, source = STARDIST.locate()
    img, inst = read_array(folder / "img2d.tif"), read_array(folder / "mask2d.tif")
    check_pair(img, inst, str(folder / "mask2d.tif"))
    if img.ndim != 2:
        raise NeuratlasError(f"{folder / 'img2d.tif'}: expected a single-channel image, got shape {img.shape}")
    img = normalize_percentile(img)
    inst = inst.astype(np.int64)
    classes = ["background", "nucleus"] + (["boundary"] if cfg.boundary else [])

    def split(pieces: list[tuple[np.ndarray, np.ndarray]]) -> SegmentationSplit:
        ims = [torch.from_numpy(np.ascontiguousarray(i))[None] for i, _ in pieces]
        ins = [torch.from_numpy(relabel(np.ascontiguousarray(m))) for _, m in pieces]
        masks = [torch.from_numpy(boundary_classes(m.numpy())) if cfg.boundary else (m > 0).long() for m in ins]
        return SegmentationSplit(ims, masks, ins)

    qi, qm = quadrants(img), quadrants(inst)
    train_q = [q for q in range(4) if q != cfg.test_quadrant]
    first = train_q[0]
    cut = 256 - cfg.val_rows
    train = [(qi[first][:cut], qm[first][:cut])] + [(qi[q], qm[q]) for q in train_q[1:]]
    val = [(qi[first][cut:], qm[first][cut:])]
    test = [(qi[cfg.test_quadrant], qm[cfg.test_quadrant])]
    return SegmentationData(
        split(train),
        split(val),
        split(test),
        classes,
        cfg.crop_size,
        cfg.batch_size,
        flips=True,
        rot90=True,
        intensity=cfg.intensity,
        norm="percentile",
        source=source,
        description=f"nuclei quadrants train {train_q} / test {cfg.test_quadrant}",
        extra={"test_quadrant": cfg.test_quadrant},
    )


def relabel(instances: np.ndarray) -> np.ndarray:
    """Instance ids made consecutive 1..n (ids of nuclei cut away by a crop disappear)."""
    ids, inv = np.unique(instances, return_inverse=True)
    out = inv.reshape(instances.shape).astype(np.int64)
    return out if ids[0] == 0 else out + 1


@dataclass
class BrainConfig:
    block: int = 12  # slices per block: train, train, held out (alternately val and test), ...
    gap: int = 2  # training slices within this distance of a held-out slice are dropped
    batch_size: int = 8
    intensity: float = 0.1
    pad_to: int = 32  # slices padded (zeros) to a multiple of this
    # 2.5-D input: the `context` slices above and below as extra channels (images only; labels stay 2-D)
    context: int = 0

    def __post_init__(self) -> None:
        if self.block < 1 or self.gap < 0 or self.context < 0:
            raise ValueError("block must be >= 1, gap >= 0 and context >= 0")


def slice_roles(z_values: list[int], block: int, gap: int) -> dict[str, list[int]]:
    """Assign slices to train / val / test by blocks; training slices near a held-out one are dropped."""
    z0 = z_values[0]
    roles = {"train": [], "val": [], "test": []}
    for z in z_values:
        b = (z - z0) // block
        role = "train" if b % 3 != 2 else ("val" if (b // 3) % 2 == 0 else "test")
        roles[role].append(z)
    held = np.array(roles["val"] + roles["test"])
    if len(held):
        roles["train"] = [z for z in roles["train"] if np.abs(held - z).min() > gap]
    return roles


def load_brain(cfg: BrainConfig) -> SegmentationData:
    folder, source = MRICRON.locate()
    t1, atlas = read_volume(folder / "ch2.nii.gz"), read_volume(folder / "aal.nii.gz")
    if t1.shape != atlas.shape:
        raise NeuratlasError(f"{folder / 'aal.nii.gz'}: atlas shape {atlas.shape} differs from the T1's {t1.shape}")
    lobes = merge_aal(atlas)
    z_values = [z for z in range(t1.shape[2]) if (lobes[:, :, z] > 0).sum() >= 200]
    roles = slice_roles(z_values, cfg.block, cfg.gap)
    scale = 1.0 / 255.0

    def split(zs: list[int]) -> SegmentationSplit:
        ims, masks = [], []
        for z in zs:
            im = torch.from_numpy(slice_stack(t1, z, cfg.context) * scale)
            m = torch.from_numpy(axial_slice(lobes, z))
            h, w = m.shape
            ph, pw = (-h) % cfg.pad_to, (-w) % cfg.pad_to
            ims.append(torch.nn.functional.pad(im, (0, pw, 0, ph)))
            masks.append(torch.nn.functional.pad(m, (0, pw, 0, ph)))
        return SegmentationSplit(ims, masks)

    return SegmentationData(
        split(roles["train"]),
        split(roles["val"]),
        split(roles["test"]),
        ["background", *LOBES],
        0,
        cfg.batch_size,
        flips=False,
        rot90=False,
        intensity=cfg.intensity,
        norm="max255",
        source=source,
        description=f"Colin27 axial slices {len(roles['train'])}/{len(roles['val'])}/{len(roles['test'])}",
        extra={"slices": roles, "context": cfg.context},
    )


register_dataset(
    "stardist-nuclei",
    load_nuclei,
    NucleiConfig,
    "2018 DSB fluorescence nuclei (StarDist's img2d.tif): 3 quadrants train, 1 test",
)
register_dataset(
    "colin27-lobes",
    load_brain,
    BrainConfig,
    "Colin27 T1 brain MRI, AAL merged into 7 regions, axial slices split by blocks",
)
