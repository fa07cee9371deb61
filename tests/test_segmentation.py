"""Segmentation: Dice/IoU and instance F1 against hand-computed values, splits that cannot leak, bad input,
the U-Net's shapes, and bounded training on the real nuclei image."""

import numpy as np
import pytest
import torch

from neuratlas import create_model
from neuratlas.data.medical import (
    LOBES,
    boundary_classes,
    check_pair,
    merge_aal,
    quadrants,
    read_array,
    slice_roles,
)
from neuratlas.errors import NeuratlasError
from neuratlas.tasks.segmentation import (
    connected_components,
    dice_from_counts,
    dice_iou_counts,
    instance_f1,
    predicted_instances,
    soft_dice_loss,
)


# --- metrics against hand-computed values -------------------------------------------------------------------
def test_dice_and_iou_hand_computed():
    target = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 2], [0, 0, 0, 2]])
    pred = torch.tensor([[0, 1, 0, 0], [1, 1, 1, 2], [0, 0, 0, 0]])
    dice, iou = dice_from_counts(dice_iou_counts(pred, target, 4))
    # class 1: |P| = 4, |G| = 4, overlap 3 -> Dice 6/8, IoU 3/5; class 2: |P| = 1, |G| = 2, overlap 1 -> 2/3, 1/2
    assert dice[1].item() == pytest.approx(0.75) and iou[1].item() == pytest.approx(0.6)
    assert dice[2].item() == pytest.approx(2 / 3) and iou[2].item() == pytest.approx(0.5)
    assert torch.isnan(dice[3])  # absent from both: undefined, left out of the mean


def test_soft_dice_loss_is_zero_for_a_perfect_prediction_and_high_for_the_wrong_one():
    target = torch.tensor([[[0, 1], [2, 1]]])
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(perfect, target, eps=0.0).item() == pytest.approx(0.0, abs=1e-6)
    wrong = torch.nn.functional.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(wrong, target, eps=0.0).item() == pytest.approx(1.0, abs=1e-6)


def test_instance_f1_hand_computed():
    truth = np.zeros((10, 10), dtype=int)
    truth[0:4, 0:4] = 1  # 16 px
    truth[6:9, 6:9] = 2  # 9 px
    truth[0:2, 7:9] = 3  # 4 px, missed
    pred = np.zeros((10, 10), dtype=int)
    pred[0:4, 0:3] = 5  # IoU 12/16 with 1: match
    pred[6:9, 6:7] = 7  # IoU 3/9 with 2: no match
    pred[8:10, 0:2] = 9  # false positive
    r = instance_f1(truth, pred)
    assert r["tp"] == 1 and r["true_instances"] == 3 and r["pred_instances"] == 3
    assert r["f1"] == pytest.approx(2 * 1 / 6)
    assert instance_f1(truth, truth)["f1"] == 1.0


def test_connected_components_and_boundary_instances():
    mask = np.zeros((8, 8), dtype=bool)
    mask[1:3, 1:3] = True
    mask[5:8, 5:8] = True
    mask[0, 7] = True  # a 1-px speck
    assert connected_components(mask).max() == 3
    assert connected_components(mask, min_size=2).max() == 2
    inst = np.zeros((6, 6), dtype=int)
    inst[1:5, 1:3], inst[1:5, 3:5] = 1, 2  # two touching nuclei
    classes = boundary_classes(inst)
    assert (classes[inst == 0] == 0).all()
    assert (classes[1:5, 2] == 2).all() and (classes[1:5, 3] == 2).all()  # the shared edge is boundary
    inst_big = np.zeros((12, 12), dtype=int)
    inst_big[1:11, 1:6], inst_big[1:11, 6:11] = 1, 2
    pred = boundary_classes(inst_big)  # a perfect interior/boundary prediction recovers both nuclei
    assert instance_f1(inst_big, predicted_instances(pred, boundary=True, min_size=1))["f1"] == 1.0
    assert predicted_instances((inst_big > 0).astype(int), boundary=False).max() == 1  # binary merges them


# --- splits cannot leak -------------------------------------------------------------------------------------
def test_quadrants_partition_the_image():
    a = np.arange(16 * 16).reshape(16, 16)
    q = quadrants(a)
    assert sorted(np.concatenate([x.ravel() for x in q]).tolist()) == a.ravel().tolist()


def test_nuclei_split_uses_every_pixel_once():
    from neuratlas.data import load_dataset

    d = load_dataset({"name": "stardist-nuclei", "test_quadrant": 1})
    sizes = [m.numel() for s in (d.train, d.val, d.test) for m in s.masks]
    assert sum(sizes) == 512 * 512
    img = read_array(d.source.split(" ", 1)[1] + "/img2d.tif")
    from neuratlas.data.medical import normalize_percentile

    assert torch.allclose(d.test.images[0][0], torch.from_numpy(normalize_percentile(img)[:256, 256:]))
    assert all(not torch.equal(t[0], d.test.images[0][0]) for t in d.train.images if t.shape == (1, 256, 256))
    assert int(d.test.instances[0].max()) > 20  # the test quadrant holds real nuclei


def test_slice_split_keeps_a_gap():
    zs = list(range(10, 156))
    roles = slice_roles(zs, block=12, gap=2)
    train, held = np.array(roles["train"]), np.array(roles["val"] + roles["test"])
    assert len(set(roles["val"]) & set(roles["test"])) == 0 and len(set(roles["train"]) & set(held)) == 0
    assert np.abs(train[:, None] - held[None]).min() > 2  # no test slice has a training neighbour
    assert 0.5 < len(train) / len(zs) < 0.7 and roles["val"] and roles["test"]


def test_aal_merges_into_seven_regions():
    atlas = np.arange(117)
    lobes = merge_aal(atlas)
    assert lobes[0] == 0 and set(lobes[1:].tolist()) == set(range(1, len(LOBES) + 1))
    assert sorted(sum(LOBES.values(), [])) == list(range(1, 117))  # every AAL region, exactly once


# --- bad input ----------------------------------------------------------------------------------------------
def test_bad_input_errors(tmp_path):
    with pytest.raises(NeuratlasError, match=r"mask\.png: the mask's shape \(4, 5\) differs"):
        check_pair(np.zeros((4, 4)), np.zeros((4, 5)), str(tmp_path / "mask.png"))
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    with pytest.raises(NeuratlasError, match=r"broken\.tif is not a readable image"):
        read_array(tmp_path / "broken.tif")
    model = create_model("unet-resnet18-slim")
    with pytest.raises(NeuratlasError, match="expects images"):
        model(torch.zeros(1, 3, 64, 64))


def test_unet_output_matches_any_input_size():
    model = create_model("unet-resnet18-slim", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 100, 70)).shape == (1, 3, 100, 70)
        assert create_model("unet-mobilenet-v2", in_chans=3).eval()(torch.randn(1, 3, 64, 96)).shape == (1, 2, 64, 96)


# --- real data, bounded training ----------------------------------------------------------------------------
@pytest.mark.slow
def test_unet_overfits_one_real_crop(full):
    from neuratlas.data import load_dataset

    torch.manual_seed(0)
    d = load_dataset({"name": "stardist-nuclei"})
    x, y = d.train.images[1][None, :, :64, :64], d.train.masks[1][None, :64, :64]
    model = create_model("unet-resnet18-slim", encoder_args={"width": 16}, decoder_dim=32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150 if full else 30):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y) + soft_dice_loss(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # train-mode BatchNorm: this checks fitting capacity, not running statistics
        dice, _ = dice_from_counts(dice_iou_counts(model(x).argmax(1), y, 2))
    assert dice[1] > (0.9 if full else 0.8), dice


@pytest.mark.slow
def test_quick_recipe_trains_evaluates_and_predicts(run_overrides, tmp_path, full, capsys):
    from PIL import Image

    from neuratlas.cli import main
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    steps = {} if full else {"trainer.max_steps": "3", "trainer.eval_every": "3", "data.batch_size": "2"}
    run = get_recipe("unet-nuclei-quick").run_config({**run_overrides, **steps})
    result = Trainer(run).fit()
    assert {"dice", "iou", "f1"} <= set(result.test) and result.test["nuclei_true"] > 20
    if full:
        assert result.test["dice"] >= 0.85
    assert main(["eval", str(result.run_dir), "--split", "test"]) == 0
    assert "dice" in capsys.readouterr().out
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (70, 90), dtype=np.uint8)).save(tmp_path / "cells.png")
    Image.fromarray((rng.random((70, 90)) > 0.7).astype(np.uint8)).save(tmp_path / "truth.png")
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                str(result.run_dir),
                str(tmp_path / "cells.png"),
                "--out",
                str(out),
                "--truth",
                str(tmp_path / "truth.png"),
            ]
        )
        == 0
    )
    assert "Dice vs truth" in capsys.readouterr().out
    assert (out / "cells_overlay.png").is_file()
    Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    assert main(["predict", str(result.run_dir), str(tmp_path / "rgb.png"), "--out", str(out)]) != 0
    assert "rgb.png: expected a single-channel image, got 3" in capsys.readouterr().err  # one line, no trace
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(tmp_path / "small_truth.png")
    assert (
        main(
            [
                "predict",
                str(result.run_dir),
                str(tmp_path / "cells.png"),
                "--out",
                str(out),
                "--truth",
                str(tmp_path / "small_truth.png"),
            ]
        )
        != 0
    )
    assert "small_truth.png: the mask's shape (10, 10) differs" in capsys.readouterr().err


@pytest.mark.slow
def test_brain_quick_recipe_reaches_its_dice(run_overrides, full):
    """The tour's brain row: bounded, a few steps that train, evaluate per region and report mean Dice;
    NEURATLAS_FULL_TESTS=1 trains the recipe and asserts its target."""
    from neuratlas.data.medical import MRICRON
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    try:
        MRICRON.locate()
    except NeuratlasError:
        pytest.skip("mricron-data is not installed")
    recipe = get_recipe("unet-brain-quick")
    assert recipe.tour and recipe.family == "unet-brain"
    steps = {} if full else {"trainer.max_steps": "3", "trainer.eval_every": "3", "data.batch_size": "2"}
    result = Trainer(recipe.run_config({**run_overrides, **steps})).fit()
    assert 0.0 <= result.test["dice"] <= 1.0
    if full:
        assert result.test["dice"] >= 0.5


def test_download_path_verifies_checksums(tmp_path, monkeypatch):
    """The canonical-download branch of the nuclei source, served from a local folder (file:// URL)."""
    import dataclasses
    import shutil

    from neuratlas.data.medical import STARDIST

    real, _ = STARDIST.locate()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in STARDIST.files:
        shutil.copy(real / name, mirror / name)
    monkeypatch.setenv("NEURATLAS_CACHE", str(tmp_path / "cache"))
    source = dataclasses.replace(STARDIST, offline=[], base_url=f"file://{mirror}")
    folder, how = source.locate(download=True)
    assert how.startswith("downloaded") and (folder / "img2d.tif").is_file()
    (tmp_path / "cache" / "stardist-nuclei" / "img2d.tif").unlink()
    (mirror / "img2d.tif").write_bytes(b"tampered")
    with pytest.raises(NeuratlasError, match="checksum mismatch"):
        source.locate(download=True)


def test_checkpoint_whose_header_length_ends_in_0x80_is_not_mistaken_for_a_pickle(tmp_path):
    """A safetensors header of length 0x..80 starts with byte 0x80, pickle's first opcode (found on a U-Net)."""
    from safetensors.torch import save_file

    from neuratlas.models.checkpoint import read_checkpoint

    path = tmp_path / "w.safetensors"
    for pad in range(300):  # metadata lengths until the header length's low byte is 0x80
        save_file(
            {"w": torch.zeros(1)},
            str(path),
            metadata={
                "format": "neuratlas",
                "model_name": "unet-resnet18",
                "model_config": "{}",
                "run_config": "{}",
                "x": "a" * pad,
            },
        )
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert read_checkpoint(path).model_name == "unet-resnet18"


def test_brain_slices_with_neighbours_as_channels_train_and_predict(tmp_path):
    from neuratlas.data.medical import MRICRON, BrainConfig, load_brain, slice_stack
    from neuratlas.tasks.segmentation import Segmentation

    vol = np.arange(4 * 3 * 5, dtype=np.float32).reshape(4, 3, 5)
    stack = slice_stack(vol, 0, 2)  # clamped at the volume's first slice
    assert stack.shape == (5, 3, 4)  # (C, H, W): axial_slice's orientation, one channel per slice
    np.testing.assert_array_equal(stack[0], stack[2])  # z = -2 and -1 clamp to slice 0
    np.testing.assert_array_equal(slice_stack(vol, 2, 1)[2], slice_stack(vol, 3)[0])
    try:
        folder = MRICRON.locate()[0]
    except NeuratlasError:
        pytest.skip("mricron-data is not installed")
    flat, deep = load_brain(BrainConfig()), load_brain(BrainConfig(context=2))
    assert flat.test.images[0].shape[0] == 1 and deep.test.images[0].shape[0] == 5
    assert torch.equal(deep.test.images[0][2], flat.test.images[0][0])  # the middle channel is the slice itself
    assert torch.equal(deep.test.masks[0], flat.test.masks[0])
    model = create_model("unet-resnet18-slim", in_chans=5, num_classes=len(deep.classes))
    extra = {"classes": deep.classes, "norm": "max255", "in_chans": 5, "context": 2, "dataset": "colin27-lobes"}
    lines = Segmentation.predict(
        model,
        extra,
        [str(folder / "ch2.nii.gz")],
        str(tmp_path),
        Segmentation.PredictOptions(slice=90, truth=str(folder / "aal.nii.gz")),
    )
    assert "Dice vs truth" in lines[0] and (tmp_path / "ch2_z90_overlay.png").is_file()
    with pytest.raises(NeuratlasError, match="reads 5 neighbouring slices; give it a NIfTI volume"):
        Segmentation.predict(
            model, extra, [str(tmp_path / "ch2_z90_overlay.png")], str(tmp_path), Segmentation.PredictOptions()
        )
