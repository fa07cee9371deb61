"""Federated learning (splits, update screening, robust aggregation, FedAvg/FedProx/FedAdam simulation on the
task's own training steps, a real Flower deployment on loopback) and data-parallel training (2-process DDP
equals 1 process with the same global batch)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from neuratlas.errors import NeuratlasError
from neuratlas.models import create_model
from neuratlas.paradigms import fit
from neuratlas.paradigms.federated import (
    FederatedConfig,
    ServerAggregator,
    Update,
    aggregate,
    dirichlet_split,
    federated_setup,
    get_weights,
    iid_split,
    local_steps,
    robust_aggregate,
    screen_updates,
    set_weights,
    simulate,
)
from neuratlas.paradigms.federated.core import ATTACKS, check_shapes
from neuratlas.paradigms.federated.privacy import clip_update
from neuratlas.recipes import get_recipe

HAS_FLWR = importlib.util.find_spec("flwr") is not None
HAS_RAY = importlib.util.find_spec("ray") is not None


pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The quick recipe scaled down to run in about a second: a small MLP on scikit-learn's real 8×8 digits
# (1,438 train / 359 test images), 5 IID clients of about 290 images, all of them in each of 3 rounds
SMALL = {
    "model.name": "mlp-tiny",
    "data.name": "digits",
    "data.limit_train": "none",
    "data.batch_size": "16",
    "federated.clients": "5",
    "federated.fraction": "1.0",
    "federated.rounds": "3",
    "federated.alpha": "0",
    "federated.centralised": "false",
    "trainer.progress": "false",
}


def small_run(tmp_path=None, **overrides: str):
    extra = {"trainer.out_dir": str(tmp_path), "trainer.run_name": "fed"} if tmp_path else {}
    return get_recipe("fedavg-fashion-quick").run_config({**SMALL, **extra, **overrides})


def test_iid_split_is_a_partition():
    shards = iid_split(1003, 7, seed=1)
    allidx = np.concatenate(shards)
    assert sorted(allidx.tolist()) == list(range(1003))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_dirichlet_split_properties():
    labels = np.repeat(np.arange(10), 500)
    shards = dirichlet_split(labels, 10, alpha=0.1, seed=0)
    allidx = np.concatenate(shards)
    assert sorted(allidx.tolist()) == list(range(len(labels)))  # a partition: nothing lost, nothing shared
    assert min(map(len, shards)) >= 10
    # small alpha: each client is dominated by few classes; large alpha: close to uniform
    skewed = np.mean([np.bincount(labels[s], minlength=10).max() / len(s) for s in shards])
    flat_shards = dirichlet_split(labels, 10, alpha=100.0, seed=0)
    flat = np.mean([np.bincount(labels[s], minlength=10).max() / len(s) for s in flat_shards])
    assert skewed > 0.5 > 0.2 > flat
    assert [len(s) for s in dirichlet_split(labels, 10, alpha=0.1, seed=0)] == [len(s) for s in shards]
    with pytest.raises(NeuratlasError, match="alpha"):
        dirichlet_split(labels, 10, alpha=0.0)


def test_weighted_aggregation():
    a = [np.ones((2, 2), np.float32), np.zeros(3, np.float32)]
    b = [np.full((2, 2), 4.0, np.float32), np.full(3, 2.0, np.float32)]
    out = aggregate([(a, 30), (b, 10)])
    np.testing.assert_allclose(out[0], 1.75)
    np.testing.assert_allclose(out[1], 0.5)
    assert out[0].dtype == np.float32


def _weights(value: float) -> list[np.ndarray]:
    return [np.full((3, 4), value, np.float32), np.full(2, value, np.float32)]


def test_screening_rejects_bad_updates_by_name():
    g = _weights(0.0)
    honest = [Update(f"h{i}", _weights(0.1 * (i + 1)), 10) for i in range(4)]
    bad = {
        "nan": Update("nan", ATTACKS["nan"](_weights(0.1)), 10),
        "scaled": Update("scaled", ATTACKS["scale"](_weights(0.1)), 10),
        "shape": Update("shape", ATTACKS["shape"](_weights(0.1)), 10),
        "dtype": Update("dtype", [w.astype(np.float64) for w in _weights(0.1)], 10),
        "short": Update("short", _weights(0.1)[:1], 10),
        "liar": Update("liar", _weights(0.1), 10**9),
        "zero": Update("zero", _weights(0.1), 0),
    }
    kept, rejected = screen_updates(g, honest + list(bad.values()), reject_norm=10.0, samples_limit=100)
    assert [u.client for u in kept] == ["h0", "h1", "h2", "h3"]
    reasons = dict(rejected)
    assert set(reasons) == set(bad)
    assert "non-finite" in reasons["nan"] and "median" in reasons["scaled"] and "shape" in reasons["shape"]
    assert "float64" in reasons["dtype"] and "1 tensors" in reasons["short"] and "samples" in reasons["liar"]
    # the norm check needs a median to compare with: with two updates it stays off
    kept, rejected = screen_updates(g, [honest[0], bad["scaled"]], reject_norm=10.0)
    assert len(kept) == 2 and not rejected


def test_robust_aggregators_bound_an_outlier():
    g = _weights(0.0)
    ups = [Update(str(i), _weights(v), 10) for i, v in enumerate([1.0, 2.0, 3.0, 4.0, 1000.0])]
    assert robust_aggregate(g, ups, "median")[0][0, 0] == pytest.approx(3.0)
    assert robust_aggregate(g, ups, "trimmed-mean", trim=0.2)[0][0, 0] == pytest.approx(3.0)
    assert robust_aggregate(g, ups, "mean")[0][0, 0] == pytest.approx(202.0)
    clipped = robust_aggregate(g, ups, "norm-clip")  # every change at most the median norm (that of 3.0)
    assert clipped[0][0, 0] == pytest.approx((1 + 2 + 3 + 3 + 3) / 5, rel=1e-5)
    for how in ("median", "trimmed-mean", "norm-clip"):
        assert robust_aggregate(g, ups, how)[0].dtype == np.float32


def test_fedadam_server_step():
    fed = FederatedConfig(strategy="fedadam", server_lr=0.01, server_tau=1e-3, reject_norm=0)
    server = ServerAggregator(fed)
    g = _weights(0.0)
    new, _ = server(1, g, [Update("0", _weights(0.5), 10)])
    # first step: m = 0.1·d, v = 0.01·d², so each coordinate moves by lr·0.1·d / (0.1·|d| + τ) ≈ lr
    np.testing.assert_allclose(new[0], 0.01 * 0.05 / (0.05 + 1e-3), rtol=1e-5)
    assert new[0].dtype == np.float32


def test_set_weights_rejects_wrong_shapes():
    model = create_model("lenet5", num_classes=10, in_chans=1)
    w = get_weights(model)
    set_weights(model, w)
    bad = [a[..., :1] if a.ndim > 1 else a for a in w]
    with pytest.raises(NeuratlasError, match="first mismatch"):
        check_shapes(model, bad)


def test_dp_fedavg_clips_client_updates():
    g = [np.zeros((3, 4), np.float32), np.zeros(2, np.float32)]
    c = [np.full((3, 4), 2.0, np.float32), np.full(2, 2.0, np.float32)]
    clipped, norm = clip_update(g, c, clip=1.0)
    assert norm == pytest.approx(2.0 * np.sqrt(14))
    assert np.sqrt(sum((w.astype(np.float64) ** 2).sum() for w in clipped)) == pytest.approx(1.0, rel=1e-5)
    same, _ = clip_update(g, c, clip=100.0)  # within the bound: unchanged
    np.testing.assert_allclose(same[0], c[0])


def test_our_clipping_is_flowers_fixedclipping():
    """Clients clip with ``clip_update``; Flower's ``fixedclipping_mod`` clips with
    ``compute_clip_model_update``: the same weights out."""
    pytest.importorskip("flwr")
    from flwr.supercore.differential_privacy import compute_clip_model_update

    rng = np.random.default_rng(0)
    g = [rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=7).astype(np.float32)]
    c = [a + rng.normal(size=a.shape).astype(np.float32) for a in g]
    for clip in (0.5, 100.0):
        theirs = [a.copy() for a in c]
        compute_clip_model_update(theirs, g, clip)
        for a, b in zip(clip_update(g, c, clip)[0], theirs):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_rdp_accountant_reproduces_published_values():
    """The sampled Gaussian mechanism's RDP at integer orders, against the values TensorFlow Privacy's
    ``rdp_accountant_test.py`` checks (q=0.1, z=2, 10 steps, α=5: 0.07737; q=0.01, z=2.5, 50 steps, α = 5,
    50, 100: 0.00218075, 0.023846, 167.416307); without subsampling (q=1) it is α·steps/(2z²)."""
    from neuratlas.paradigms.federated.privacy import rdp

    assert rdp(0.1, 2.0, 10, [5])[0] == pytest.approx(0.07737, abs=1e-5)
    assert rdp(0.01, 2.5, 50, [5, 50, 100]) == pytest.approx([0.00218075, 0.023846, 167.416307], abs=1e-5)
    assert rdp(1.0, 1.3, 7, [2, 9, 40]) == pytest.approx([a * 7 / (2 * 1.3**2) for a in (2, 9, 40)])
    assert rdp(0.0, 1.0, 10, [2]) == [0.0]


@pytest.mark.parametrize("noise,rounds", [(1.0, 1), (1.0, 10), (2.0, 30), (0.8, 5)])
def test_rdp_epsilon_bounds_the_exact_gaussian_epsilon_tightly(noise, rounds):
    """With every client in every round the mechanism is a Gaussian with μ = √rounds/z, whose exact
    δ(ε) has a closed form (Balle and Wang 2018): the accountant's ε must hold (δ(ε) ≤ δ) and be
    within 15% of the exact one."""
    from neuratlas.paradigms.federated.privacy import epsilon_spent, gaussian_delta

    delta, mu = 1e-5, np.sqrt(rounds) / noise
    eps = epsilon_spent(1.0, noise, rounds, delta)
    assert gaussian_delta(eps, mu) <= delta
    lo, hi = 0.0, eps  # bisection for the exact ε
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gaussian_delta(mid, mu) > delta else (lo, mid)
    assert eps <= 1.15 * hi, (eps, hi)


def test_privacy_budget_grows_with_rounds_and_falls_with_noise_and_sampling():
    fed = FederatedConfig(clients=10, fraction=0.5, dp_clip=1.0, dp_noise=1.0)
    eps = [fed.epsilon(r) for r in (1, 5, 30)]
    assert 0 < eps[0] < eps[1] < eps[2]
    assert FederatedConfig(clients=10, fraction=0.5, dp_clip=1.0, dp_noise=2.0).epsilon(30) < eps[2]
    assert FederatedConfig(clients=10, fraction=0.2, dp_clip=1.0, dp_noise=1.0).epsilon(30) < eps[2]
    assert FederatedConfig(dp_clip=1.0).epsilon(3) == float("inf")  # clipping alone promises nothing
    assert FederatedConfig().epsilon(3) is None


def test_dp_mean_has_a_fixed_denominator_and_uniform_weights():
    """Two of the four sampled clients answer, with very different sample counts: the change is the sum of
    their clipped changes over 4, so neither can move the model by more than clip/4."""
    fed = FederatedConfig(dp_clip=1.0, reject_norm=0)
    g = [np.zeros(4, np.float32)]
    ups = [Update("a", [np.array([3.0, 0, 0, 0], np.float32)], 1000), Update("b", [np.full(4, 0.25, np.float32)], 1)]
    new, _ = ServerAggregator(fed)(1, g, ups, sampled=4)
    np.testing.assert_allclose(new[0], (np.array([1.0, 0, 0, 0]) + 0.25) / 4, rtol=1e-6)


def test_dp_run_reports_the_budget_every_round_and_clients_clip(tmp_path, caplog):
    """A DP run (simulation) writes ε at δ per round to history.json and prints it; with noise 0 the global
    model moves by at most the clip per round (each client's change is clipped before the mean)."""
    over = {"federated.dp_clip": "0.5", "federated.dp_noise": "0.7", "federated.fraction": "0.6"}
    with caplog.at_level(logging.WARNING, logger="neuratlas.paradigms.federated"):
        result = fit(small_run(tmp_path, **over), announce=False)
    hist = json.loads((tmp_path / "fed" / "history.json").read_text())
    fed = FederatedConfig(clients=5, fraction=0.6, dp_clip=0.5, dp_noise=0.7)
    assert hist["delta"] == 1e-5 and hist["epsilon"] == pytest.approx([fed.epsilon(r) for r in (1, 2, 3)])
    assert hist["epsilon"][0] < hist["epsilon"][2] and result.test["epsilon"] == pytest.approx(hist["epsilon"][-1])
    assert "round 3: global test accuracy" in caplog.text and "privacy spent ε = " in caplog.text
    run = small_run(**{"federated.dp_clip": "0.5", "federated.rounds": "2"})
    fed, task, model = federated_setup(run)
    seen = [get_weights(model)]
    simulate(fed, task, model, run, progress=False, on_round=lambda r, h, w: seen.append(w))
    for before, after in zip(seen, seen[1:]):
        moved = np.sqrt(sum(((a.astype(np.float64) - b) ** 2).sum() for a, b in zip(after, before)))
        assert 0.3 < moved <= 0.5 + 1e-5


@pytest.mark.parametrize(
    "over,words",
    [
        ({"federated.secure_aggregation": "true", "federated.aggregation": "median"}, "needs every client's own"),
        ({"federated.secure_aggregation": "true", "federated.fraction": "0.2"}, "at least 2 clients per round"),
        ({"federated.dp_noise": "1"}, "dp_noise needs dp_clip > 0"),
        ({"federated.dp_clip": "1", "federated.aggregation": "trimmed-mean"}, "mean of clipped updates"),
        ({"federated.dp_clip": "1", "federated.dp_delta": "0"}, "dp_delta must be in (0, 1)"),
    ],
)
def test_privacy_options_that_cannot_apply_are_refused_in_one_line(over, words):
    with pytest.raises(NeuratlasError) as e:
        small_run(**over).section("federated", FederatedConfig)
    assert words in str(e.value) and "\n" not in str(e.value)


# two Message-API runs of 3 ClientApps in threads: 3.8 s at load average 0.1, 47 s at 10-15 (2 cores)
@pytest.mark.skipif(not HAS_FLWR, reason="pip install 'neuratlas[federated]' (flwr)")
def test_secure_aggregation_gives_fedavgs_model_within_quantisation(tmp_path):
    """SecAgg+ (Flower's secaggplus_mod and SecAggPlusWorkflow) on the Message API with 3 ClientApps: the
    server unmasks only the weighted mean, which equals plain FedAvg's to Flower's quantisation step
    (16/2²² ≈ 3.8·10⁻⁶) after round 1; after round 2 the models score the same."""
    from neuratlas.paradigms.federated.messages import InProcessGrid, make_client_app, serve

    out = {}
    for secure in ("false", "true"):
        run = small_run(**{"federated.clients": "3", "federated.rounds": "2", "federated.secure_aggregation": secure})
        grid = InProcessGrid(make_client_app(), run, clients=3)
        weights: dict[int, list] = {}
        try:
            hist = serve(grid, run, tmp_path / secure, on_round=lambda r, h, w, seen=weights: seen.__setitem__(r, w))
        finally:
            grid.close()
        out[secure] = (weights, hist)
    (plain, h0), (secure, h1) = out["false"], out["true"]
    diff = max(float(np.abs(a - b).max()) for a, b in zip(plain[1], secure[1]))
    assert 0 < diff < 1e-5, diff  # masked and quantised, not a copy of the plain path
    assert h1.accuracy[-1] == pytest.approx(h0.accuracy[-1], abs=0.02) and h1.accuracy[-1] > 0.8
    assert h1.bytes_sent > 0 and h1.rejected == []


def test_federated_recipe_is_a_run_config():
    run = get_recipe("fedavg-fashion-quick").run_config()
    assert run.sections["federated"]["clients"] == 10 and run.optimizer.name == "sgd"
    for bad in (
        {"federated.strategy": "fedsgd"},
        {"federated.fraction": "0"},
        {"federated.rounds": "x"},
        {"federated.nope": "1"},
    ):
        with pytest.raises(NeuratlasError) as e:
            federated_setup(get_recipe("fedavg-fashion-quick").run_config(bad))
        assert "\n" not in str(e.value) and next(iter(bad)).split(".")[1] in str(e.value)


def test_local_steps_use_the_run_optimizer_and_fedprox_keeps_clients_closer():
    """A client's round is the task's own batches and loss with the run's optimizer: changing
    --optimizer.* changes the update; FedProx's term keeps the client nearer the global weights."""
    fed, task, model = federated_setup(small_run())
    x, y = task.data.train
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def trained(run, mu=0.0):
        model.load_state_dict(start)
        local_steps(task, model, run, (x[:256], y[:256]), 2, seed=3, prox_mu=mu)
        return [p.detach().clone() for p in model.parameters()]

    def drift(ws):
        return sum(((p - start[k]) ** 2).sum().item() for (k, _), p in zip(model.named_parameters(), ws))

    sgd = trained(small_run())
    assert all(torch.equal(a, b) for a, b in zip(sgd, trained(small_run())))  # deterministic
    adamw = trained(small_run(**{"optimizer.name": "adamw", "optimizer.lr": "1e-3"}))
    nesterov = trained(small_run(**{"optimizer.nesterov": "true"}))
    assert not all(torch.equal(a, b) for a, b in zip(sgd, adamw))
    assert not all(torch.equal(a, b) for a, b in zip(sgd, nesterov))
    assert drift(trained(small_run(), mu=1.0)) < drift(sgd)


def test_fit_federated_writes_history_every_round_and_a_checkpoint(tmp_path, capsys):
    from neuratlas.cli import main

    result = fit(small_run(tmp_path, **{"federated.rounds": "2", "federated.centralised": "true"}), announce=False)
    run_dir = tmp_path / "fed"
    hist = json.loads((run_dir / "history.json").read_text())
    assert hist["rounds"] == [1, 2] and hist["config"]["federated"]["rounds"] == "2"
    assert result.metric == "accuracy" and result.score == hist["accuracy"][-1] > 0.7
    assert result.test["centralised_accuracy"] > 0.7 and result.steps == 2
    assert (run_dir / "curves.png").is_file() and (run_dir / "result.json").is_file()
    assert any("weights uploaded" in n for n in result.notes)
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--split", "test"]) == 0  # the global model is an ordinary checkpoint
    out = capsys.readouterr().out
    assert f"accuracy {result.score:.4f}" in out


def test_history_is_written_after_every_round(tmp_path):
    fed, task, model = federated_setup(small_run())
    seen = []
    from neuratlas.paradigms.federated.core import write_json

    def on_round(r, hist, weights):
        write_json(tmp_path / "h.json", {"rounds": hist.rounds})
        seen.append(json.loads((tmp_path / "h.json").read_text())["rounds"])

    simulate(fed, task, model, small_run(), progress=False, on_round=on_round)
    assert seen == [[1], [1, 2], [1, 2, 3]]


@pytest.fixture(scope="module")
def honest():
    fed, task, model = federated_setup(small_run())
    return simulate(fed, task, model, small_run(), progress=False)


@pytest.mark.parametrize(
    "attack,aggregation",
    [
        ("nan", "mean"),
        ("scale", "mean"),
        ("shape", "mean"),
        ("scale", "median"),
        ("scale", "trimmed-mean"),
        ("scale", "norm-clip"),
    ],
)
def test_a_poisoned_client_is_rejected_by_name_and_the_model_stays_healthy(attack, aggregation, honest, caplog):
    """Client 2 of 5 sends NaNs, weights ×1e4, or the wrong shapes in every round. Screening rejects it by
    name (or, with screening's norm check off, a robust aggregator bounds it) and the global model ends
    within noise of the honest run, in accuracy and in test loss (the test below shows the loss explode
    when the attack gets through)."""
    screen = "10" if aggregation == "mean" else "0"
    run = small_run(**{"federated.aggregation": aggregation, "federated.reject_norm": screen})
    fed, task, model = federated_setup(run)
    with caplog.at_level(logging.WARNING, logger="neuratlas.paradigms.federated"):
        hist = simulate(
            fed,
            task,
            model,
            run,
            progress=False,
            attackers={2: attack},
            log=logging.getLogger("neuratlas.paradigms.federated").warning,
        )
    assert abs(hist.accuracy[-1] - honest.accuracy[-1]) < 0.05, (hist.accuracy, honest.accuracy)
    assert hist.loss[-1] < 1.5 * honest.loss[-1] + 0.05, (hist.loss, honest.loss)
    assert hist.accuracy[-1] > 0.8
    if aggregation == "mean":
        assert [r[1] for r in hist.rejected] == ["2", "2", "2"]
        assert caplog.text.count("rejected update from client 2") == 3


def test_an_unscreened_attack_poisons_plain_fedavg(honest):
    """The check above can fail: without screening, one ×1e4 client wrecks FedAvg's test loss."""
    run = small_run(**{"federated.reject_norm": "0"})
    fed, task, model = federated_setup(run)
    hist = simulate(fed, task, model, run, progress=False, attackers={2: "scale"})
    assert hist.loss[-1] > 10 * honest.loss[-1], (hist.loss, honest.loss)


@pytest.mark.skipif(not HAS_FLWR, reason="pip install 'neuratlas[federated]' (flwr)")
def test_message_api_round_survives_a_killed_a_silent_and_a_poisoned_client(tmp_path, caplog):
    """Flower's Message API end to end in this process: the ServerApp's loop (``serve``) and 5 ClientApps.
    Client 1 sends weights ×1e4 every round, client 2 crashes in round 2, client 3 never answers in round 2:
    every round completes with the others within the round timeout, the poisoned update is rejected by name,
    and the model learns."""
    import threading

    from neuratlas.paradigms.federated.messages import InProcessGrid, make_client_app, serve

    release = threading.Event()

    def attack(client, r, weights):
        if client == 1:
            return ATTACKS["scale"](weights)
        if client == 2 and r == 2:
            raise RuntimeError("client process killed")
        if client == 3 and r == 2:
            release.wait(60)  # silent until the test ends
        return weights

    run = small_run(**{"federated.round_timeout": "10"})
    grid = InProcessGrid(make_client_app(attack), run, clients=5)
    try:
        with caplog.at_level(logging.WARNING, logger="neuratlas.paradigms.federated"):
            hist = serve(grid, run, tmp_path)
    finally:
        release.set()
        grid.close()
    assert hist.rounds == [0, 1, 2, 3] and hist.accuracy[-1] > 0.8, hist.accuracy
    assert {tuple(r[:2]) for r in hist.rejected} >= {(2, "1"), (3, "1")}
    assert "round 2: 2 client(s) failed or did not answer" in caplog.text
    assert json.loads((tmp_path / "history.json").read_text())["rounds"] == [0, 1, 2, 3]


@pytest.mark.skipif(not HAS_FLWR, reason="pip install 'neuratlas[federated]' (flwr)")
@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedadam"])
def test_message_api_server_equals_the_in_process_simulation(strategy, tmp_path):
    """The ServerApp's loop with ClientApps (what Flower's engines run) against the in-process simulation,
    every client in every round: the same rounds to the last bit, whichever client answers first (the
    server averages in client order), for FedAvg, FedProx's proximal local steps and FedAdam's server step."""
    from neuratlas.paradigms.federated.messages import InProcessGrid, make_client_app, serve

    over = {"federated.clients": "3", "federated.rounds": "2", "federated.strategy": strategy}
    run = small_run(**over)
    grid = InProcessGrid(make_client_app(), run, clients=3)
    try:
        hist = serve(grid, run, tmp_path)
    finally:
        grid.close()
    fed, task, model = federated_setup(run)
    ref = simulate(fed, task, model, run, progress=False)
    assert (hist.accuracy[1:], hist.loss[1:]) == (ref.accuracy, ref.loss)
    assert ref.accuracy[-1] > hist.accuracy[0] + 0.1, (hist.accuracy[0], ref.accuracy)  # it learns


@pytest.mark.skipif(not HAS_FLWR, reason="pip install 'neuratlas[federated]' (flwr)")
@pytest.mark.parametrize("user,expected", [(None, "0"), ("1", "1")])
def test_flower_telemetry_is_off_unless_the_user_turns_it_on(user, expected):
    code = (
        "from neuratlas.paradigms.federated.flower import _flwr; _flwr(); "
        "import flwr.supercore.telemetry as t; print(t.FLWR_TELEMETRY_ENABLED)"
    )
    env = {k: v for k, v in os.environ.items() if k != "FLWR_TELEMETRY_ENABLED"}
    if user is not None:
        env["FLWR_TELEMETRY_ENABLED"] = user
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == expected, out.stderr[-2000:]


def _flower_binaries() -> str:
    from pathlib import Path

    bindir = Path(sys.executable).parent
    missing = [b for b in ("flower-superlink", "flower-supernode", "flwr") if not (bindir / b).exists()]
    return f"Flower's {', '.join(missing)} not installed beside this Python" if missing else ""


@pytest.mark.slow
@pytest.mark.skipif(not HAS_FLWR or bool(_flower_binaries()), reason=_flower_binaries() or "flwr not installed")
def test_flower_deployment_superlink_and_supernodes_on_loopback(tmp_path):
    """Flower's deployment engine for real: a flower-superlink, 4 flower-supernode processes and `flwr run`.
    Client 1 sends NaNs, client 2's process dies in round 2, client 3 stops answering in round 2: both rounds
    complete (the second after the round timeout), the NaN update is rejected by name, the model learns, and
    every process is gone afterwards."""
    from neuratlas.paradigms.federated.messages import deploy_local

    run = small_run(**{"federated.clients": "4", "federated.rounds": "2", "federated.round_timeout": "120"})
    code, log = deploy_local(run, 4, tmp_path, _free_port(), timeout=420, faults={1: "nan", 2: "exit@2", 3: "hang@2"})
    assert code == 0, log[-3000:]
    hist = json.loads((tmp_path / "history.json").read_text())
    assert hist["rounds"] == [0, 1, 2] and hist["accuracy"][-1] > hist["accuracy"][0] + 0.3, hist["accuracy"]
    assert [r[:2] for r in hist["rejected"]] == [[1, "1"], [2, "1"]], hist["rejected"]
    assert "round 2: 2 client(s) failed or did not answer" in log, log[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_FLWR or bool(_flower_binaries()), reason=_flower_binaries() or "flwr not installed")
def test_secure_aggregation_with_dp_on_the_deployment_engine(tmp_path):
    """SecAgg+ with DP on Flower's deployment engine: a flower-superlink, 3 flower-supernode processes whose
    ClientApps run secaggplus_mod, and the ServerApp's SecAggPlusWorkflow; the round completes, the model
    learns from the unmasked mean of clipped updates, and ε is reported."""
    from neuratlas.paradigms.federated.messages import deploy_local

    over = {
        "federated.clients": "3",
        "federated.rounds": "1",
        "federated.round_timeout": "180",
        "federated.secure_aggregation": "true",
        "federated.dp_clip": "5",
        "federated.dp_noise": "0.01",
    }
    code, log = deploy_local(small_run(**over), 3, tmp_path, _free_port(), timeout=540)
    assert code == 0, log[-3000:]
    hist = json.loads((tmp_path / "history.json").read_text())
    assert hist["rounds"] == [0, 1] and hist["accuracy"][1] > hist["accuracy"][0] + 0.3, hist["accuracy"]
    expected = FederatedConfig(clients=3, fraction=1.0, dp_clip=5, dp_noise=0.01).epsilon(1)
    assert hist["epsilon"][1] == pytest.approx(expected)
    assert "privacy spent ε" in log and hist["bytes_sent"] > 0


def _processes_with_env(entry: str) -> list[str]:
    """Command lines of the processes whose environment holds ``entry`` (every process a Flower run starts
    inherits its FLWR_HOME, Ray's workers included, wherever it was reparented to)."""
    from pathlib import Path

    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if entry.encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # gone, or another user's
            continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not HAS_FLWR or bool(_flower_binaries()), reason=_flower_binaries() or "flwr not installed")
@pytest.mark.skipif(not HAS_RAY, reason="Flower's simulation engine needs ray: pip install 'neuratlas[federated]'")
def test_flower_simulation_engine_equals_the_in_process_simulation(tmp_path):
    """`flwr run` on Flower's simulation engine: a SuperLink in simulation mode, 3 virtual SuperNodes whose
    ClientApps run in one Ray worker (one CPU), 2 rounds of the small digits run. The server's history equals
    the in-process simulation's for the same seed: the same shards, the same batches per (round, client),
    updates averaged in client order. Between processes only float rounding could differ (the losses are
    compared to 1e-6 relative, the accuracies to one test image); on one thread per process they agree
    exactly. Every process the run started, Ray's included, is gone afterwards."""
    from neuratlas.paradigms.federated.messages import simulate_flower

    run = small_run(**{"federated.clients": "3", "federated.rounds": "2", "federated.round_timeout": "120"})
    code, log = simulate_flower(run, 3, tmp_path, _free_port(), timeout=300, cpus=1)
    assert code == 0, log[-3000:]
    assert "3 simulated SuperNodes" in log, log[-3000:]
    hist = json.loads((tmp_path / "history.json").read_text())
    assert hist["rounds"] == [0, 1, 2] and hist["rejected"] == [], hist
    fed, task, model = federated_setup(run)
    ref = simulate(fed, task, model, run, progress=False)
    assert ref.rounds == hist["rounds"][1:]
    assert hist["accuracy"][1:] == pytest.approx(ref.accuracy, abs=1 / 359 + 1e-9), (hist["accuracy"], ref.accuracy)
    assert hist["loss"][1:] == pytest.approx(ref.loss, rel=1e-6), (hist["loss"], ref.loss)
    assert hist["bytes_sent"] == ref.bytes_sent and ref.accuracy[-1] > 0.8
    homes = list(tmp_path.glob("flower-*/home"))
    assert len(homes) == 1 and _processes_with_env(f"FLWR_HOME={homes[0]}") == []


@pytest.mark.skipif(not HAS_FLWR, reason="pip install 'neuratlas[federated]' (flwr)")
def test_flower_engines_refuse_more_clients_than_shards_in_one_line(tmp_path):
    """A client beyond the run's split would hold no shard: refused before any process starts."""
    from neuratlas.paradigms.federated.messages import deploy_local, simulation_config

    with pytest.raises(NeuratlasError, match=r"--clients must be in \[1, 5\].*federated.clients = 5"):
        deploy_local(small_run(), 6, tmp_path, _free_port())
    assert not list(tmp_path.iterdir())
    config = simulation_config(4, cpus=2)
    assert config[0] == "--federation-config"
    assert "num-supernodes=4" in config[1] and "client-resources-num-cpus=1" in config[1]
    assert "init-args-num-cpus=2" in config[1]


@pytest.mark.skipif(not HAS_FLWR, reason="pip install 'neuratlas[federated]' (flwr)")
def test_flower_sim_without_ray_is_one_line(monkeypatch, capsys):
    from neuratlas.cli import main

    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")] or ["ray"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if ray were not installed
    assert main(["federated", "flower-sim", "--federated.rounds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: Flower's simulation engine needs ray"), err
    if sys.version_info >= (3, 11):
        assert err[0].endswith("pip install 'neuratlas[federated]'"), err


@pytest.mark.slow
@pytest.mark.skipif(not HAS_FLWR, reason="pip install 'neuratlas[federated]' (flwr)")
def test_flower_server_and_clients_on_loopback(tmp_path):
    """A real Flower server and 4 client processes over gRPC on 127.0.0.1: the global model improves; a
    client that sends NaN updates is rejected by name, one that dies in the middle of round 2 and one that
    stops answering in round 2 do not stop the round (the round timeout ends the wait), and history.json
    holds every round."""
    from neuratlas.paradigms.federated.flower import launch_local

    sections = {**SMALL, "federated.clients": "4", "federated.rounds": "2", "federated.round_timeout": "30"}
    args = [a for k, v in sections.items() for a in (f"--{k}", v)]
    code, log = launch_local(
        args, clients=4, port=_free_port(), out_dir=tmp_path, attacks={1: "nan"}, drop={2: 2}, hang={3: 2}, timeout=200
    )
    assert code == 0, log[-2000:]
    accs = [float(line.rsplit(" ", 1)[1]) for line in log.splitlines() if "global test accuracy" in line]
    assert len(accs) == 3, log[-2000:]  # round 0 (initial weights), 1, 2
    assert accs[-1] > accs[0] + 0.1, accs
    assert "rejected update from client 1" in log
    assert "round 2: 2 client(s) failed or did not answer in time" in log, log[-2000:]
    hist = json.loads((tmp_path / "history.json").read_text())
    assert hist["rounds"] == [0, 1, 2] and (tmp_path / "accuracy.png").is_file()


def test_ddp_two_processes_equal_one_process_with_the_global_batch(tmp_path):
    """torchrun-style 2-process DDP (gloo, loopback) takes exactly the steps of 1 process with the global
    batch: each rank takes half of global batch i and DDP averages the gradients."""
    from safetensors.torch import load_file

    common = [
        "train",
        "mlp-digits",
        "--model.dropout",
        "0",
        "--data.augment",
        "false",
        "--trainer.max_steps",
        "6",
        "--trainer.precision",
        "fp32",
        "--trainer.progress",
        "false",
        "--trainer.loggers",
        "csv",
        "--trainer.out_dir",
        str(tmp_path),
        "--data.batch_size",
        "64",
        "--trainer.eval_every",
        "6",
        "--optimizer.lr",
        "0.01",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(_free_port())}
    from neuratlas.config import parse_overrides
    from neuratlas.recipes import get_recipe
    from neuratlas.training.trainer import Trainer

    overrides = parse_overrides([*common[2:], "--trainer.run_name", "one"])
    Trainer(get_recipe("mlp-digits").run_config(overrides)).fit()  # one process, in this one
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "neuratlas",
            "ddp",
            "--nproc",
            "2",
            "mlp-digits",
            *common[2:],
            "--trainer.run_name",
            "two",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, (ddp.stdout + ddp.stderr)[-3000:]
    one = load_file(str(tmp_path / "one" / "checkpoints" / "last.safetensors"))
    two = load_file(str(tmp_path / "two" / "checkpoints" / "last.safetensors"))
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5)
    assert "val" in (tmp_path / "two" / "result.json").read_text()  # rank 0 wrote the run's files
