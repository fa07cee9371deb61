"""Self-supervised learning: rotation labels, SimCLR views and the NT-Xent loss against a direct computation,
the linear probe, and bounded pretraining runs on real Fashion-MNIST through the ordinary Trainer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from neuratlas.tasks.self_supervised import (
    embed,
    linear_probe,
    nt_xent,
    random_resized_crop,
    rotate_batch,
    simclr_view,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rotation_labels_match_the_rotation():
    x = torch.randint(0, 255, (64, 1, 8, 8), dtype=torch.uint8)
    out, k = rotate_batch(x, torch.Generator().manual_seed(0))
    assert set(k.tolist()) == {0, 1, 2, 3}
    for i in range(64):
        assert torch.equal(out[i], torch.rot90(x[i], int(k[i]), dims=(-2, -1)))


def test_nt_xent_matches_a_direct_computation():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    loss, _ = nt_xent(z1, z2, temperature=0.5)
    z = nn.functional.normalize(torch.cat([z1, z2]), dim=-1)
    total = 0.0
    for i in range(10):  # the SimCLR paper's l(i, j), averaged over all 2N anchors
        j = (i + 5) % 10
        sims = [math.exp(float(z[i] @ z[k]) / 0.5) for k in range(10) if k != i]
        total += -math.log(math.exp(float(z[i] @ z[j]) / 0.5) / sum(sims))
    assert loss.item() == pytest.approx(total / 10, rel=1e-5)
    perfect, acc = nt_xent(z1, z1.clone(), temperature=0.1)
    assert acc == 1.0 and perfect < loss


def test_simclr_views_differ_but_keep_shape_and_range():
    x = torch.randint(0, 255, (16, 1, 28, 28), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    a, b = simclr_view(x, g), simclr_view(x, g)
    assert a.shape == (16, 1, 28, 28) and a.min() >= 0 and a.max() <= 1
    assert (a - b).abs().mean() > 0.01
    full = random_resized_crop(x.float(), g, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(full, x.float(), atol=1e-3, rtol=0)  # a crop of the whole image is identity


def test_linear_probe_separates_separable_features_and_embed_reads_the_head_input():
    torch.manual_seed(0)
    y = torch.randint(0, 3, (300,))
    f = torch.randn(300, 16) * 0.1 + nn.functional.one_hot(y, 16).float()
    assert linear_probe(f[:200], y[:200], f[200:], y[200:], 3) > 0.95
    from neuratlas.models import create_model

    model = create_model("convnet", num_classes=4)
    x = torch.randint(0, 255, (6, 1, 28, 28), dtype=torch.uint8)
    feats = embed(model, x, lambda v: v.float() / 255)
    assert feats.shape == (6, model.classifier.in_features)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model.classifier(feats), model(x.float() / 255))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rotation", "simclr"])
def test_pretraining_learns_its_pretext_on_fashion_mnist(method, run_overrides, full):
    """A few steps of pretraining through the ordinary Trainer reduce the pretext loss; the linear probe of
    the features beats chance by far (random conv features already do: the probe is the same for both)."""
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    steps = 200 if full else 20
    run = get_recipe(f"ssl-{method}-fashion").run_config(
        {
            **run_overrides,
            "trainer.max_steps": str(steps),
            "data.batch_size": "64",
            "data.val_size": "500",
            "task.probe_train": "1000",
            "data.limit_train": "4000",
        }
    )
    trainer = Trainer(run)
    first = [trainer.train_step()["loss"] for _ in range(3)]
    for _ in range(steps - 6):
        trainer.train_step()
    last = [trainer.train_step()["loss"] for _ in range(3)]
    assert sum(last) < sum(first), (first, last)
    metrics = trainer.evaluate("val")
    assert metrics["probe_accuracy"] > 0.5
    if method == "rotation":
        assert metrics["rotation_accuracy"] > 0.3  # chance is 0.25
