"""ViT: published parameter counts, numerical parity with Hugging Face's ViT, shapes, errors, and a bounded
real-data training check on the Fashion-MNIST split the CNN recipes use."""

import pytest
import torch

from neuratlas import create_model
from neuratlas.errors import NeuratlasError
from neuratlas.models import count_parameters


@pytest.mark.parametrize("name, count", [("vit-b16", 86_567_656), ("vit-s16", 22_050_664), ("vit-ti16", 5_717_416)])
def test_published_parameter_counts(name, count):
    # ViT-B/16: 86.6M in the paper (Table 1, "86M"); the exact figures are timm's vit_*_patch16_224.
    with torch.device("meta"):  # count without allocating the weights
        model = create_model(name)
    assert count_parameters(model) == count


def test_vit_b16_forward_shape():
    with torch.device("meta"):  # shapes only (the registry-wide smoke test runs it for real)
        m = create_model("vit-b16").eval()
        feats = m.forward_features(torch.randn(1, 3, 224, 224))
    assert feats.shape == (1, 197, 768)  # class token + 14×14 patches
    assert m.forward_head(feats).shape == (1, 1000)


def test_task_options_and_shapes():
    m = create_model("vit-fashion-p4", num_classes=7, in_chans=3, img_size=32)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert m.cfg.num_patches == 64
    assert create_model("vit-fashion-p7", pool="mean")(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_clear_errors():
    with pytest.raises(NeuratlasError, match=r"expects images shaped \(batch, 1, 28, 28\)"):
        create_model("vit-fashion-p7")(torch.randn(2, 1, 32, 32))
    with pytest.raises(NeuratlasError, match="multiple of patch_size"):
        create_model("vit-fashion-p7", patch_size=5)


def test_matches_transformers_vit():
    """Same weights in Hugging Face's ViTForImageClassification and ours -> the same logits."""
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        image_size=28,
        patch_size=7,
        num_channels=1,
        num_labels=10,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        qkv_bias=True,
    )
    hf = transformers.ViTForImageClassification(hf_cfg).eval()
    ours = create_model("vit-fashion-p7", dim=64, n_layer=2, n_head=4, ffn_dim=256, dropout=0.0).eval()
    hs = hf.state_dict()

    def pick(*names):  # transformers renamed ViT's modules in 5.x; accept both layouts
        return next(hs[n] for n in names if n in hs)

    sd = {
        "cls_token": hs["vit.embeddings.cls_token"],
        "pos_embed": hs["vit.embeddings.position_embeddings"],
        "patch_embed.weight": hs["vit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.bias": hs["vit.embeddings.patch_embeddings.projection.bias"],
        "encoder.norm.weight": hs["vit.layernorm.weight"],
        "encoder.norm.bias": hs["vit.layernorm.bias"],
        "head.weight": hs["classifier.weight"],
        "head.bias": hs["classifier.bias"],
    }
    for i in range(2):
        new, old, q = f"vit.layers.{i}.", f"vit.encoder.layer.{i}.", f"encoder.blocks.{i}."
        for t in ("weight", "bias"):
            sd[q + "attn.qkv." + t] = torch.cat(
                [
                    pick(f"{new}attention.{a}_proj.{t}", f"{old}attention.attention.{b}.{t}")
                    for a, b in (("q", "query"), ("k", "key"), ("v", "value"))
                ]
            )
            sd[q + "attn.proj." + t] = pick(f"{new}attention.o_proj.{t}", f"{old}attention.output.dense.{t}")
            sd[q + "ffn.fc1." + t] = pick(f"{new}mlp.fc1.{t}", f"{old}intermediate.dense.{t}")
            sd[q + "ffn.fc2." + t] = pick(f"{new}mlp.fc2.{t}", f"{old}output.dense.{t}")
            sd[q + "norm1." + t] = pick(f"{new}layernorm_before.{t}", f"{old}layernorm_before.{t}")
            sd[q + "norm2." + t] = pick(f"{new}layernorm_after.{t}", f"{old}layernorm_after.{t}")
    torch.nn.init.normal_(sd["head.weight"])  # HF may zero-init the classifier: make the check meaningful
    hf.classifier.weight.data.copy_(sd["head.weight"])
    ours.load_state_dict(sd, strict=True)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ref = hf(pixel_values=x).logits
        got = ours(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_vit_trains_on_fashion_mnist(run_overrides, full):
    """The quick recipe on the CNN recipes' Fashion-MNIST split (55k/5k/10k, split_seed 0)."""
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    run = get_recipe("vit-fashion-quick").run_config(
        {**run_overrides, "trainer.time_limit": "none"}
        if full
        else {**run_overrides, "trainer.max_steps": "120", "data.limit_train": "15360", "data.batch_size": "128"}
    )
    assert run.data["name"] == "fashion-mnist" and "split_seed" not in run.data  # the CNN recipes' split
    result = Trainer(run).fit()
    assert result.test["accuracy"] >= (0.72 if full else 0.40)  # 10 classes: chance is 0.10
