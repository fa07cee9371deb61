"""Detection: box ops against hand-computed values and brute force, the COCO evaluator against pycocotools,
box-aware augmentations, tiling + merging, bad annotations, and bounded training on the real tree photos."""

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch

from neuratlas import create_model
from neuratlas.data.detection import (
    DIHEDRAL,
    colour_jitter,
    crop_boxes,
    dihedral_view,
    hflip_with_boxes,
    make_tiles,
    pad_boxes,
    random_crop_with_boxes,
    random_scale_with_boxes,
    read_rgb,
    read_voc,
    rot90_with_boxes,
    tile_origins,
    undo_dihedral_boxes,
    vflip_with_boxes,
)
from neuratlas.errors import NeuratlasError
from neuratlas.layers.boxes import (
    batched_nms,
    box_iou,
    cxcywh_to_xyxy,
    generalized_box_iou,
    giou_loss,
    nms,
    weighted_box_fusion,
    xyxy_to_cxcywh,
)
from neuratlas.tasks.detection import coco_evaluate, detect_dihedral, detect_tiled


# --- box ops ------------------------------------------------------------------------------------------------
def test_iou_and_giou_hand_computed():
    a = torch.tensor([[0.0, 0, 2, 2]])
    b = torch.tensor([[1.0, 1, 3, 3], [0, 0, 2, 2], [3, 0, 4, 2], [0, 0, 1, 1]])
    # overlap 1, union 7, hull 9 | identical | disjoint: union 4 + 2, hull 8 | inside: 1/4
    assert torch.allclose(box_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0, 0.25]]))
    expected = torch.tensor([[1 / 7 - 2 / 9, 1.0, 0.0 - 2 / 8, 0.25]])
    assert torch.allclose(generalized_box_iou(a, b), expected)
    assert torch.allclose(giou_loss(a.expand(4, 4), b), 1 - expected[0])
    boxes = torch.tensor([[10.0, 20, 30, 60]])
    assert torch.equal(xyxy_to_cxcywh(boxes), torch.tensor([[20.0, 40, 20, 40]]))
    assert torch.equal(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes)


def test_giou_loss_has_gradient_without_overlap():
    pred = torch.tensor([[0.0, 0, 1, 1]], requires_grad=True)
    giou_loss(pred, torch.tensor([[3.0, 3, 4, 4]])).sum().backward()
    assert pred.grad.abs().sum() > 0


def _iou_py(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def _nms_reference(boxes, scores, thr):
    """Textbook greedy NMS in plain Python: take the best box, drop all that overlap it, repeat."""
    boxes = boxes.tolist()
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        if all(_iou_py(boxes[i], boxes[j]) <= thr for j in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(3))
def test_nms_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(120, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(120, 2, generator=g) * 30], 1)
    scores = torch.rand(120, generator=g)
    for thr in (0.3, 0.5, 0.7):
        assert nms(boxes, scores, thr).tolist() == _nms_reference(boxes, scores.tolist(), thr)
    groups = torch.randint(0, 3, (120,), generator=g)
    kept = set(batched_nms(boxes, scores, groups, 0.5).tolist())
    per_group = set()
    for c in range(3):
        idx = (groups == c).nonzero().flatten()
        per_group |= set(idx[nms(boxes[idx], scores[idx], 0.5)].tolist())
    assert kept == per_group


# --- the evaluator equals pycocotools -----------------------------------------------------------------------
def test_coco_evaluator_equals_pycocotools():
    pytest.importorskip("pycocotools")  # the dev extra installs it
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)

    def rand_boxes(n):
        xy = rng.uniform(0, 200, (n, 2))
        return np.concatenate([xy, xy + rng.uniform(5, 60, (n, 2))], 1)

    for _ in range(4):
        dets, truths, gt_anns, dt_anns, imgs = [], [], [], [], []
        for i in range(5):
            ng = int(rng.integers(0, 15))
            g, gl = rand_boxes(ng), rng.integers(0, 2, ng)
            d = np.concatenate([g + rng.normal(0, 4, g.shape), rand_boxes(int(rng.integers(0, 10)))])
            d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
            dl = np.concatenate([gl, rng.integers(0, 2, len(d) - ng)])
            ds = rng.uniform(0, 1, len(d)).round(2)  # rounded: ties exercise the stable sort
            imgs.append({"id": i + 1, "width": 300, "height": 300})
            for b, lab in zip(g, gl):
                gt_anns.append(
                    {
                        "id": len(gt_anns) + 1,
                        "image_id": i + 1,
                        "category_id": int(lab) + 1,
                        "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                        "area": (b[2] - b[0]) * (b[3] - b[1]),
                        "iscrowd": 0,
                    }
                )
            for b, lab, s in zip(d, dl, ds):
                dt_anns.append(
                    {
                        "image_id": i + 1,
                        "category_id": int(lab) + 1,
                        "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                        "score": float(s),
                    }
                )
            dets.append((torch.tensor(d), torch.tensor(ds), torch.tensor(dl)))
            truths.append((torch.tensor(g).reshape(-1, 4), torch.tensor(gl)))
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = {"images": imgs, "annotations": gt_anns, "categories": [{"id": 1}, {"id": 2}]}
            gt.createIndex()
            ev = COCOeval(gt, gt.loadRes(dt_anns), "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        ours = coco_evaluate(dets, truths, max_dets=100)
        assert ours["AP"] == pytest.approx(ev.stats[0], abs=1e-12)
        assert ours["AP50"] == pytest.approx(ev.stats[1], abs=1e-12)
        assert ours["AP75"] == pytest.approx(ev.stats[2], abs=1e-12)
        assert ours["AR"] == pytest.approx(ev.stats[8], abs=1e-12)


def test_coco_evaluator_perfect_and_empty():
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]])
    perfect = [(gt, torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.long))]
    assert coco_evaluate(perfect, [(gt, torch.zeros(2, dtype=torch.long))])["AP"] == pytest.approx(1.0)
    none = [(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))]
    assert coco_evaluate(none, [(gt, torch.zeros(2, dtype=torch.long))])["AP50"] == 0.0


# --- augmentations keep boxes on their pixels ---------------------------------------------------------------
def _painted(size=64):
    """An image whose pixels inside box i have value i + 1 (boxes disjoint), and those boxes."""
    boxes = torch.tensor([[3.0, 5, 20, 12], [30, 2, 41, 30], [10, 40, 60, 61]])
    img = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
        img[0, :, y1:y2, x1:x2] = i + 1
    return img, boxes[None]


def _check_on_pixels(img, boxes, labels=None):
    for i, b in enumerate(boxes[0]):
        if labels is not None and labels[0, i] < 0:
            continue
        x1, y1, x2, y2 = [int(round(v)) for v in b.tolist()]
        inside = img[0, 0, y1:y2, x1:x2]
        assert inside.numel() > 0 and (inside == i + 1).all(), f"box {i} moved off its pixels"
        assert int((img[0, 0] == i + 1).sum()) == inside.numel()  # and covers all of them


@pytest.mark.parametrize("op", [hflip_with_boxes, vflip_with_boxes, rot90_with_boxes])
def test_geometric_augmentations_move_boxes_with_pixels(op):
    img, boxes = _painted()
    out, new = op(img, boxes, torch.tensor([True]))
    assert not torch.equal(out, img)
    _check_on_pixels(out, new)
    same, kept = op(img, boxes, torch.tensor([False]))
    assert torch.equal(same, img) and torch.equal(kept, boxes)


def test_random_crop_moves_and_drops_boxes():
    img, boxes = _painted()
    labels = torch.zeros(1, 3, dtype=torch.long)
    for seed in range(10):
        out, new, lab = random_crop_with_boxes(img, boxes, labels, 48, torch.Generator().manual_seed(seed), 0.99)
        assert out.shape[-1] == 48
        for i, b in enumerate(new[0]):  # kept boxes are whole and on their pixels; cut ones are padding
            if lab[0, i] >= 0:
                x1, y1, x2, y2 = [int(v) for v in b.tolist()]
                assert (out[0, 0, y1:y2, x1:x2] == i + 1).all()
                assert int((out[0, 0] == i + 1).sum()) == (x2 - x1) * (y2 - y1)


def test_random_zoom_keeps_boxes_on_their_pixels():
    _, boxes = _painted()
    img = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)  # box i painted 255 in channel i alone: blends only with 0
    for i, (x1, y1, x2, y2) in enumerate(boxes[0].long().tolist()):
        img[0, i, y1:y2, x1:x2] = 255
    labels = torch.zeros(1, 3, dtype=torch.long)
    widths = set()
    for seed in range(20):
        out, new, lab = random_scale_with_boxes(img, boxes, labels, 0.5, torch.Generator().manual_seed(seed), 0.5)
        assert out.shape == img.shape and out.dtype == torch.uint8
        for i, b in enumerate(new[0]):
            if lab[0, i] < 0:
                assert b.abs().sum() == 0
                continue
            x1, y1, x2, y2 = b.tolist()
            inner = out[0, i, math.ceil(y1) + 1 : math.floor(y2) - 1, math.ceil(x1) + 1 : math.floor(x2) - 1]
            assert inner.numel() > 0 and (inner == 255).all(), f"seed {seed}: box {i} left its pixels"
            ys, xs = (out[0, i] >= 128).nonzero(as_tuple=True)  # more than half of it: within a pixel of the box
            assert xs.min() >= x1 - 1 and xs.max() <= x2 and ys.min() >= y1 - 1 and ys.max() <= y2
            if i == 2:
                widths.add(round(x2 - x1, 1))
    assert len(widths) > 10  # boxes really change size
    same = random_scale_with_boxes(img, boxes, labels, 0.0, torch.Generator().manual_seed(0))
    assert same[0] is img and same[1] is boxes  # off: untouched, and no random numbers drawn
    # zoomed out to 1/1.5 (64 -> 43 px): the free border takes the image's mean colour, and boxes shrink with it
    far = random_scale_with_boxes(img, boxes, labels, 0.5, _generator_with_factor(1 / 1.5), 0.5)
    mean = img[0].float().mean((1, 2)).round()
    border = int((far[0][0] == mean[:, None, None]).all(0).sum())
    assert border >= 64 * 64 - 43 * 43
    kept = far[2][0] >= 0
    assert torch.allclose(far[1][0, kept, 2] - far[1][0, kept, 0], (boxes[0, kept, 2] - boxes[0, kept, 0]) * 43 / 64)


def _generator_with_factor(factor: float) -> torch.Generator:
    """A generator whose first draw makes random_scale_with_boxes zoom by ``factor`` (amount 0.5)."""
    for seed in range(1000):
        g = torch.Generator().manual_seed(seed)
        u = float(torch.rand(1, generator=g))
        if abs(math.exp((u * 2 - 1) * math.log1p(0.5)) - factor) < 0.02:
            return torch.Generator().manual_seed(seed)
    raise AssertionError("no seed gives that zoom")


def test_crop_boxes_visibility():
    clipped, keep = crop_boxes(torch.tensor([[0.0, 0, 10, 10], [8, 0, 18, 10]]), 5, 0, 10, 10, 0.5)
    assert torch.equal(clipped, torch.tensor([[0.0, 0, 5, 10], [3, 0, 10, 10]]))
    assert keep.tolist() == [True, True]
    _, keep = crop_boxes(torch.tensor([[0.0, 0, 10, 10]]), 7, 0, 10, 10, 0.5)
    assert keep.tolist() == [False]  # only 3 of 10 columns left


# --- tiling and merging -------------------------------------------------------------------------------------
def test_tile_origins_cover_the_image():
    assert tile_origins(1000, 400, 100) == [0, 300, 600]
    assert tile_origins(400, 400, 100) == [0]
    assert tile_origins(1035, 400, 100) == [0, 300, 600, 635]
    with pytest.raises(NeuratlasError, match="overlap"):
        tile_origins(1000, 400, 400)


def test_make_tiles_keeps_every_box_somewhere():
    image = torch.zeros(3, 700, 900, dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 10, 50, 50], [380, 290, 420, 330], [850, 650, 899, 699]])
    tiles, per_tile = make_tiles(image, boxes, 400, 100)
    assert tiles.shape == (6, 3, 400, 400)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for area in areas.tolist():  # each box appears uncut in at least one tile (the overlap exceeds its size)
        assert any(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) == area).any() for b in per_tile)
    padded, labels = pad_boxes(per_tile)
    assert padded.shape[0] == 6 and (labels >= 0).sum() == sum(len(b) for b in per_tile)


class BrightSquareDetector(torch.nn.Module):
    """Test double for tiling: "detects" the bounding box of bright pixels in each tile."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x

    def detect(self, x, score_thresh, nms_iou, max_dets):
        out = []
        for t in x:
            ys, xs = (t[0] > 0).nonzero(as_tuple=True)
            if len(ys) == 0:
                out.append((torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)))
                continue
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float)
            out.append((box, torch.tensor([0.9]), torch.zeros(1, dtype=torch.long)))
        return out


def test_tiled_detection_merges_boxes_across_tiles():
    image = torch.zeros(3, 500, 700, dtype=torch.uint8)
    image[:, 320:360, 330:370] = 255  # inside the overlap of all four tiles, and cut by inner tile edges
    boxes, scores, _ = detect_tiled(BrightSquareDetector(), image, (0.5,) * 3, (0.25,) * 3, tile=400, overlap=100)
    assert boxes.tolist() == [[330.0, 320.0, 370.0, 360.0]] and len(scores) == 1


def _bright_box(image):
    ys, xs = (image[0] > 0).nonzero(as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float)


@pytest.mark.parametrize("k,flip", DIHEDRAL)
def test_dihedral_views_map_boxes_back_to_the_same_pixels(k, flip):
    image = torch.zeros(3, 30, 50, dtype=torch.uint8)  # not square: the turns swap height and width
    image[:, 4:12, 30:47] = 255
    truth = _bright_box(image)
    view = dihedral_view(image, k, flip)
    assert view.shape[1:] == ((50, 30) if k % 2 else (30, 50))
    back = undo_dihedral_boxes(_bright_box(view)[None], k, flip, 30, 50)[0]
    assert back.tolist() == truth.tolist()
    if (k, flip) != (0, False):
        assert _bright_box(view).tolist() != truth.tolist()  # the view really moved the object


def test_weighted_box_fusion_hand_computed():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.3, 0.6, 0.8])
    labels = torch.tensor([0, 0, 0, 1])  # the last box is another class: never fused with the first
    b, s, lab = weighted_box_fusion(boxes, scores, labels, iou_threshold=0.55, num_views=2)  # IoU 81/119 = 0.68
    assert torch.allclose(b, torch.tensor([[0.25, 0.25, 10.25, 10.25], [0, 0, 10, 10], [50, 50, 60, 60]]))
    assert torch.allclose(s, torch.tensor([0.6, 0.4, 0.3])) and lab.tolist() == [0, 1, 0]
    b, s, _ = weighted_box_fusion(boxes[:2], scores[:2], labels[:2], iou_threshold=0.7, num_views=2)
    assert len(b) == 2 and torch.allclose(s, torch.tensor([0.45, 0.15]))  # below the threshold: kept apart


def test_dihedral_detection_finds_each_object_once_in_image_coordinates():
    # (the test double boxes all bright pixels of a tile together, so one object per image)
    for y1, x1, y2, x2 in [(320, 330, 360, 370), (20, 600, 50, 680)]:  # across inner tile edges | near a corner
        image = torch.zeros(3, 500, 700, dtype=torch.uint8)
        image[:, y1:y2, x1:x2] = 255
        boxes, scores, _ = detect_dihedral(
            BrightSquareDetector(), image, (0.5,) * 3, (0.25,) * 3, tile=400, overlap=100
        )
        assert torch.allclose(boxes, torch.tensor([[x1, y1, x2, y2]], dtype=torch.float))
        assert torch.allclose(scores, torch.tensor([0.9]))  # found in all eight views


def test_multiscale_dihedral_detection_returns_original_pixels():
    """Zoomed copies (0.5×, 2×) find the object where it is in the original image; one fused box, all views'
    score; a zoom factor out of range is a one-line error."""
    from neuratlas.tasks.detection import DetectionConfig

    image = torch.zeros(3, 300, 420, dtype=torch.uint8)
    image[:, 120:160, 200:260] = 255
    boxes, scores, _ = detect_dihedral(
        BrightSquareDetector(), image, (0.5,) * 3, (0.25,) * 3, tile=400, overlap=100, scales=(0.5, 1.0, 2.0)
    )
    assert boxes.shape == (1, 4) and torch.allclose(scores, torch.tensor([0.9]))
    # bilinear zooms blur the square's edge by up to a pixel of the zoomed image
    torch.testing.assert_close(boxes, torch.tensor([[200.0, 120.0, 260.0, 160.0]]), atol=1.0, rtol=0)
    one, _, _ = detect_dihedral(BrightSquareDetector(), image, (0.5,) * 3, (0.25,) * 3, tile=400, overlap=100)
    assert torch.allclose(one, torch.tensor([[200.0, 120.0, 260.0, 160.0]]))  # scales=(1.0,): eight views alone
    with pytest.raises(NeuratlasError, match="tta_scales must be zoom factors"):
        DetectionConfig(tta_scales=(1.0, 0.0))


def test_colour_jitter_channel_gains_and_greyscale():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(colour_jitter(x, g, 0.0), x)
    grey = colour_jitter(x, g, 0.0, greyscale=1.0).int()
    assert (grey.amax(1) - grey.amin(1)).max() <= 1  # every image grey (up to rounding)
    gains = colour_jitter(x, g, 0.0, channel=0.1).float() / x.float().clamp(min=1)
    ratio = gains[x >= 50].reshape(-1)
    assert ratio.min() > 0.88 and ratio.max() < 1.12 and ratio.std() > 0.02


# --- bad input ----------------------------------------------------------------------------------------------
def _voc(path, boxes, w=100, h=80):
    objs = "".join(
        f"<object><name>Tree</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
        f"<ymax>{b[3]}</ymax></bndbox></object>"
        for b in boxes
    )
    path.write_text(f"<annotation><size><width>{w}</width><height>{h}</height></size>{objs}</annotation>")
    return path


def test_bad_annotations_raise_one_line_errors_naming_the_file(tmp_path):
    boxes, names = read_voc(_voc(tmp_path / "ok.xml", [[1, 2, 30, 40]]), 100, 80)
    assert boxes.tolist() == [[1.0, 2.0, 30.0, 40.0]] and names == ["Tree"]
    with pytest.raises(NeuratlasError, match=r"empty\.xml.*no boxes"):
        read_voc(_voc(tmp_path / "empty.xml", []), 100, 80)
    with pytest.raises(NeuratlasError, match=r"zero\.xml: box 1 .*zero area"):
        read_voc(_voc(tmp_path / "zero.xml", [[1, 2, 30, 40], [5, 5, 5, 20]]), 100, 80)
    with pytest.raises(NeuratlasError, match=r"out\.xml: box 0 .*outside the 100×80 image"):
        read_voc(_voc(tmp_path / "out.xml", [[50, 50, 120, 70]]), 100, 80)
    (tmp_path / "broken.xml").write_text("<annotation><object>")
    with pytest.raises(NeuratlasError, match="broken.xml"):
        read_voc(tmp_path / "broken.xml", 100, 80)


def test_wrong_channel_count_is_reported(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((20, 30), dtype=np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(NeuratlasError, match=r"grey\.png: expected a 3-channel image, got 1"):
        read_rgb(tmp_path / "grey.png")
    Image.fromarray(np.zeros((20, 30, 4), dtype=np.uint8)).save(tmp_path / "rgba.png")
    assert read_rgb(tmp_path / "rgba.png").shape == (3, 20, 30)  # alpha is dropped, not an error
    model = create_model("fcos-resnet18-slim")
    with pytest.raises(NeuratlasError, match="expects images"):
        model(torch.zeros(1, 1, 64, 64))


# --- the models' target assignment --------------------------------------------------------------------------
def test_fcos_assigns_boxes_to_the_level_of_their_size():
    model = create_model("fcos-resnet18-slim")
    centres, strides, lo, hi, _ = model.priors([(64, 64), (32, 32), (16, 16)], torch.device("cpu"))  # 512 px
    gt = torch.tensor([[[100.0, 100, 130, 130], [150, 150, 450, 450]]])  # 30 px -> stride 8; 300 px -> 32
    match, ctr = model._assign_fcos(centres, strides, lo, hi, gt, torch.ones(1, 2, dtype=torch.bool))
    assert set(strides[match[0] == 0].tolist()) == {8.0}
    assert set(strides[match[0] == 1].tolist()) == {32.0}
    assert (ctr[match >= 0] > 0).all() and (ctr[match >= 0] <= 1).all()
    out = model(torch.zeros(1, 3, 256, 256))
    loss, logs = model.loss(out, gt[:, :1], torch.zeros(1, 1, dtype=torch.long), (256, 256))
    assert torch.isfinite(loss) and logs["positives"] == int((match[0] == 0).sum())


def test_retina_gives_every_box_an_anchor():
    model = create_model("retina-resnet18-slim")
    _, _, _, _, anchors = model.priors([(32, 32), (16, 16), (8, 8)], torch.device("cpu"))
    gt = torch.tensor([[[100.0, 100, 108, 108], [20, 20, 120, 90], [0, 0, 0, 0]]])  # an 8-px box; one pad row
    valid = torch.tensor([[True, True, False]])
    match, weight = model._assign_retina(anchors, gt, valid)
    assert set(match[0][match[0] >= 0].tolist()) == {0, 1}
    assert anchors.shape == (9 * (32 * 32 + 16 * 16 + 8 * 8), 4)


def _atss_reference(centres, strides, anchors, boxes, topk=9):
    """ATSS for one image, box by box and level by level in plain Python loops."""
    levels = sorted(set(strides.tolist()))
    iou = box_iou(anchors, boxes)  # (N, M)
    wanted = {}  # anchor -> [(iou, box)]
    for j, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        cand = []
        for s in levels:
            idx = (strides == s).nonzero().flatten().tolist()
            locs = sorted({tuple(centres[i].tolist()) for i in idx}, key=lambda p: (p[0] - cx) ** 2 + (p[1] - cy) ** 2)
            near = set(locs[:topk])
            cand += [i for i in idx if tuple(centres[i].tolist()) in near]
        vals = iou[cand, j]
        thresh = vals.mean() + vals.std(unbiased=False)
        for i in cand:
            px, py = centres[i].tolist()
            if iou[i, j] >= thresh and x1 < px < x2 and y1 < py < y2:
                wanted.setdefault(i, []).append((iou[i, j].item(), j))
    match = torch.full((len(anchors),), -1)
    for i, claims in wanted.items():
        match[i] = max(claims)[1]
    return match


def test_atss_equals_a_loop_reference_and_gives_small_boxes_several_anchors():
    model = create_model("retina-resnet18-slim", assigner="atss")
    centres, strides, _, _, anchors = model.priors([(32, 32), (16, 16), (8, 8)], torch.device("cpu"))
    # off-grid corners (no distance ties); a 10-px box that no anchor overlaps by 0.5; two overlapping boxes
    gt = torch.tensor(
        [
            [
                [97.3, 99.1, 107.7, 109.4],
                [21.2, 18.9, 121.6, 90.3],
                [60.7, 44.2, 131.9, 101.3],
                [140.6, 30.4, 251.2, 201.7],
                [0, 0, 0, 0],
            ]
        ]
    )
    valid = torch.tensor([[True, True, True, True, False]])
    match, ctr = model._assign_atss(centres, strides, anchors, gt, valid)
    assert torch.equal(match[0], _atss_reference(centres, strides, anchors, gt[0, :4]))
    baseline, _ = create_model("retina-resnet18-slim")._assign_retina(anchors, gt, valid)
    assert (baseline[0] == 0).sum() == 1 and (match[0] == 0).sum() > 1
    assert set(match[0].tolist()) == {-1, 0, 1, 2, 3}
    assert (ctr[match >= 0] > 0).all() and (ctr[match >= 0] <= 1).all()
    out = model(torch.zeros(1, 3, 256, 256))
    assert out.centerness.shape == out.logits.shape[:2]
    loss, logs = model.loss(out, gt[:, :4], torch.zeros(1, 4, dtype=torch.long), (256, 256))
    assert torch.isfinite(loss) and logs["positives"] == int((match[0] >= 0).sum()) and logs["ctr_loss"] > 0
    with pytest.raises(NeuratlasError, match="assigner='atss' is for head='retina'"):
        create_model("fcos-resnet18-slim", assigner="atss")


# --- real data, bounded training ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trees():
    from neuratlas.data import load_dataset

    return load_dataset({"name": "deepforest-trees"})


def test_tree_data_split(trees):
    assert trees.test[0].name == "OSBS_029" and len(trees.test[0].boxes) == 61
    big_h = 2472
    assert trees.val[0].image.shape[1] == big_h - round(big_h * 0.8)  # validation strip: bottom 20% of crop2
    assert trees.tiles.shape[1:] == (3, 400, 400) and trees.tiles.dtype == torch.uint8
    assert (trees.boxes[trees.labels >= 0][:, 2:] <= 400).all()


def test_second_held_out_site_and_unknown_site():
    from neuratlas.data import load_dataset

    soap = load_dataset({"name": "deepforest-trees", "test_image": "SOAP_061"})
    assert soap.test[0].name == "SOAP_061" and len(soap.test[0].boxes) == 37
    assert soap.test[0].image.shape == (3, 400, 400)
    with pytest.raises((ValueError, NeuratlasError), match="test_image must be one of OSBS_029, SOAP_061"):
        load_dataset({"name": "deepforest-trees", "test_image": "YELL"})


@pytest.mark.slow
def test_detector_overfits_one_real_tile(trees, full):
    torch.manual_seed(0)
    i = int((trees.labels >= 0).sum(1).argmax())  # the most crowded tile
    x = trees.tiles[i : i + 1, :, :256, :256]
    _, boxes, labels = random_crop_with_boxes(
        trees.tiles[i : i + 1], trees.boxes[i : i + 1], trees.labels[i : i + 1], 400, torch.Generator()
    )  # identity crop: same boxes
    boxes, keep = crop_boxes(boxes[0][labels[0] >= 0], 0, 0, 256, 256, 0.6)
    boxes = boxes[keep]
    from neuratlas.data.transforms import normalize

    xn = normalize(x, trees.mean, trees.std)
    model = create_model("fcos-resnet18-slim", backbone_args={"width": 16}, fpn_dim=32)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    b, lab = pad_boxes([boxes])
    steps = 150 if full else 40
    first = None
    for _ in range(steps):
        loss, _ = model.loss(model(xn), b, lab, (256, 256))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * first
    model.eval()
    with torch.no_grad():
        dets = model.detect(model(xn), 0.05, 0.5, 300)
    ap50 = coco_evaluate(dets, [(boxes, torch.zeros(len(boxes), dtype=torch.long))])["AP50"]
    assert ap50 > (0.8 if full else 0.1), ap50


@pytest.mark.slow
def test_quick_recipe_trains_evaluates_and_predicts(run_overrides, tmp_path, full, capsys):
    from neuratlas.cli import main
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    steps = {} if full else {"trainer.max_steps": "2", "trainer.eval_every": "2", "data.batch_size": "2"}
    run = get_recipe("detection-trees-quick").run_config({**run_overrides, **steps})
    result = Trainer(run).fit()
    assert {"AP", "AP50", "AP75", "AR"} <= set(result.test) and result.test["objects"] == 61
    if full:
        assert result.test["AP50"] >= 0.3
    assert main(["eval", str(result.run_dir), "--split", "test"]) == 0
    assert "AP50" in capsys.readouterr().out
    assert main(["eval", str(result.run_dir), "--split", "test", "--task.tta", "false"]) == 0  # one view
    assert "AP50" in capsys.readouterr().out
    assert main(["eval", str(result.run_dir), "--model.fpn_dim", "8"]) == 2
    assert "unknown option '--model.fpn_dim'" in capsys.readouterr().err  # the model is the checkpoint's
    from PIL import Image

    big = tmp_path / "big.png"  # larger than a tile: predict must tile, not resize
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (450, 820, 3), dtype=np.uint8)).save(big)
    out = tmp_path / "pred"
    assert main(["predict", str(result.run_dir), str(big), "--out", str(out), "--score", "0.0"]) == 0
    assert "820×450 px" in capsys.readouterr().out
    assert Image.open(out / "big_boxes.png").size == (820, 450)
    cfg = json.loads((result.run_dir / "config.json").read_text())
    assert cfg["task"]["name"] == "detection" and math.isfinite(result.test["AP"])


def test_per_image_standardisation_ignores_a_sites_brightness_and_contrast():
    from neuratlas.data.transforms import normalize
    from neuratlas.tasks.detection import _stats

    g = torch.Generator().manual_seed(0)
    x = torch.randint(40, 150, (2, 3, 32, 48), generator=g, dtype=torch.uint8)
    z = normalize(x, None, None)
    assert torch.allclose(z.mean((-2, -1)), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(z.std((-2, -1)), torch.ones(2, 3), atol=1e-4)
    brighter = (x.float() * 1.5 + 20).to(torch.uint8)  # another site: more light, more contrast
    assert torch.allclose(normalize(brighter, None, None), z, atol=0.05)
    assert not torch.allclose(
        normalize(brighter, (0.5,) * 3, (0.2,) * 3), normalize(x, (0.5,) * 3, (0.2,) * 3), atol=0.05
    )
    assert _stats({"mean": None, "std": None}) == (None, None)
    assert _stats({"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}) == ((0.1, 0.2, 0.3), (1, 1, 1))
