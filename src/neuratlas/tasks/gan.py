"""Adversarial training: a generator and a discriminator with two optimizers, so not one ``Trainer.fit``.

Losses: ``ns`` — the non-saturating loss of Goodfellow et al. (D: softplus(-D(x)) + softplus(D(G(z))); G:
softplus(-D(G(z)))), ``hinge`` — with a spectrally normalised D (Miyato et al. 2018), and ``wgan-gp`` — the
Wasserstein critic with a gradient penalty (Gulrajani et al. 2017), usually with ``n_critic`` 5.

Quality is measured with a judge: a Neuratlas CNN trained on the same data (once, then cached). From its
penultimate features we compute the Fréchet distance between generated and real test images (FID's formula in
the judge's feature space, so the numbers are comparable between Neuratlas runs, not with Inception FIDs),
the class distribution of the samples, and class coverage: a generator that has collapsed onto a few modes
covers few classes, and the run says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from neuratlas.config import build_config, coerce, field_types, to_dict, unknown_key_error
from neuratlas.data import load_dataset
from neuratlas.data.loaders import TensorBatches
from neuratlas.data.transforms import normalize
from neuratlas.device import autocast, resolve_device, resolve_precision
from neuratlas.errors import NeuratlasError
from neuratlas.models import count_parameters, create_model
from neuratlas.models.checkpoint import read_checkpoint, save_state, save_weights
from neuratlas.optim import OptimizerConfig, build_optimizer
from neuratlas.sources import cache_dir
from neuratlas.training.config import TrainerConfig
from neuratlas.training.logging import RunLogger, plot_curves

DEFAULT_JUDGE = {"name": "convnet", "channels": [16, 32, 64], "convs_per_stage": 1, "dropout": 0.0}


@dataclass
class GANConfig:
    loss: str = "ns"  # ns | hinge | wgan-gp
    n_critic: int = 1  # discriminator steps per generator step
    gp_weight: float = 10.0  # wgan-gp
    eval_samples: int = 2000  # generated images scored by the judge at each evaluation
    grid: int = 64  # images in each PNG grid
    judge: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_JUDGE))
    judge_epochs: float = 1.0
    coverage_share: float = 0.25  # a class is covered when it gets ≥ this × its fair share (1/classes)

    def __post_init__(self) -> None:
        if self.loss not in ("ns", "hinge", "wgan-gp"):
            raise ValueError(f"unknown GAN loss {self.loss!r}; choose ns, hinge or wgan-gp")
        if self.n_critic < 1:
            raise ValueError("n_critic must be at least 1")


@dataclass
class GANRunConfig:
    generator: dict[str, Any]
    discriminator: dict[str, Any]
    data: dict[str, Any]
    gan: GANConfig = field(default_factory=GANConfig)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig("adam", 2e-4, betas=(0.5, 0.999)))
    d_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig("adam", 2e-4, betas=(0.5, 0.999)))
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], overrides: dict[str, str] | None = None) -> GANRunConfig:
        d = json.loads(json.dumps(d))  # a deep copy
        for key, value in (overrides or {}).items():
            section, _, name = key.partition(".")
            types = field_types(cls)
            if section not in types or not name:
                raise NeuratlasError(f"override --{key}: unknown section {section!r}; sections are "
                                     f"{', '.join(types)}")
            if section in ("generator", "discriminator", "data"):
                d[section][name] = value  # checked by the model / data registries
            else:
                sub = field_types(types[section])
                if name not in sub:
                    raise unknown_key_error(name, list(sub), section)
                d.setdefault(section, {})[name] = coerce(value, sub[name], f"--{key}")
        return build_config(cls, d, where="GAN recipe")


# --- losses ---------------------------------------------------------------------------------------------
def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    if kind == "ns":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return fake.mean() - real.mean()  # wgan-gp: the critic's Wasserstein estimate (penalty added apart)


def generator_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake).mean() if kind == "ns" else -fake.mean()


def gradient_penalty(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """E[(||grad D(x_hat)|| - 1)^2] on random interpolates of real and fake images."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(disc(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


# --- the judge: a classifier trained on the same data -------------------------------------------------
@dataclass
class Judge:
    model: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    test_accuracy: float
    real_mu: torch.Tensor  # feature statistics of the real test images
    real_sigma: torch.Tensor
    floor: float  # Fréchet distance between real validation and real test images: the best one can hope for

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor, batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] (generator output) or uint8 -> (penultimate features, class logits)."""
        self.model.eval()
        feats, logits = [], []
        for i in range(0, len(images), batch):
            x = images[i:i + batch]
            x = x if x.dtype == torch.uint8 else ((x.float() + 1) / 2).clamp(0, 1)
            f = torch.flatten(self.model.pool(self.model.forward_features(normalize(x, self.mean, self.std))), 1)
            feats.append(f.double())
            logits.append(self.model.classifier(f).float())
        return torch.cat(feats), torch.cat(logits)


def feature_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return feats.mean(0), torch.cov(feats.T)


def frechet_distance(mu1: torch.Tensor, s1: torch.Tensor, mu2: torch.Tensor, s2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), the trace term via the symmetric form
    tr((S1^1/2 S2 S1^1/2)^1/2), whose eigenvalues are real and non-negative."""
    vals, vecs = torch.linalg.eigh(s1.double())
    root1 = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    mid = torch.linalg.eigvalsh(root1 @ s2.double() @ root1).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * mid)


def load_judge(data_spec: dict[str, Any], judge_spec: dict[str, Any], epochs: float, progress: bool = True) -> Judge:
    """Train (once; then read from the cache) the classifier whose features score generated images."""
    from neuratlas.training.config import RunConfig
    from neuratlas.training.trainer import Trainer

    spec = {"model": judge_spec, "data": {"name": data_spec["name"], "batch_size": 256, "augment": False},
            "epochs": epochs}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir("gan-judge", f"{data_spec['name']}-{key}")
    weights, stats_path = folder / "checkpoints" / "last.safetensors", folder / "real_stats.safetensors"
    data = load_dataset({"name": data_spec["name"], "augment": False})
    if not (weights.is_file() and stats_path.is_file()):
        print(f"training the judge classifier for GAN metrics ({judge_spec['name']}, {epochs} epochs; cached "
              f"in {folder})", flush=True)
        run = RunConfig.from_dict({
            "model": judge_spec, "data": spec["data"], "task": {"name": "classification"},
            "optimizer": {"name": "adamw", "lr": 4e-3, "weight_decay": 5e-4},
            "schedule": {"name": "onecycle", "pct_start": 0.25},
            "trainer": {"epochs": epochs, "out_dir": str(folder.parent), "run_name": folder.name,
                        "progress": progress, "tensorboard": False}})
        result = Trainer(run).fit()
        judge = Judge(read_checkpoint(weights).build_model(), data.mean, data.std, data.classes,
                      result.test["accuracy"], torch.zeros(1), torch.zeros(1), 0.0)
        real, _ = judge.features_and_logits(data.test[0])
        val, _ = judge.features_and_logits(data.val[0])
        mu, sigma = feature_stats(real)
        floor = frechet_distance(*feature_stats(val), mu, sigma)
        save_file({"mu": mu, "sigma": sigma, "floor": torch.tensor(floor),
                   "test_accuracy": torch.tensor(result.test["accuracy"])}, str(stats_path))
    stats = load_file(str(stats_path))
    return Judge(read_checkpoint(weights).build_model(), data.mean, data.std, data.classes,
                 float(stats["test_accuracy"]), stats["mu"], stats["sigma"], float(stats["floor"]))


@torch.no_grad()
def score_samples(judge: Judge, images: torch.Tensor, coverage_share: float = 0.25) -> dict[str, float]:
    """Fréchet distance to the real test set, class coverage, class-distribution entropy, judge score."""
    feats, logits = judge.features_and_logits(images)
    mu, sigma = feature_stats(feats)
    probs = logits.softmax(-1)
    k = probs.shape[1]
    share = torch.bincount(probs.argmax(-1), minlength=k).float() / len(images)
    entropy = -(share[share > 0] * share[share > 0].log()).sum() / math.log(k)
    p_y = probs.mean(0, keepdim=True)
    kl = (probs * (probs.clamp_min(1e-12).log() - p_y.clamp_min(1e-12).log())).sum(1).mean()
    out = {"fd": frechet_distance(mu, sigma, judge.real_mu, judge.real_sigma),
           "coverage": float((share >= coverage_share / k).sum()), "class_entropy": max(0.0, float(entropy)),
           "judge_score": float(kl.exp()), "confidence": float(probs.max(1).values.mean())}
    out.update({f"share_{i}": float(s) for i, s in enumerate(share)})
    return out


# --- pictures -----------------------------------------------------------------------------------------
def save_grid(images: torch.Tensor, path: Path, title: str = "", labels: list[str] | None = None) -> Path:
    """Images in [-1, 1] (N, C, H, W) as one PNG grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    imgs = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9 + (0.4 if title else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = imgs[i].permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            if labels:
                ax.set_title(labels[i], fontsize=5)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- training -------------------------------------------------------------------------------------------
@dataclass
class GANResult:
    run_dir: Path
    steps: int
    metrics: dict[str, float]
    judge_accuracy: float
    floor: float
    parameters: int
    seconds: float
    mode_collapse: bool


class GANTrainer:
    def __init__(self, run: GANRunConfig) -> None:
        self.run = run
        tc, gc = run.trainer, run.gan
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        torch.manual_seed(tc.seed)
        self.data = load_dataset(run.data)
        c, h, w = self.data.shape
        if h != w:
            raise NeuratlasError(f"DCGAN needs square images; {run.data['name']} has {h}×{w}")
        self.G = create_model(**{"in_chans": c, "img_size": h, **run.generator})
        self.D = create_model(**{"in_chans": c, "img_size": h, **run.discriminator})
        if gc.loss == "wgan-gp" and self.D.config.norm == "batch":
            raise NeuratlasError("wgan-gp penalises per-sample gradients, which batch norm mixes: use "
                                 "--discriminator.norm none (or spectral)")
        self.device = resolve_device(tc.device)
        self.dtype = resolve_precision(tc.precision, self.device)
        self.G.to(self.device)
        self.D.to(self.device)
        self.opt_g = build_optimizer(self.G, run.optimizer)
        self.opt_d = build_optimizer(self.D, run.d_optimizer)
        self.batches = TensorBatches(self.data.train, self.data.cfg.batch_size, seed=tc.seed)
        per_epoch = len(self.batches) // gc.n_critic
        self.total_steps = tc.max_steps or max(1, math.ceil(tc.epochs * per_epoch))
        self.eval_every = tc.eval_every or min(per_epoch, self.total_steps)
        self.fixed_z = torch.randn(gc.grid, self.G.config.latent_dim,
                                   generator=torch.Generator().manual_seed(1234)).to(self.device)
        name = tc.run_name or f"gan-{gc.loss}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.run_dir = Path(tc.out_dir) / name
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.step = 0
        self.judge: Judge | None = None

    def _real(self, index: int) -> torch.Tensor:
        x = self.batches.get(index)[0].to(self.device)
        return x.float().div_(127.5).sub_(1)  # uint8 -> [-1, 1], the generator's range

    def train_step(self) -> dict[str, float]:
        gc = self.run.gan
        ctx = autocast(self.device, self.dtype)
        for k in range(gc.n_critic):
            real = self._real(self.step * gc.n_critic + k)
            z = torch.randn(real.shape[0], self.G.config.latent_dim, device=self.device)
            with ctx:
                fake = self.G(z).detach()
                d_real, d_fake = self.D(real).float(), self.D(fake).float()
                d_loss = discriminator_loss(gc.loss, d_real, d_fake)
            if gc.loss == "wgan-gp":
                d_loss = d_loss + gc.gp_weight * gradient_penalty(self.D, real, fake.float())
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
        z = torch.randn(real.shape[0], self.G.config.latent_dim, device=self.device)
        with ctx:
            g_loss = generator_loss(gc.loss, self.D(self.G(z)).float())
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        if not (torch.isfinite(d_loss) and torch.isfinite(g_loss)):
            raise NeuratlasError(f"GAN losses became non-finite at step {self.step} (D {d_loss.item()}, G "
                                 f"{g_loss.item()}); lower the learning rates or use --gan.loss hinge. The last "
                                 f"good checkpoint is in {self.ckpt_dir}")
        self.step += 1
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item(), "d_real": d_real.mean().item(),
                "d_fake": d_fake.mean().item()}

    @torch.no_grad()
    def generate(self, n: int, seed: int = 0) -> torch.Tensor:
        self.G.eval()
        g = torch.Generator().manual_seed(seed)
        out = torch.cat([self.G(torch.randn(min(500, n - i), self.G.config.latent_dim, generator=g)
                                .to(self.device)).float().cpu() for i in range(0, n, 500)])
        self.G.train()
        return out

    def evaluate(self) -> dict[str, float]:
        gc = self.run.gan
        if self.judge is None:
            self.judge = load_judge(self.run.data, gc.judge, gc.judge_epochs, self.run.trainer.progress)
        metrics = score_samples(self.judge, self.generate(gc.eval_samples), gc.coverage_share)
        self.G.eval()
        with torch.no_grad():
            grid = self.G(self.fixed_z).float()
        self.G.train()
        save_grid(grid, self.run_dir / "samples" / f"step_{self.step:06d}.png",
                  f"step {self.step}: Fréchet distance {metrics['fd']:.1f}, coverage "
                  f"{metrics['coverage']:.0f}/{len(self.judge.classes)}")
        return metrics

    def save(self, metrics: dict[str, float]) -> None:
        run = self.run.to_dict()
        extra = {"task": "gan", "metrics": metrics, "dataset": self.run.data["name"],
                 "classes": self.data.classes}
        save_weights(self.ckpt_dir / "generator.safetensors", self.G, run, extra, self.step)
        save_weights(self.ckpt_dir / "discriminator.safetensors", self.D, run, extra, self.step)
        save_state(self.ckpt_dir / "last.state.pt", {"step": self.step, "opt_g": self.opt_g.state_dict(),
                                                       "opt_d": self.opt_d.state_dict(),
                                                       "rng_cpu": torch.get_rng_state()})

    def fit(self) -> GANResult:
        tc = self.run.trainer
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(self.run.to_dict(), indent=2))
        if self.judge is None:  # train/load the judge before the clock starts
            self.judge = load_judge(self.run.data, self.run.gan.judge, self.run.gan.judge_epochs, tc.progress)
        logger = RunLogger(self.run_dir, tc.tensorboard)
        bar = tqdm(total=self.total_steps, disable=not tc.progress, dynamic_ncols=True,
                   desc=f"GAN ({self.run.gan.loss})", leave=False)
        t0, metrics = time.perf_counter(), {}
        try:
            while self.step < self.total_steps:
                logs = self.train_step()
                bar.update(1)
                if self.step % tc.log_every == 0:
                    logger.log(self.step, "train", logs)
                    bar.set_postfix(d=f"{logs['d_loss']:.3f}", g=f"{logs['g_loss']:.3f}")
                out_of_time = tc.time_limit is not None and time.perf_counter() - t0 >= tc.time_limit
                if self.step % self.eval_every == 0 or self.step == self.total_steps or out_of_time:
                    metrics = self.evaluate()
                    logger.log(self.step, "val", {k: v for k, v in metrics.items() if not k.startswith("share_")})
                    self.save(metrics)
                if out_of_time:
                    break
        except KeyboardInterrupt:
            self.save(metrics)
            print(f"\ninterrupted at step {self.step}; the networks are saved in {self.ckpt_dir}")
            raise
        finally:
            bar.close()
            logger.close()
        seconds = time.perf_counter() - t0
        plot_curves(self.run_dir / "metrics.csv", self.run_dir / "curves.png", f"GAN ({self.run.gan.loss})")
        k = len(self.judge.classes)
        result = GANResult(self.run_dir, self.step, metrics, self.judge.test_accuracy, self.judge.floor,
                           count_parameters(self.G) + count_parameters(self.D), seconds,
                           mode_collapse=metrics.get("coverage", 0) < k)
        (self.run_dir / "result.json").write_text(json.dumps(
            {"steps": result.steps, "metrics": metrics, "judge_test_accuracy": result.judge_accuracy,
             "real_floor_fd": result.floor, "mode_collapse": result.mode_collapse, "seconds": seconds}, indent=2))
        return result


def describe(result: GANResult, classes: list[str]) -> list[str]:
    m = result.metrics
    shares = ", ".join(f"{c} {m.get(f'share_{i}', 0):.0%}" for i, c in enumerate(classes))
    lines = [f"Fréchet distance (judge features) {m['fd']:.2f}  (real val vs real test: {result.floor:.2f}; judge "
             f"test accuracy {result.judge_accuracy:.3f})",
             f"class coverage {m['coverage']:.0f}/{len(classes)}, class entropy {m['class_entropy']:.3f}, "
             f"judge score {m['judge_score']:.2f}",
             f"class distribution: {shares}"]
    if result.mode_collapse:
        lines.append(f"MODE COLLAPSE: only {m['coverage']:.0f} of {len(classes)} classes are generated")
    return lines


# A GAN recipe is a valid RunConfig (model = the generator, data, optimizer = the generator's, trainer) plus
# the parts only GANs have, kept here by recipe name: discriminator, gan, d_optimizer.
GAN_PARTS: dict[str, dict[str, Any]] = {}


def gan_config(recipe, overrides: dict[str, str] | None = None) -> GANRunConfig:
    """The full GAN config of ``recipe``; ``--model.*`` overrides address the generator."""
    c = recipe.config
    d = {"generator": c["model"], "data": c["data"], "optimizer": c.get("optimizer", {}),
         "trainer": c.get("trainer", {}), **GAN_PARTS[recipe.name]}
    over = {("generator." + k[6:] if k.startswith("model.") else k): v for k, v in (overrides or {}).items()}
    return GANRunConfig.from_dict(d, over)


def gan_runner(recipe, overrides: dict[str, str]):
    """A recipe runner: train the GAN, print its figures and return the tour row."""
    from neuratlas.tour import TourRow

    run = gan_config(recipe, overrides)
    trainer = GANTrainer(run)
    print(f"training a GAN ({run.gan.loss}) on {run.data['name']} for {trainer.total_steps} steps → "
          f"{trainer.run_dir}", flush=True)
    result = trainer.fit()
    for line in describe(result, trainer.data.classes):
        print("  " + line)
    last = sorted((result.run_dir / "samples").glob("step_*.png"))
    n = [len(s[0]) for s in (trainer.data.train, trainer.data.val, trainer.data.test)]
    return TourRow(recipe.family, recipe.name, f"{run.generator['name']}+{run.discriminator['name']}",
                   f"{run.data['name']} ({n[0]:,}/{n[1]:,}/{n[2]:,})", "Fréchet dist. ↓ (test)",
                   result.metrics["fd"], result.parameters, result.seconds, recipe.target,
                   str(last[-1]) if last else "")
