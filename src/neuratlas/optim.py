"""Optimizers and learning-rate schedules, chosen by name from a recipe, with their config sections.

A base module (it imports no other part of Neuratlas but errors and config), so tasks can build their own
optimizers with :func:`build_optimizer` and the trainer, transfer learning and federated clients share it.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from neuratlas.config import check_range
from neuratlas.errors import NeuratlasError


@dataclass
class OptimizerConfig:
    name: Literal["sgd", "adam", "adamw", "rmsprop", "muon"] = "adamw"  # muon: Muon on hidden matrices + AdamW
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd, rmsprop
    nesterov: bool = False  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw (and muon's AdamW half)
    muon_momentum: float = 0.95  # muon: Nesterov momentum of the hidden matrices' updates
    eps: float = 1e-8
    decay_norm_and_bias: bool = False  # apply weight decay to norm weights and biases too
    fused: bool = True  # sgd/adam/adamw update in one fused kernel (5× faster for small models; speed switch)
    # per-parameter lr multipliers by name glob, first match wins: "backbone.*=0.1" trains a pretrained
    # backbone at a tenth of the head's lr (sgd/adam/adamw/rmsprop)
    lr_mults: str = ""
    # keep frozen parameters (requires_grad False) in the optimizer, so that thawing them later trains them
    # (gradual unfreezing sets it)
    include_frozen: bool = False

    def __post_init__(self) -> None:
        check_range("lr", self.lr, 0)  # 0 is allowed: a run that must not move (a baseline, a check)
        check_range("weight_decay", self.weight_decay, 0)
        check_range("momentum", self.momentum, 0, 1, hi_open=True)
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers, got {self.betas!r}")
        for b in self.betas:
            check_range("betas", b, 0, 1, hi_open=True)
        check_range("muon_momentum", self.muon_momentum, 0, 1, hi_open=True)
        check_range("eps", self.eps, 0, lo_open=True)


@dataclass
class ScheduleConfig:
    name: Literal["constant", "cosine", "step", "onecycle", "linear"] = "cosine"
    warmup_steps: int = 0
    warmup_frac: float = 0.0  # alternative to warmup_steps, as a fraction of all steps
    min_lr_ratio: float = 0.0  # cosine/linear floor as a fraction of the peak lr
    step_size: int = 1000  # step: multiply by gamma every step_size steps
    gamma: float = 0.1
    pct_start: float = 0.25  # onecycle: fraction of steps spent rising
    div_factor: float = 25.0  # onecycle: start at lr / div_factor
    final_div_factor: float = 1e4  # onecycle: end at lr / (div_factor * final_div_factor)

    def __post_init__(self) -> None:
        check_range("warmup_steps", self.warmup_steps, 0)
        check_range("warmup_frac", self.warmup_frac, 0, 1, hi_open=True)
        check_range("min_lr_ratio", self.min_lr_ratio, 0, 1)
        check_range("step_size", self.step_size, 1)
        check_range("gamma", self.gamma, 0, lo_open=True)
        check_range("pct_start", self.pct_start, 0, 1, lo_open=True, hi_open=True)
        check_range("div_factor", self.div_factor, 0, lo_open=True)
        check_range("final_div_factor", self.final_div_factor, 0, lo_open=True)


def param_groups(params: list[nn.Parameter], weight_decay: float, decay_all: bool) -> list[dict]:
    """Weight decay on weight matrices/kernels only; norms, biases and embeddings-as-1-D params are exempt."""
    if decay_all or weight_decay == 0:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """Weights of the model's inner ``nn.Linear`` layers: not its output layer (the last Linear registered)
    and not a Linear tied to an embedding. These are the matrices Muon orthogonalises; Keller Jordan's
    recipe leaves embeddings, the output layer, norms and biases to AdamW."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.weight.requires_grad]
    return [m.weight for m in linears[:-1] if id(m.weight) not in embedded]


def _evaluate(closure):
    """An optimizer's closure recomputes the loss with gradients, even inside a no-grad step."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic: steepest slope at zero, 5 steps suffice


def orthogonalize(updates: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Newton-Schulz iteration towards U·Vᵀ of each matrix's SVD U·S·Vᵀ, in bf16, for a (n, rows, cols)
    batch with rows ≤ cols: one batched product per step for all same-shape matrices of a model."""
    a, b, c = NS_COEFFICIENTS
    x = updates.bfloat16()
    x.mul_(1 / x.norm(dim=(1, 2), keepdim=True).clamp(min=eps))  # spectral norm ≤ Frobenius norm ≤ 1
    eye = torch.eye(x.shape[1], dtype=x.dtype).mul_(a)
    for _ in range(steps):
        gram = x @ x.mT
        # a·x + (b·G + c·G²)·x as one product (a·I + b·G + c·G²)·x: the rows × rows factor is small, and no
        # rows × cols element-wise pass is made (those, not the products, dominated this loop on a CPU)
        x = torch.baddbmm(gram, gram, gram, beta=b, alpha=c).add_(eye) @ x
    return x


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weights: Nesterov momentum, then each update orthogonalised (all its singular values near
    1), so every direction of a matrix moves at the same rate. Matrices of one shape are orthogonalised in
    one batch, which on a CPU is ~3× faster than one at a time. The lr is scaled per matrix by
    0.2·√max(rows, cols) (Moonshot's rule), so the lr and weight decay tuned for AdamW carry over."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95, ns_steps: int = 5):
        params = list(params)
        if any(p.ndim != 2 for p in params):
            raise ValueError("Muon updates 2-D weight matrices only")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "ns_steps": ns_steps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params]
            torch._foreach_lerp_(bufs, grads, 1 - group["momentum"])
            updates = torch._foreach_lerp(grads, bufs, group["momentum"])  # Nesterov
            tall = [u.shape[0] > u.shape[1] for u in updates]
            by_shape: dict[tuple[int, int], list[int]] = {}  # (rows ≤ cols) -> matrices of that shape
            for i, u in enumerate(updates):
                by_shape.setdefault(tuple(sorted(u.shape)), []).append(i)
            lr, wd = group["lr"], group["weight_decay"]
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            for (_, cols), idx in by_shape.items():
                ortho = orthogonalize(
                    torch.stack([updates[i].mT if tall[i] else updates[i] for i in idx]), group["ns_steps"]
                )
                for o, i in zip(ortho, idx):
                    params[i].add_(o.mT if tall[i] else o, alpha=-lr * 0.2 * math.sqrt(cols))
        return loss


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on the hidden matrices, AdamW on every other parameter (one lr and weight decay for both),
    stepped, zeroed, scheduled and checkpointed as one optimizer."""

    def __init__(self, model: nn.Module, cfg: OptimizerConfig):
        matrices = hidden_matrices(model)
        if not matrices:
            raise ValueError("muon: the model has no hidden nn.Linear matrices; use adamw")
        ids = {id(p) for p in matrices}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        self.muon = Muon(matrices, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum)
        groups = [g for g in param_groups(rest, cfg.weight_decay, cfg.decay_norm_and_bias) if g["params"]]
        self.adamw = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=cfg.fused)
        super().__init__([*matrices, *rest], {"lr": cfg.lr})
        self._share_groups()

    def _share_groups(self) -> None:
        """The halves' own group dicts: a scheduler (or the trainer's clock) setting "lr" reaches both."""
        self.param_groups = self.muon.param_groups + self.adamw.param_groups

    def step(self, closure=None):
        loss = _evaluate(closure)
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError("this optimizer state is not a muon one (saved by another optimizer)")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self._share_groups()  # loading made new group dicts


def parse_lr_mults(spec: str) -> list[tuple[str, float]]:
    """``"backbone.*=0.1,fpn.*=0.5"`` → [("backbone.*", 0.1), ("fpn.*", 0.5)]."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        pattern, sep, value = (part.strip() for part in item.partition("="))
        try:
            mult = float(value)
        except ValueError:
            mult = math.nan
        if not (sep and pattern and 0 <= mult < math.inf):  # also refuses "nan" and "inf"
            raise NeuratlasError(
                f"--optimizer.lr_mults: expected GLOB=MULTIPLIER (e.g. 'backbone.*=0.1'), got {item!r}"
            )
        out.append((pattern, mult))
    return out


def lr_mult_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict]:
    """The trainable parameters in optimizer groups: one per lr multiplier (first matching glob wins; the
    rest at 1), each split by :func:`param_groups` for weight decay. A glob that matches nothing is an error."""
    rules = parse_lr_mults(cfg.lr_mults)
    if not rules:  # the groups (and so the checkpoints' optimizer states) of runs without multipliers
        return param_groups(
            [p for p in model.parameters() if p.requires_grad or cfg.include_frozen],
            cfg.weight_decay,
            cfg.decay_norm_and_bias,
        )
    buckets: dict[float, list[nn.Parameter]] = {}
    used = set()
    for name, p in model.named_parameters():
        if not (p.requires_grad or cfg.include_frozen):
            continue
        hit = next(((pat, m) for pat, m in rules if fnmatch.fnmatchcase(name, pat)), None)
        if hit:
            used.add(hit[0])
        buckets.setdefault(hit[1] if hit else 1.0, []).append(p)
    unused = [pat for pat, _ in rules if pat not in used]
    if unused:
        raise NeuratlasError(
            f"--optimizer.lr_mults: {', '.join(unused)} matches no trainable parameter; "
            f"names look like {next((n for n, _ in model.named_parameters()), '?')!r}"
        )
    return [
        {**g, "lr": cfg.lr * mult}
        for mult, ps in buckets.items()
        for g in param_groups(ps, cfg.weight_decay, cfg.decay_norm_and_bias)
        if g["params"]
    ]


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    if cfg.name == "muon":
        if cfg.lr_mults:
            raise NeuratlasError("--optimizer.lr_mults is not supported with muon (its lr scales per matrix)")
        return MuonWithAdamW(model, cfg)
    groups = lr_mult_groups(model, cfg)
    fused = {"fused": True} if cfg.fused else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **fused)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **fused)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, eps=cfg.eps)
    raise ValueError(cfg.name)


def lr_factor(step: int, total: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak lr at ``step`` (0-based) of ``total`` steps."""
    if cfg.name == "onecycle":
        up = max(1, int(cfg.pct_start * total))
        lo, end = 1.0 / cfg.div_factor, 1.0 / (cfg.div_factor * cfg.final_div_factor)
        if step < up:
            return lo + (1 - lo) * (1 - math.cos(math.pi * step / up)) / 2
        t = min(1.0, (step - up) / max(1, total - up))
        return end + (1 - end) * (1 + math.cos(math.pi * t)) / 2
    warmup = cfg.warmup_steps or int(cfg.warmup_frac * total)
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    if cfg.name == "cosine":
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * (1 + math.cos(math.pi * t)) / 2
    if cfg.name == "linear":
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * (1 - t)
    if cfg.name == "step":
        return cfg.gamma ** ((step - warmup) // cfg.step_size)
    return 1.0


def build_scheduler(opt: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, cfg))
