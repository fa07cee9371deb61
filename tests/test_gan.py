"""DCGAN: shapes, init, the three losses, one adversarial step, the Fréchet distance against scipy, mode-collapse
detection, checkpoints of both networks and the ``sample`` command."""

from __future__ import annotations

import pytest
import torch

from neuratlas.cli import main
from neuratlas.errors import NeuratlasError
from neuratlas.models import create_model
from neuratlas.tasks.gan import (
    GANTrainer,
    Judge,
    discriminator_loss,
    feature_stats,
    frechet_distance,
    gan_config,
    generator_loss,
    gradient_penalty,
    score_samples,
)


@pytest.mark.parametrize("size", [28, 32, 64])
def test_generator_and_discriminator_shapes(size):
    g = create_model("dcgan-generator", img_size=size, dim=8, in_chans=3)
    d = create_model("dcgan-discriminator", img_size=size, dim=8, in_chans=3)
    x = g(torch.randn(5, 100))
    assert x.shape == (5, 3, size, size) and x.abs().max() <= 1
    assert d(x).shape == (5,)
    with pytest.raises(NeuratlasError, match="expects images shaped"):
        d(torch.randn(5, 1, size, size))
    with pytest.raises(NeuratlasError, match="expects noise"):
        g(torch.randn(5, 7))
    with pytest.raises(NeuratlasError, match="img_size"):
        create_model("dcgan-generator", img_size=30)


def test_dcgan_init_and_spectral_norm():
    g = create_model("dcgan-generator")
    w = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)])
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    bn = torch.cat([m.weight for m in g.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert abs(bn.mean().item() - 1) < 0.01
    d = create_model("dcgan-discriminator-sn")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    conv = d.net[0]
    d.train()
    for _ in range(30):  # power iteration converges: the largest singular value becomes 1
        d(torch.randn(4, 1, 28, 28))
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    assert sigma == pytest.approx(1.0, abs=0.05)


def test_losses_by_hand():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sp = torch.nn.functional.softplus
    assert discriminator_loss("ns", real, fake) == pytest.approx((sp(-real).mean() + sp(fake).mean()).item())
    assert generator_loss("ns", fake) == pytest.approx(sp(-fake).mean().item())
    assert discriminator_loss("hinge", real, fake) == pytest.approx((0 + 2.0) / 2 + (1.5 + 0) / 2)
    assert generator_loss("hinge", fake) == pytest.approx(1.25)
    assert discriminator_loss("wgan-gp", real, fake) == pytest.approx(-1.25 - 0.5)
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        lin[1].weight.fill_(0.5)  # gradient norm is exactly 1: no penalty
    assert gradient_penalty(lin, torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)).item() == pytest.approx(0, abs=1e-10)


@pytest.mark.parametrize("loss", ["ns", "hinge"])
def test_one_adversarial_step_moves_both_losses(loss):
    torch.manual_seed(0)
    g, d = create_model("dcgan-generator", dim=16), create_model("dcgan-discriminator", dim=16)
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    real = torch.rand(32, 1, 28, 28) * 2 - 1
    z = torch.randn(32, 100)
    g.eval(), d.eval()  # fixed batch-norm statistics so before/after are comparable
    with torch.no_grad():
        fake = g(z)
        d_before = discriminator_loss(loss, d(real), d(fake)).item()
    d.train()
    d_loss = discriminator_loss(loss, d(real), d(fake))
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()
    d.eval()
    with torch.no_grad():
        assert discriminator_loss(loss, d(real), d(fake)).item() < d_before
        g_before = generator_loss(loss, d(g(z))).item()
    g.train()
    g_loss = generator_loss(loss, d(g(z)))
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()
    g.eval()
    with torch.no_grad():
        assert generator_loss(loss, d(g(z))).item() < g_before


def test_frechet_distance_matches_scipy():
    linalg = pytest.importorskip("scipy.linalg")
    a, b = torch.randn(500, 6, dtype=torch.float64), torch.randn(400, 6, dtype=torch.float64) * 1.5 + 0.3
    (m1, s1), (m2, s2) = feature_stats(a), feature_stats(b)
    root = linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    ref = ((m1 - m2) ** 2).sum().item() + (s1.trace() + s2.trace()).item() - 2 * root.trace()
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0, abs=1e-6)


def tiny_judge(real: torch.Tensor) -> Judge:
    """An (untrained) Neuratlas CNN as judge: enough to test the bookkeeping, not the quality figures."""
    model = create_model("convnet", channels=(4, 8), convs_per_stage=1, num_classes=10).eval()
    judge = Judge(model, (0.286,), (0.353,), [str(i) for i in range(10)], 0.0, torch.zeros(1), torch.zeros(1), 0.0)
    judge.real_mu, judge.real_sigma = feature_stats(judge.features_and_logits(real)[0])
    return judge


def test_mode_collapse_is_detected():
    torch.manual_seed(0)
    real = torch.rand(300, 1, 28, 28) * 2 - 1
    judge = tiny_judge(real)
    collapsed = real[:1].repeat(300, 1, 1, 1) + 0.001 * torch.randn(300, 1, 28, 28)
    m = score_samples(judge, collapsed)
    assert m["coverage"] == 1 and m["class_entropy"] < 0.05
    assert sum(m[f"share_{i}"] for i in range(10)) == pytest.approx(1)
    assert m["fd"] > score_samples(judge, real)["fd"]


def test_gan_run_checkpoints_and_sample_cli(tmp_path, capsys):
    from neuratlas.recipes import get_recipe

    over = {"trainer.out_dir": str(tmp_path), "trainer.run_name": "g", "trainer.progress": "false",
            "trainer.tensorboard": "false", "trainer.max_steps": "3", "trainer.eval_every": "3",
            "gan.eval_samples": "100", "gan.grid": "16", "data.limit_train": "256", "generator.dim": "8",
            "discriminator.dim": "8"}
    run = gan_config(get_recipe("dcgan-fashion-quick"), over)
    trainer = GANTrainer(run)
    trainer.judge = tiny_judge(trainer.data.test[0][:200])
    result = trainer.fit()
    assert result.steps == 3 and set(result.metrics) >= {"fd", "coverage", "class_entropy"}
    assert (tmp_path / "g" / "samples" / "step_000003.png").is_file()
    for net in ("generator", "discriminator"):
        assert (tmp_path / "g" / "checkpoints" / f"{net}.safetensors").is_file()
    out = tmp_path / "grid.png"
    assert main(["sample", str(tmp_path / "g"), "--n", "9", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["sample", str(tmp_path / "g" / "checkpoints" / "discriminator.safetensors")]) == 2
    assert "not a GAN generator" in capsys.readouterr().err
    with pytest.raises(NeuratlasError, match="unknown option"):
        gan_config(get_recipe("dcgan-fashion-quick"), {"gan.lost": "ns"})
    with pytest.raises(NeuratlasError, match="batch norm"):
        GANTrainer(gan_config(get_recipe("dcgan-fashion-quick"), {"gan.loss": "wgan-gp", "data.limit_train": "256"}))


@pytest.mark.slow
def test_gan_learns_fashion(tmp_path, full):
    """Bounded: a few hundred steps must bring the generated images much closer to real ones (in the
    judge's feature space) than the untrained generator; full: the quick recipe covers all 10 classes."""
    from neuratlas.recipes import get_recipe

    steps = 600 if full else 120
    over = {"trainer.out_dir": str(tmp_path), "trainer.run_name": "g", "trainer.progress": "false",
            "trainer.tensorboard": "false", "trainer.max_steps": str(steps), "trainer.eval_every": str(steps),
            "gan.eval_samples": "1000" if not full else "2000"}
    run = gan_config(get_recipe("dcgan-fashion-quick"), over)
    trainer = GANTrainer(run)
    if not full:
        trainer.judge = tiny_judge(trainer.data.test[0][:1000])
    before = trainer.evaluate()["fd"]
    result = trainer.fit()
    assert result.metrics["fd"] < 0.5 * before
    if full:
        assert result.metrics["coverage"] == 10
