"""Adversarial training as a task on the one trainer: the ``gan`` model (generator + discriminator) with two
optimizers, ``n_critic`` discriminator steps then one generator step per training step.

Losses (``--gan.loss``): ``ns`` — the non-saturating loss of Goodfellow et al. (D: softplus(-D(x)) +
softplus(D(G(z))); G: softplus(-D(G(z)))), ``hinge`` — with a spectrally normalised D (Miyato et al. 2018), and
``wgan-gp`` — the Wasserstein critic with a gradient penalty (Gulrajani et al. 2017), usually with ``n_critic`` 5.

Every step goes through ``trainer.backward`` / ``trainer.optimizer_step``, so gradient clipping, precision,
the weight average, schedules and checkpoints are the trainer's. The noise of step ``i`` is drawn from a
generator seeded by (seed, i), and the real images are the seeded ``TensorBatches``: a run stopped at step k
and resumed ends bit for bit where an uninterrupted run ends.

Quality is measured with a judge: a Neuratlas CNN trained on the same data (once, with the run's own trainer
class; then cached). From its penultimate features we compute the Fréchet distance between generated and real
images of the split (FID's formula in the judge's feature space, so the numbers are comparable between
Neuratlas runs, not with Inception FIDs), the class distribution of the samples, and class coverage: a
generator that has collapsed onto a few modes covers few classes, and the run says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from neuratlas.data import load_dataset
from neuratlas.data.images import ImageSplits
from neuratlas.data.loaders import TensorBatches, seeded_generator
from neuratlas.data.transforms import normalize, random_hflip
from neuratlas.errors import NeuratlasError
from neuratlas.models.checkpoint import read_checkpoint
from neuratlas.models.gan import GANPair
from neuratlas.plotting import pyplot, save_png
from neuratlas.sources import cache_dir
from neuratlas.tasks.base import TASKS, Task, describe_splits

if TYPE_CHECKING:  # the trainer sits above tasks: named for type hints only
    from neuratlas.training.trainer import Trainer

DEFAULT_JUDGE = {"name": "convnet", "channels": [16, 32, 64], "convs_per_stage": 1, "dropout": 0.0}
JUDGE_FORMAT = 2  # part of the judge's cache key: bump when what is cached changes
# salts of the seeded generators (any fixed, distinct numbers): training noise per (step, sub-step), the
# noise of the evaluation samples per split, and the fixed noise of the picture drawn at each evaluation
NOISE_SALT, EVAL_SALT, GRID_SEED = 4099, 6151, 1234
SPLITS = ("val", "test")


@dataclass
class GANTaskConfig:
    """The task spec takes no options: the GAN's own options are its ``gan`` section (``--gan.KEY``)."""


@dataclass
class GANOptions:
    loss: Literal["ns", "hinge", "wgan-gp"] = "ns"
    n_critic: int = 1  # discriminator steps per generator step
    gp_weight: float = 10.0  # wgan-gp
    # the discriminator's optimizer is --optimizer.* (the generator's) with these two changed (TTUR)
    d_lr: float | None = None  # None: --optimizer.lr
    d_betas: tuple[float, float] | None = None  # None: --optimizer.betas
    eval_samples: int = 2000  # generated images scored by the judge at each evaluation
    grid: int = 64  # images in each PNG grid
    judge: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_JUDGE))
    judge_epochs: float = 1.0
    coverage_share: float = 0.25  # a class is covered when it gets ≥ this × its fair share (1/classes)

    def __post_init__(self) -> None:
        if self.n_critic < 1:
            raise ValueError("n_critic must be at least 1")
        if self.eval_samples < 2 or self.grid < 1:
            raise ValueError("eval_samples must be at least 2 (a covariance) and grid at least 1")
        if "name" not in self.judge:
            raise ValueError(f"judge must name a registered classifier, got {self.judge!r}")


@dataclass
class SampleOptions:
    """``neuratlas predict RUN N --seed S --score true``."""

    seed: int = 0
    score: bool = False  # title each image with the judge's class (needs the judge in the cache)


# --- losses ---------------------------------------------------------------------------------------------
def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    if kind == "ns":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return fake.mean() - real.mean()  # wgan-gp: the critic's Wasserstein estimate (penalty added apart)


def generator_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake).mean() if kind == "ns" else -fake.mean()


def gradient_penalty(
    disc: nn.Module, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor | None = None
) -> torch.Tensor:
    """E[(||grad D(x_hat)|| - 1)^2] on interpolates of real and fake images at weights ``eps`` (B, 1, 1, 1),
    uniform at random when not given."""
    if eps is None:
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
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]]  # split -> feature mean and covariance of its images
    floor: float  # Fréchet distance between real validation and real test images: the best one can hope for

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor, batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] (generator output) or uint8 -> (penultimate features, class logits), on the CPU."""
        self.model.eval()
        device = next(self.model.parameters()).device
        feats, logits = [], []
        for i in range(0, len(images), batch):
            x = images[i : i + batch].to(device)
            x = x if x.dtype == torch.uint8 else ((x.float() + 1) / 2).clamp(0, 1)
            f = torch.flatten(self.model.pool(self.model.forward_features(normalize(x, self.mean, self.std))), 1)
            feats.append(f.double().cpu())
            logits.append(self.model.classifier(f).float().cpu())
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


def judge_folder(dataset: str, judge_spec: dict[str, Any], epochs: float) -> Path:
    """The judge's cache folder, keyed by everything that makes it (data set, network, epochs, format)."""
    spec = {"model": judge_spec, "data": dataset, "epochs": epochs, "format": JUDGE_FORMAT}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir("gan-judge", f"{dataset}-{key}")


def cached_judge(dataset: str, judge_spec: dict[str, Any], epochs: float) -> Judge | None:
    """The judge from the cache, or None when it has not been trained on this machine yet."""
    folder = judge_folder(dataset, judge_spec, epochs)
    weights, stats_path = folder / "checkpoints" / "last.safetensors", folder / "real_stats.safetensors"
    if not (weights.is_file() and stats_path.is_file()):
        return None
    stats = load_file(str(stats_path))
    with safe_open(str(stats_path), framework="pt") as f:
        classes = json.loads((f.metadata() or {})["classes"])
    return Judge(
        read_checkpoint(weights).build_model().eval(),
        tuple(stats["mean"].tolist()),
        tuple(stats["std"].tolist()),
        classes,
        float(stats["test_accuracy"]),
        {s: (stats[f"{s}_mu"], stats[f"{s}_sigma"]) for s in SPLITS},
        float(stats["floor"]),
    )


def train_judge(trainer: Trainer, dataset: str, judge_spec: dict[str, Any], epochs: float) -> Judge:
    """Train the judge with the run's own trainer class (same device and precision), score the real
    validation and test images with it, and cache both. The run's random state is left as it was."""
    folder = judge_folder(dataset, judge_spec, epochs)
    tc = trainer.run.trainer
    print(
        f"training the judge classifier for GAN metrics ({judge_spec['name']}, {epochs} epochs; cached in {folder})",
        flush=True,
    )
    run = type(trainer.run).from_dict(
        {
            "model": judge_spec,
            "data": {"name": dataset, "batch_size": 256, "augment": False},
            "task": {"name": "classification"},
            "optimizer": {"name": "adamw", "lr": 4e-3, "weight_decay": 5e-4},
            "schedule": {"name": "onecycle", "pct_start": 0.25},
            "trainer": {
                "epochs": epochs,
                "out_dir": str(folder.parent),
                "run_name": folder.name,
                "progress": tc.progress,
                "loggers": "csv",
                "device": tc.device,
                "precision": tc.precision,
                "num_threads": tc.num_threads,
            },
        }
    )
    cuda = [trainer.device.index or 0] if trainer.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # the judge's trainer seeds the global generators
        judge_trainer = type(trainer)(run)
        result = judge_trainer.fit()
    if trainer.dist.enabled:  # data-parallel: every process trains it together; rank 0's checkpoint is read
        import torch.distributed as dist

        dist.barrier()
    data = judge_trainer.task.data
    model = read_checkpoint(folder / "checkpoints" / "last.safetensors").build_model().eval()
    judge = Judge(model, data.mean, data.std, data.classes, result.test["accuracy"], {}, 0.0)
    tensors = {
        "test_accuracy": torch.tensor(result.test["accuracy"]),
        "mean": torch.tensor(data.mean),
        "std": torch.tensor(data.std),
    }
    for split, images in (("val", data.val[0]), ("test", data.test[0])):
        mu, sigma = feature_stats(judge.features_and_logits(images)[0])
        tensors[f"{split}_mu"], tensors[f"{split}_sigma"] = mu, sigma
    tensors["floor"] = torch.tensor(
        frechet_distance(tensors["val_mu"], tensors["val_sigma"], tensors["test_mu"], tensors["test_sigma"])
    )
    path = folder / "real_stats.safetensors"
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"classes": json.dumps(list(data.classes))})
    os.replace(tmp, path)  # atomic: a judge is either cached whole or not at all
    cached = cached_judge(dataset, judge_spec, epochs)
    assert cached is not None
    return cached


@torch.no_grad()
def score_samples(
    judge: Judge, images: torch.Tensor, split: str = "test", coverage_share: float = 0.25
) -> tuple[dict[str, float], list[float]]:
    """Fréchet distance to the real images of ``split``, class coverage, class-distribution entropy and judge
    score; and the share of the samples the judge puts in each class."""
    feats, logits = judge.features_and_logits(images)
    mu, sigma = feature_stats(feats)
    probs = logits.softmax(-1)
    k = probs.shape[1]
    share = torch.bincount(probs.argmax(-1), minlength=k).float() / len(images)
    entropy = -(share[share > 0] * share[share > 0].log()).sum() / math.log(k)
    p_y = probs.mean(0, keepdim=True)
    kl = (probs * (probs.clamp_min(1e-12).log() - p_y.clamp_min(1e-12).log())).sum(1).mean()
    metrics = {
        "fd": frechet_distance(mu, sigma, *judge.stats[split]),
        "coverage": float((share >= coverage_share / k).sum()),
        "class_entropy": max(0.0, float(entropy)),
        "judge_score": float(kl.exp()),
        "confidence": float(probs.max(1).values.mean()),
    }
    return metrics, share.tolist()


# --- pictures -----------------------------------------------------------------------------------------
def save_grid(images: torch.Tensor, path: Path, title: str = "", labels: list[str] | None = None) -> Path:
    """Images in [-1, 1] (N, C, H, W) as one PNG grid."""
    plt = pyplot()
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
    # fixed margins rather than tight_layout, which measured most of the time of a small grid
    fig.subplots_adjust(
        left=0.01,
        right=0.99,
        bottom=0.01,
        top=1 - (0.4 if title else 0.05) / fig.get_figheight(),
        wspace=0.05,
        hspace=0.3 if labels else 0.05,
    )
    return save_png(fig, path, dpi=100)


def generator_of(model: nn.Module) -> nn.Module:
    """The generator of a ``gan`` pair (or a generator checkpointed alone)."""
    gen = model.generator if isinstance(model, GANPair) else model
    if not hasattr(gen, "sample"):
        raise NeuratlasError(f"a {getattr(model, 'model_name', type(model).__name__)} is not a GAN generator")
    return gen


@torch.no_grad()
def generate(
    generator: nn.Module, n: int, rng: torch.Generator, autocast: AbstractContextManager | None = None, batch: int = 500
) -> torch.Tensor:
    """``n`` images (float32, CPU) from noise drawn with ``rng``, in batches."""
    device = next(generator.parameters()).device
    out = []
    for i in range(0, n, batch):
        z = torch.randn(min(batch, n - i), generator.config.latent_dim, generator=rng).to(device)
        if autocast is None:
            out.append(generator(z).float().cpu())
        else:
            with autocast:
                out.append(generator(z).float().cpu())
    return torch.cat(out)


# --- the task ---------------------------------------------------------------------------------------------
class GANTask(Task):
    Config = GANTaskConfig
    metric = "fd"
    higher_is_better = False
    sections = {"gan": GANOptions}
    gan: GANOptions
    PredictOptions = SampleOptions

    def __init__(
        self,
        cfg: GANTaskConfig,
        data_spec: dict[str, Any],
        seed: int = 0,
        sections: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(cfg, data_spec, seed, sections)
        self.data: ImageSplits = load_dataset(data_spec)
        c, h, w = self.data.shape
        if h != w:
            raise NeuratlasError(f"the GAN generators make square images; {data_spec['name']} has {h}×{w}")
        dc = self.data.cfg
        if dc.augment and (dc.crop_padding or dc.erase):
            raise NeuratlasError(
                "a GAN learns whatever its real images show, shifts and erased patches included: "
                "use --data.augment false, or only mirror images (--data.crop_padding 0 "
                "--data.erase 0)"
            )
        self.train_batches = TensorBatches(
            self.data.train, dc.batch_size, seed=seed, transform=self._mirror if dc.augment and dc.hflip else None
        )
        self.batch_size = self.train_batches.batch_size
        self.judge: Judge | None = None
        self.trainer: Trainer | None = None
        self.shares: dict[str, list[float]] = {}  # split -> class shares of the last evaluation's samples
        self.last_grid: Path | None = None

    @staticmethod
    def _mirror(batch: tuple[torch.Tensor, ...], g: torch.Generator) -> tuple[torch.Tensor, ...]:
        return (random_hflip(batch[0], g), *batch[1:])

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_batches) // self.gan.n_critic

    def model_defaults(self) -> dict[str, Any]:
        c, h, _ = self.data.shape
        return {"in_chans": c, "img_size": h}

    # --- set-up ---------------------------------------------------------------------------------------
    def configure_optimizers(self, model: nn.Module, run: Any) -> list[torch.optim.Optimizer]:
        """[the generator's optimizer (``--optimizer.*``), the discriminator's (the same with ``--gan.d_lr``,
        ``--gan.d_betas``)]. Options that cannot apply to two networks trained in turn are refused here."""
        if not isinstance(model, GANPair):
            raise NeuratlasError(
                f"the gan task trains a 'gan' model (a generator and a discriminator), not "
                f"{getattr(model, 'model_name', type(model).__name__)!r}"
            )
        refused = [
            (
                run.trainer.grad_accum > 1,
                "--trainer.grad_accum: a GAN step already spans n_critic batches; raise --data.batch_size instead",
            ),
            (bool(run.optimizer.lr_mults), "--optimizer.lr_mults: set the discriminator's rate with --gan.d_lr"),
            (
                run.transfer.lr_decay != 1 or run.transfer.unfreeze_every or run.transfer.lora_rank,
                "--transfer.lr_decay / unfreeze_every / lora_rank: a GAN has no layer groups or linear layers to "
                "adapt (--transfer.checkpoint and --transfer.freeze apply)",
            ),
            (
                self.gan.loss == "wgan-gp" and getattr(model.discriminator.config, "norm", "") == "batch",
                "wgan-gp penalises per-sample gradients, which batch norm mixes: give the discriminator norm "
                "'none' (or 'spectral')",
            ),
            (
                self.gan.loss == "wgan-gp" and run.trainer.compile,
                "--trainer.compile: the gradient penalty differentiates twice, which compiled modules do not",
            ),
        ]
        for refuse, why in refused:
            if refuse:
                raise NeuratlasError(f"the gan task refuses {why}")
        oc = run.optimizer
        d_opt = dataclasses.replace(
            oc,
            lr=self.gan.d_lr if self.gan.d_lr is not None else oc.lr,
            betas=self.gan.d_betas if self.gan.d_betas is not None else oc.betas,
        )
        return [
            super().configure_optimizers(model.generator, run)[0],
            super().configure_optimizers(model.discriminator, dataclasses.replace(run, optimizer=d_opt))[0],
        ]

    def setup(self, trainer: Trainer) -> None:
        """The judge (trained once, then from the cache) and, with ``--trainer.compile``, compiled networks."""
        self.trainer = trainer
        pair = trainer.model
        self.nets = (pair.generator, pair.discriminator)
        if trainer.run.trainer.compile:
            self.nets = (torch.compile(pair.generator), torch.compile(pair.discriminator))
        gc, name = self.gan, self.data_spec["name"]
        self.judge = cached_judge(name, gc.judge, gc.judge_epochs) or train_judge(
            trainer, name, gc.judge, gc.judge_epochs
        )
        self.judge.model.to(trainer.device)

    # --- training -------------------------------------------------------------------------------------
    def _real(self, index: int) -> torch.Tensor:
        x = self.train_batches.get(index)[0]
        return x.float().div_(127.5).sub_(1)  # uint8 -> [-1, 1], the generator's range

    def _noise(self, trainer: Trainer, n: int, rng: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, trainer.model.latent_dim, generator=rng)
        return trainer.dist.shard(z).to(self.device)

    def train_step(self, trainer: Trainer, index: int) -> dict[str, float]:
        """``n_critic`` discriminator steps on batches ``index·n_critic + k``, then one generator step. The
        noise (and the penalty's interpolation weights) of sub-step k come from a generator seeded by
        (seed, index, k), the global batch of it drawn before each process keeps its slice."""
        gc = self.gan
        gen, disc = self.nets
        opt_g, opt_d = trainer.optimizers
        logs: dict[str, float] = {}
        for k in range(gc.n_critic):
            rng = seeded_generator(self.seed, NOISE_SALT, index, k)
            real_all = self._real(index * gc.n_critic + k)
            n = len(real_all)
            real = trainer.dist.shard(real_all).to(self.device, memory_format=self.memory_format)
            z = self._noise(trainer, n, rng)
            with trainer.autocast():
                with torch.no_grad():
                    fake = gen(z)
                d_real, d_fake = disc(real).float(), disc(fake).float()
                d_loss = discriminator_loss(gc.loss, d_real, d_fake)
            if gc.loss == "wgan-gp":
                eps = trainer.dist.shard(torch.rand(n, 1, 1, 1, generator=rng)).to(self.device)
                d_loss = d_loss + gc.gp_weight * gradient_penalty(disc, real, fake.float(), eps)
            trainer.backward(d_loss, f"discriminator step {k}")
            self._average_gradients(trainer, disc)
            logs.update({f"d_{key}": v for key, v in trainer.optimizer_step(opt_d, disc.parameters()).items()})
        z = self._noise(trainer, n, seeded_generator(self.seed, NOISE_SALT, index, gc.n_critic))
        trainable = [p for p in disc.parameters() if p.requires_grad]
        for p in trainable:  # the generator's step leaves the discriminator's gradients alone
            p.requires_grad_(False)
        try:
            with trainer.autocast():
                g_loss = generator_loss(gc.loss, disc(gen(z)).float())
            trainer.backward(g_loss, "generator step")
        finally:
            for p in trainable:
                p.requires_grad_(True)
        self._average_gradients(trainer, gen)
        logs.update({f"g_{key}": v for key, v in trainer.optimizer_step(opt_g, gen.parameters()).items()})
        return {
            "loss": d_loss.item(),
            "g_loss": g_loss.item(),
            "d_real": d_real.mean().item(),
            "d_fake": d_fake.mean().item(),
            **logs,
        }

    @staticmethod
    def _average_gradients(trainer: Trainer, net: nn.Module) -> None:
        """Data-parallel runs: average the gradients across processes. The networks are called directly
        (one at a time, each step leaving the other's parameters unused), not through the DDP wrapper, so
        the reduction is made here, one all-reduce per parameter with a gradient."""
        if not trainer.dist.enabled:
            return
        import torch.distributed as dist

        for p in net.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(trainer.dist.world)

    # --- evaluation -----------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, split: str, autocast: AbstractContextManager) -> dict[str, float]:
        """The judge's figures for ``gan.eval_samples`` images (fixed noise per split) against the real images
        of ``split``; at a validation the picture of the step is written to ``RUN/samples/``."""
        if split not in SPLITS:
            raise NeuratlasError(f"the gan task scores 'val' or 'test' (generated against real images), not {split!r}")
        if self.judge is None:
            raise NeuratlasError("the gan task evaluates with its judge, made in setup(trainer)")
        gen = generator_of(model)
        rng = seeded_generator(self.seed, EVAL_SALT, SPLITS.index(split))
        images = generate(gen, self.gan.eval_samples, rng, autocast)
        metrics, self.shares[split] = score_samples(self.judge, images, split, self.gan.coverage_share)
        trainer = self.trainer
        if split == "val" and trainer is not None and trainer.dist.is_main and trainer.run_dir.is_dir():
            grid = generate(gen, self.gan.grid, torch.Generator().manual_seed(GRID_SEED), autocast)
            self.last_grid = save_grid(
                grid,
                trainer.run_dir / "samples" / f"step_{trainer.step:06d}.png",
                f"step {trainer.step}: Fréchet distance {metrics['fd']:.1f}, coverage "
                f"{metrics['coverage']:.0f}/{len(self.judge.classes)}",
            )
        return metrics

    def describe(self, metrics: dict[str, float], split: str = "test") -> list[str]:
        """Lines that put the figures in context: the real-vs-real floor, the class distribution, collapse."""
        assert self.judge is not None
        classes, m = self.judge.classes, metrics
        shares = ", ".join(f"{c} {s:.0%}" for c, s in zip(classes, self.shares.get(split, [])))
        lines = [
            f"Fréchet distance (judge features) {m['fd']:.2f}  (real val vs real test: {self.judge.floor:.2f}; "
            f"judge test accuracy {self.judge.test_accuracy:.3f})",
            f"class coverage {m['coverage']:.0f}/{len(classes)}, class entropy {m['class_entropy']:.3f}, "
            f"judge score {m['judge_score']:.2f}",
            f"class distribution: {shares}",
        ]
        if m["coverage"] < len(classes):
            lines.append(f"MODE COLLAPSE: only {m['coverage']:.0f} of {len(classes)} classes are generated")
        return lines

    def on_fit_end(self, trainer: Trainer, result: Any) -> None:
        result.notes.extend(self.describe(result.test, "test"))
        if self.last_grid is not None:
            result.notes.append(f"samples: {self.last_grid}")

    def checkpoint_extra(self) -> dict[str, Any]:
        c, h, w = self.data.shape
        return {
            "dataset": self.data_spec["name"],
            "classes": self.data.classes,
            "input_shape": [c, h, w],
            "judge": self.gan.judge,
            "judge_epochs": self.gan.judge_epochs,
        }

    def describe_data(self) -> str:
        return describe_splits(self.data_spec["name"], self.data)

    def example_inputs(self, folder: Path) -> tuple[list[str], dict[str, str]]:
        return ["4"], {"seed": "1"}

    # --- sampling: what `neuratlas predict RUN N` does -------------------------------------------------------
    @classmethod
    def predict(
        cls, model: nn.Module, extra: dict[str, Any], inputs: list[str], out_dir: str, opts: SampleOptions
    ) -> list[str]:
        """Draw N images (the one input) from the generator into ``OUT/samples.png``; ``--seed S`` picks the
        noise, ``--score true`` titles each image with the class the judge sees in it."""
        if len(inputs) != 1 or not inputs[0].isdigit() or int(inputs[0]) < 1:
            raise NeuratlasError(
                f"predict on a GAN run takes one input, the number of images to draw (e.g. "
                f"`neuratlas predict RUN 64`), got {' '.join(inputs)!r}"
            )
        n = int(inputs[0])
        gen = generator_of(model).eval()
        images = generate(gen, n, torch.Generator().manual_seed(opts.seed))
        labels = None
        if opts.score:
            judge = (
                cached_judge(
                    extra.get("dataset", ""), extra.get("judge", DEFAULT_JUDGE), extra.get("judge_epochs", 1.0)
                )
                if extra.get("dataset")
                else None
            )
            if judge is None:
                raise NeuratlasError(
                    "--score needs the run's judge classifier, which is not in the cache on this "
                    "machine; `neuratlas eval RUN` trains it once"
                )
            labels = [judge.classes[i] for i in judge.features_and_logits(images)[1].argmax(-1).tolist()]
        path = save_grid(images, Path(out_dir) / "samples.png", f"{n} samples, seed {opts.seed}", labels)
        return [f"wrote {n} samples (seed {opts.seed}) to {path}"]


TASKS.add(
    "gan",
    GANTask,
    GANTaskConfig,
    description="adversarial training of a 'gan' pair; Fréchet distance and class coverage by a judge CNN",
)
