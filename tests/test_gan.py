"""GANs on the one trainer: shapes, init, the three losses, one adversarial step, the Fréchet distance against
scipy, mode-collapse detection; a GAN run resumes bit for bit, trainer options take effect or are refused,
and `eval`, `predict` and `sample` work on a GAN run."""

from __future__ import annotations

import json

import pytest
import torch

from neuratlas.cli import main
from neuratlas.errors import NeuratlasError
from neuratlas.models import create_model
from neuratlas.models.checkpoint import read_checkpoint
from neuratlas.recipes import get_recipe
from neuratlas.tasks.gan import (
    Judge,
    discriminator_loss,
    feature_stats,
    frechet_distance,
    generator_loss,
    gradient_penalty,
    score_samples,
)
from neuratlas.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_JUDGE = {"name": "convnet", "channels": [4, 8], "convs_per_stage": 1, "dropout": 0.0}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def judge_cache(tmp_path_factory):
    """One judge cache for this module's runs, apart from the user's (the judge is keyed by its spec)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEURATLAS_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def tiny(tmp_path, name: str, recipe: str = "dcgan-fashion-quick", **over: str) -> dict[str, str]:
    """Overrides for a run of a few steps of tiny networks on 256 images, judged by a tiny classifier."""
    return {
        "trainer.out_dir": str(tmp_path),
        "trainer.run_name": name,
        "trainer.progress": "false",
        "trainer.loggers": "csv",
        "trainer.max_steps": "4",
        "trainer.eval_every": "2",
        "data.limit_train": "256",
        "data.batch_size": "32",
        "gan.eval_samples": "64",
        "gan.grid": "4",
        "gan.judge": json.dumps(TINY_JUDGE),
        "gan.judge_epochs": "0.02",
        "model.generator": json.dumps({"name": "dcgan-generator", "dim": 8}),
        "model.discriminator": json.dumps({**get_recipe(recipe).config["model"]["discriminator"], "dim": 8}),
        **over,
    }


def tiny_trainer(tmp_path, name: str, recipe: str = "dcgan-fashion-quick", **over: str) -> Trainer:
    return Trainer(get_recipe(recipe).run_config(tiny(tmp_path, name, recipe, **over)))


def assert_same(a, b, where: str = "") -> None:
    """Nested optimizer states / state dicts are equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# --- networks and losses ---------------------------------------------------------------------------------
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


def test_gan_pair_is_one_model_that_a_checkpoint_rebuilds(tmp_path):
    from neuratlas.models.checkpoint import save_weights

    pair = create_model(
        "gan",
        generator={"name": "dcgan-generator", "dim": 8, "latent_dim": 16},
        discriminator={"name": "dcgan-discriminator-sn", "dim": 8},
        in_chans=3,
        img_size=32,
    )
    assert pair.generator.config.in_chans == pair.discriminator.config.in_chans == 3  # shared options
    assert pair.discriminator.config.norm == "spectral" and pair.latent_dim == 16
    z = torch.randn(2, 16)
    pair.eval()
    assert torch.equal(pair(z), pair.generator(z))  # calling the pair generates
    path = save_weights(tmp_path / "p.safetensors", pair, {}, {}, 7)
    back = read_checkpoint(path).build_model().eval()
    assert_same(pair.state_dict(), back.state_dict())
    with pytest.raises(NeuratlasError, match="'name'"):
        create_model("gan", generator={"dim": 8})
    with pytest.raises(NeuratlasError, match="not a GAN generator"):
        create_model("gan", generator={"name": "dcgan-discriminator"})


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
    with torch.no_grad():
        lin[1].weight.fill_(1.5)  # gradient norm 3 everywhere: penalty (3 - 1)^2, whatever the interpolation
    eps = torch.tensor([0.0, 0.3, 1.0]).view(3, 1, 1, 1)
    assert gradient_penalty(lin, torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2), eps).item() == pytest.approx(4)


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


# --- the judge's figures -------------------------------------------------------------------------------------
def test_frechet_distance_matches_scipy():
    linalg = pytest.importorskip("scipy.linalg")
    a, b = torch.randn(500, 6, dtype=torch.float64), torch.randn(400, 6, dtype=torch.float64) * 1.5 + 0.3
    (m1, s1), (m2, s2) = feature_stats(a), feature_stats(b)
    root = linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    ref = ((m1 - m2) ** 2).sum().item() + (s1.trace() + s2.trace()).item() - 2 * root.trace()
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0, abs=1e-6)


def test_mode_collapse_is_detected():
    torch.manual_seed(0)
    real = torch.rand(300, 1, 28, 28) * 2 - 1
    model = create_model("convnet", channels=(4, 8), convs_per_stage=1, num_classes=10).eval()
    judge = Judge(model, (0.286,), (0.353,), [str(i) for i in range(10)], 0.0, {}, 0.0)
    judge.stats["test"] = feature_stats(judge.features_and_logits(real)[0])  # an untrained judge: bookkeeping
    collapsed = real[:1].repeat(300, 1, 1, 1) + 0.001 * torch.randn(300, 1, 28, 28)
    m, shares = score_samples(judge, collapsed)
    assert m["coverage"] == 1 and m["class_entropy"] < 0.05
    assert sum(shares) == pytest.approx(1) and max(shares) == 1
    assert m["fd"] > score_samples(judge, real)[0]["fd"]


# --- a GAN run on the one trainer ---------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["ns", "wgan-gp"])
def test_gan_run_resumes_bit_exact(tmp_path, loss):
    """4 steps in one go == 2 steps, a crash, and a resume for the last 2: every weight (raw and averaged)
    and both optimizers' states. wgan-gp: 2 critic steps, the penalty's random interpolation, EMA, clipping."""
    recipe = "dcgan-fashion-quick" if loss == "ns" else "wgan-gp-fashion"
    over = {} if loss == "ns" else {"gan.n_critic": "2", "trainer.ema_decay": "0.8", "trainer.grad_clip": "0.5"}
    a = tiny_trainer(tmp_path, "a", recipe, **over)
    a.fit()
    b = tiny_trainer(tmp_path, "b", recipe, **over)
    with pytest.raises(KeyboardInterrupt):
        b.fit(crash_at=3)  # dies after the step-2 checkpoint, losing step 3
    c = tiny_trainer(tmp_path, "b", recipe, **over)
    c.fit(resume=b.run_dir)
    assert a.step == c.step == 4
    assert_same(a.model.state_dict(), c.model.state_dict(), "raw weights")
    assert_same(a.eval_model.state_dict(), c.eval_model.state_dict(), "saved weights")
    for i, (oa, oc) in enumerate(zip(a.optimizers, c.optimizers)):
        assert_same(oa.state_dict(), oc.state_dict(), f"optimizer {i}")
    assert len(a.optimizers) == 2 and a.optimizers[1].param_groups[0]["lr"] == get_recipe(recipe).config["gan"]["d_lr"]
    ckpt = read_checkpoint(c.run_dir, prefer="last")
    assert ckpt.model_name == "gan" and ckpt.step == 4 and ckpt.run_config["gan"]["loss"] == loss
    assert (c.run_dir / "checkpoints" / "best.safetensors").is_file()
    assert sorted(p.name for p in (c.run_dir / "samples").iterdir()) == ["step_000002.png", "step_000004.png"]


def test_trainer_options_take_effect_or_are_refused(tmp_path):
    base = tiny_trainer(tmp_path, "base", **{"trainer.max_steps": "2"})
    base.fit()
    clipped = tiny_trainer(tmp_path, "clip", **{"trainer.max_steps": "2", "trainer.grad_clip": "0.01"})
    logs = clipped.train_step()
    assert logs["d_grad_norm"] > 0.01 and logs["g_grad_norm"] > 0.01  # both networks' steps were clipped
    clipped.train_step()
    changed = [k for k, v in base.model.state_dict().items() if not torch.equal(v, clipped.model.state_dict()[k])]
    assert any(k.startswith("generator.") for k in changed) and any(k.startswith("discriminator.") for k in changed)
    averaged = tiny_trainer(tmp_path, "ema", **{"trainer.max_steps": "2", "trainer.ema_decay": "0.9"})
    averaged.fit()
    assert_same(base.model.state_dict(), averaged.model.state_dict(), "raw weights")  # the average trains nothing
    saved = read_checkpoint(averaged.run_dir, prefer="last").build_model()
    assert_same(averaged.ema.module.state_dict(), saved.state_dict(), "saved = averaged")
    w = "generator.net.0.weight"
    assert not torch.equal(saved.state_dict()[w], base.model.state_dict()[w])
    for option, value, match in [
        ("trainer.grad_accum", "2", "grad_accum"),
        ("optimizer.lr_mults", "net.0.*=0.1", "lr_mults"),
        ("gan.loss", "wgan-gp", "batch norm"),
    ]:
        with pytest.raises(NeuratlasError, match=match):
            tiny_trainer(tmp_path, "refused", **{option: value})


def test_eval_predict_sample_and_resume_from_the_command_line(tmp_path, capsys):
    run = get_recipe("dcgan-fashion-quick").run_config(tiny(tmp_path, "cli", **{"trainer.max_steps": "2"}))
    from neuratlas.paradigms import fit

    fit(run, announce=False)
    folder = str(tmp_path / "cli")
    assert (
        main(["train", "dcgan-fashion-quick", "--resume", folder, "--trainer.max_steps=3", "--trainer.eval_every=3"])
        == 0
    )
    out = capsys.readouterr().out
    assert "test fd:" in out and "class coverage" in out
    assert read_checkpoint(folder, prefer="last").step == 3
    assert main(["eval", folder]) == 0
    out = capsys.readouterr().out
    assert "val   fd " in out and "coverage" in out
    assert main(["predict", folder, "9", "--seed", "1", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "samples.png").read_bytes()[:8] == PNG
    assert main(["predict", folder, "9", "--score", "true", "--out", str(tmp_path / "p")]) == 0  # judge cached
    assert main(["sample", folder, "4", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "samples.png").read_bytes()[:8] == PNG
    capsys.readouterr()
    assert main(["predict", folder, "cat.png"]) == 2
    assert "number of images" in capsys.readouterr().err
    assert main(["predict", folder, "4", "--sed", "1"]) == 2
    assert "unknown option '--sed'" in capsys.readouterr().err
    assert main(["train", "dcgan-fashion-quick", "--gan.lost", "ns"]) == 2
    err = capsys.readouterr().err
    assert "unknown option '--gan.lost'" in err and "Did you mean --gan.loss" in err and "--gan.d_betas" in err
    assert main(["train", "dcgan-fashion-quick", "--gan.loss", "nss"]) == 2
    assert "not one of ns, hinge, wgan-gp" in capsys.readouterr().err


@pytest.mark.slow
def test_gan_learns_fashion(tmp_path, full):
    """Bounded: a few hundred steps must bring the generated images much closer to real ones (in the
    judge's feature space) than the untrained generator; full: the quick recipe covers all 10 classes."""
    steps = 600 if full else 120
    over = {
        "trainer.out_dir": str(tmp_path),
        "trainer.run_name": "g",
        "trainer.progress": "false",
        "trainer.loggers": "csv",
        "trainer.max_steps": str(steps),
        "trainer.eval_every": str(steps),
        "gan.eval_samples": "2000" if full else "1000",
    }
    if not full:
        over.update({"gan.judge": json.dumps(TINY_JUDGE), "gan.judge_epochs": "0.2"})
    trainer = Trainer(get_recipe("dcgan-fashion-quick").run_config(over))
    before = trainer.evaluate("val")["fd"]
    result = trainer.fit()
    assert result.val["fd"] < 0.5 * before
    if full:
        assert result.test["coverage"] == 10
