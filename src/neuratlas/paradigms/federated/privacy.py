"""Differential privacy of federated rounds: each client clips its update, the server adds Gaussian noise to
the mean, and an accountant says how much privacy the rounds so far have spent.

The mechanism is DP-FedAvg with client-level privacy (McMahan et al. 2018): a sampled client's change
``Δ = w_client − w_global`` is clipped to L2 norm ``C`` on the client (so it holds under secure aggregation,
where the server never sees one update), the server averages the clipped changes with the fixed denominator
``m`` (the clients sampled that round, uniform weights: a sample-weighted mean would let one client move the
mean by more than ``C/m``) and adds N(0, (zC/m)²) per coordinate. One round is then the sampled Gaussian
mechanism with noise multiplier ``z`` and sampling rate ``q = m / clients``.

The accountant is Rényi DP (Mironov 2017) for the sampled Gaussian mechanism, computed at integer orders
(Mironov, Talwar and Zhang 2019, §3.3), composed over rounds by addition and converted to (ε, δ) with the
conversion of Canonne, Kamath and Steinke (2020, Prop. 12), the one TensorFlow Privacy and Opacus use.
Caveat, shared with those libraries: the analysis assumes Poisson sampling with rate ``q``, while the rounds
sample exactly ``m`` clients without replacement.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

Weights = list[np.ndarray]

# Integer Rényi orders: the optimum for the budgets federated runs reach (ε ≈ 0.5 to 100) lies in 2..64;
# the large ones serve tiny sampling rates and very noisy rounds.
ORDERS: tuple[int, ...] = (*range(2, 65), 80, 96, 128, 160, 192, 256, 384, 512)


def clip_update(global_w: Weights, client_w: Weights, clip: float) -> tuple[Weights, float]:
    """``global + Δ·min(1, clip/‖Δ‖)`` with ``Δ = client − global`` (the L2 norm over every tensor), and
    ``‖Δ‖``. What a client applies before it sends its weights; Flower's ``fixedclipping_mod`` computes the
    same (``flwr.supercore.differential_privacy.compute_clip_model_update``)."""
    delta = [np.asarray(c, dtype=np.float64) - g for c, g in zip(client_w, global_w)]
    norm = math.sqrt(sum(float((d**2).sum()) for d in delta))
    scale = min(1.0, clip / max(norm, 1e-12))
    return [(g + d * scale).astype(np.asarray(c).dtype) for g, d, c in zip(global_w, delta, client_w)], norm


def add_noise(mean: Weights, noise: float, clip: float, sampled: int, seed: int) -> Weights:
    """``mean`` plus N(0, (noise·clip/sampled)²) per coordinate (the sensitivity of a fixed-denominator mean
    of ``sampled`` updates clipped to ``clip`` is ``clip/sampled``)."""
    std = noise * clip / max(sampled, 1)
    gen = np.random.default_rng(seed)
    return [w + gen.normal(0.0, std, w.shape).astype(w.dtype) for w in mean]


def _log_add(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi if lo == -math.inf else hi + math.log1p(math.exp(lo - hi))


def rdp_sampled_gaussian(q: float, noise: float, order: int) -> float:
    """RDP at integer ``order`` ≥ 2 of one step of the Gaussian mechanism with noise multiplier ``noise``
    applied to a Poisson sample at rate ``q``: ``log A_α / (α − 1)`` with
    ``A_α = Σ_i C(α,i) q^i (1−q)^(α−i) exp((i² − i)/(2σ²))`` (Mironov et al. 2019, eq. 3.3 for integer α)."""
    if not 0 <= q <= 1:
        raise ValueError(f"sampling rate must be in [0, 1], got {q}")
    if int(order) != order or order < 2:
        raise ValueError(f"the order must be an integer ≥ 2, got {order}")
    if q == 0:
        return 0.0
    if noise <= 0:
        return math.inf
    if q == 1:
        return order / (2 * noise**2)
    log_a = -math.inf
    for i in range(order + 1):
        log_coef = math.lgamma(order + 1) - math.lgamma(i + 1) - math.lgamma(order - i + 1)
        term = log_coef + i * math.log(q) + (order - i) * math.log1p(-q) + (i * i - i) / (2 * noise**2)
        log_a = _log_add(log_a, term)
    return log_a / (order - 1)


def rdp(q: float, noise: float, steps: int, orders: Iterable[int] = ORDERS) -> list[float]:
    """RDP of ``steps`` composed rounds at each order (composition adds)."""
    return [steps * rdp_sampled_gaussian(q, noise, a) for a in orders]


def eps_from_rdp(orders: Sequence[float], rdps: Sequence[float], delta: float) -> tuple[float, float]:
    """The smallest ε over the orders such that the mechanism is (ε, δ)-DP, and the order that gives it:
    ``ε = r + log(1 − 1/α) − log(δα)/(α − 1)`` (Canonne, Kamath, Steinke 2020)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    best, best_order = math.inf, math.nan
    for a, r in zip(orders, rdps):
        if math.isinf(r):
            continue
        if delta**2 + math.expm1(-r) >= 0:  # KL bound: delta ≥ sqrt(1 − exp(−r)) means ε = 0 suffices
            eps = 0.0
        else:
            eps = r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1)
        if eps < best:
            best, best_order = max(eps, 0.0), float(a)
    return best, best_order


def epsilon_spent(q: float, noise: float, rounds: int, delta: float) -> float:
    """ε at ``delta`` after ``rounds`` rounds of DP-FedAvg with client sampling rate ``q`` and noise
    multiplier ``noise`` (``inf`` without noise)."""
    if rounds <= 0:
        return 0.0
    if noise <= 0:
        return math.inf
    return eps_from_rdp(ORDERS, rdp(q, noise, rounds), delta)[0]


def gaussian_delta(eps: float, mu: float) -> float:
    """The exact δ(ε) of the Gaussian mechanism with sensitivity/σ = ``mu`` (Balle and Wang 2018, Thm 8):
    ``Φ(μ/2 − ε/μ) − e^ε Φ(−μ/2 − ε/μ)``; ``rounds`` full-participation rounds compose to ``mu = √rounds/z``.
    The closed form the accountant's bound is checked against."""

    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2))

    return phi(mu / 2 - eps / mu) - math.exp(eps) * phi(-mu / 2 - eps / mu)
