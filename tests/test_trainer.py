"""The trainer: overfits one batch, resumes bit-exactly after a crash, stops on NaN with the step."""

import copy

import pytest
import torch

from neuratlas.errors import NeuratlasError
from neuratlas.optim import ScheduleConfig, lr_factor
from neuratlas.recipes import get_recipe
from neuratlas.training.config import RunConfig
from neuratlas.training.trainer import Trainer


def digits_run(run_overrides, **extra) -> RunConfig:
    return get_recipe("mlp-digits").run_config({**run_overrides, **extra})


def test_one_batch_overfit(run_overrides):
    run = get_recipe("convnet-fashion-quick").run_config(
        {
            **run_overrides,
            "data.limit_train": "32",
            "data.batch_size": "32",
            "data.augment": "false",
            "model.channels": "16,32",
            "data.eval_batch_size": "5000",
            "task.label_smoothing": "0",
            "trainer.max_steps": "80",
            "schedule.name": "constant",
            "optimizer.lr": "1e-2",
            "model.dropout": "0",
            "trainer.precision": "fp32",
        }
    )
    trainer = Trainer(run)
    first = None
    for _ in range(80):
        logs = trainer.train_step()
        first = first if first is not None else logs["loss"]
    assert first > 1.5 and logs["loss"] < 0.1  # memorised: from chance (ln 10 ≈ 2.3) to near zero


@pytest.mark.parametrize(
    "precision,ema,optimizer",
    [("fp32", "0", "adamw"), ("bf16", "0", "adamw"), ("fp32", "0.9", "adamw"), ("fp32", "0", "muon")],
)
def test_exact_resume_after_crash(run_overrides, precision, ema, optimizer):
    common = {
        "trainer.max_steps": "20",
        "trainer.save_every": "5",
        "trainer.eval_every": "100",
        "trainer.precision": precision,
        "model.dropout": "0.2",
        "trainer.ema_decay": ema,
        "optimizer.name": optimizer,
    }
    a = Trainer(digits_run(run_overrides, **common, **{"trainer.run_name": "a"}))
    a.fit()
    b = Trainer(digits_run(run_overrides, **common, **{"trainer.run_name": "b"}))
    with pytest.raises(KeyboardInterrupt):
        b.fit(crash_at=13)  # dies after the step-10 checkpoint, losing steps 11-13
    c = Trainer(digits_run(run_overrides, **common, **{"trainer.run_name": "b"}))
    c.fit(resume=b.run_dir)
    assert c.step == 20
    for (name, pa), pc in zip(a.model.state_dict().items(), c.model.state_dict().values()):
        assert torch.equal(pa, pc), name
    for (name, pa), pc in zip(a.eval_model.state_dict().items(), c.eval_model.state_dict().values()):
        assert torch.equal(pa, pc), name  # the weight average too, when there is one
    rows = (c.run_dir / "metrics.csv").read_text().splitlines()
    steps = [int(r.split(",")[0]) for r in rows[1:]]
    assert steps == sorted(steps)  # the log has no duplicated tail from the crashed attempt
    if optimizer == "muon":  # another optimizer's state is a one-line error naming the checkpoint
        other = Trainer(digits_run(run_overrides, **{**common, "trainer.run_name": "c", "optimizer.name": "adamw"}))
        with pytest.raises(NeuratlasError, match="does not fit this run's optimizer 'adamw'"):
            other.fit(resume=b.run_dir)


def test_weight_average_follows_its_formula_and_is_what_is_evaluated_and_saved(run_overrides):
    from safetensors.torch import load_file

    from neuratlas.training.ema import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    model[0].weight.data.fill_(1.0)
    avg = WeightAverage(model, decay=0.9)
    expected = torch.ones(3, 3)
    for n in range(1, 40):
        model[0].weight.data.fill_(float(n + 1))
        model[1].num_batches_tracked.fill_(n)
        avg.update(model)
        d = min(0.9, (1 + n) / (10 + n))  # warm-up: the initial weights fade quickly
        expected = d * expected + (1 - d) * (n + 1)
    assert torch.allclose(avg.module[0].weight, expected) and avg.module[1].num_batches_tracked == 39
    assert not avg.module[0].weight.requires_grad
    tied = torch.nn.Linear(4, 4, bias=False)
    pair = torch.nn.ModuleDict({"a": tied, "b": tied})  # a tied weight is averaged once, not twice
    t_avg = WeightAverage(pair, decay=0.5)
    tied.weight.data.fill_(2.0)
    start = t_avg.module["a"].weight.clone()
    t_avg.update(pair)
    w = 1 - t_avg.current_decay()
    assert torch.allclose(t_avg.module["b"].weight, start + w * (2.0 - start))

    trainer = Trainer(digits_run(run_overrides, **{"trainer.max_steps": "30", "trainer.ema_decay": "0.95"}))
    result = trainer.fit()
    raw = trainer.task.evaluate(trainer.model, "test", trainer.autocast())
    assert result.test == trainer.task.evaluate(trainer.ema.module, "test", trainer.autocast()) != raw
    saved = load_file(str(trainer.ckpt_dir / "last.safetensors"))
    for name, tensor in trainer.ema.module.state_dict().items():
        assert torch.equal(saved[name], tensor), name


def test_nan_loss_stops_with_the_step(run_overrides):
    run = digits_run(
        run_overrides,
        **{"optimizer.lr": "1e12", "trainer.max_steps": "50", "schedule.name": "constant", "optimizer.name": "sgd"},
    )
    with pytest.raises(NeuratlasError, match=r"loss became (nan|inf) at step \d+"):
        Trainer(run).fit()


def test_grad_accumulation_matches_large_batch(run_overrides):
    def weights(batch, accum):
        run = digits_run(
            run_overrides,
            **{
                "data.batch_size": str(batch),
                "trainer.grad_accum": str(accum),
                "trainer.max_steps": "3",
                "trainer.precision": "fp32",
                "model.dropout": "0",
                "data.augment": "false",
                "optimizer.name": "sgd",
                "schedule.name": "constant",
            },
        )
        t = Trainer(run)
        t.task.train_batches.shuffle = False
        for _ in range(3):
            t.train_step()
        return t.model.state_dict()

    big, small = weights(64, 1), weights(32, 2)
    for k in big:
        torch.testing.assert_close(big[k], small[k], rtol=1e-5, atol=1e-6)


def test_schedules():
    cos = ScheduleConfig(name="cosine", warmup_steps=10)
    assert lr_factor(0, 100, cos) == pytest.approx(0.1)
    assert lr_factor(9, 100, cos) == pytest.approx(1.0)
    assert lr_factor(99, 100, cos) == pytest.approx(0.0, abs=1e-3)
    step = ScheduleConfig(name="step", step_size=10, gamma=0.5)
    assert lr_factor(25, 100, step) == pytest.approx(0.25)
    one = ScheduleConfig(name="onecycle", pct_start=0.3)
    peak = max(lr_factor(s, 100, one) for s in range(100))
    assert peak == pytest.approx(1.0, abs=1e-3) and lr_factor(0, 100, one) == pytest.approx(1 / 25)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "muon"])
def test_every_optimizer_trains(run_overrides, name):
    lr = {"sgd": "0.05", "adam": "3e-3", "adamw": "3e-3", "rmsprop": "1e-3", "muon": "1e-2"}[name]
    run = digits_run(
        run_overrides,
        **{
            "optimizer.name": name,
            "optimizer.lr": lr,
            "trainer.max_steps": "60",
            "optimizer.nesterov": str(name == "sgd"),
        },
    )
    t = Trainer(run)
    before = t.evaluate("val")["loss"]
    result = t.fit()
    assert result.val["loss"] < before * 0.7


def test_lr_multipliers_by_parameter_name(run_overrides):
    """``optimizer.lr_mults``: matched parameters get lr × multiplier at every step of the schedule (0 freezes
    them in effect), the rest the plain lr; weight decay still skips biases; bad specs are one-line errors."""
    common = {
        "optimizer.name": "sgd",
        "optimizer.lr": "0.05",
        "optimizer.momentum": "0",
        "trainer.max_steps": "12",
        "schedule.warmup_steps": "3",
        "optimizer.weight_decay": "1e-3",
    }
    t = Trainer(digits_run(run_overrides, **common, **{"optimizer.lr_mults": "body.*=0.1, head.bias=0"}))
    by_id = {id(p): n for n, p in t.model.named_parameters()}
    groups = {
        (tuple(sorted(by_id[id(p)] for p in g["params"])), round(g["initial_lr"], 9), g["weight_decay"])
        for g in t.optimizer.param_groups
    }
    assert groups == {
        (("body.0.weight",), 0.005, 1e-3),
        (("body.0.bias",), 0.005, 0.0),
        (("head.weight",), 0.05, 1e-3),
        (("head.bias",), 0.0, 0.0),
    }
    start = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    for _ in range(12):
        t.train_step()
        lrs = {by_id[id(g["params"][0])]: g["lr"] for g in t.optimizer.param_groups}
        assert lrs["body.0.weight"] == pytest.approx(0.1 * lrs["head.weight"]) and lrs["head.bias"] == 0.0
    after = dict(t.model.named_parameters())
    assert torch.equal(after["head.bias"], start["head.bias"])  # multiplier 0: never moves
    assert not torch.equal(after["body.0.weight"], start["body.0.weight"])
    for spec, message in (
        ("body.*", "expected GLOB=MULTIPLIER"),
        ("body.*=-1", "expected GLOB=MULTIPLIER"),
        ("backbone.*=0.1", "backbone.* matches no trainable parameter"),
    ):
        with pytest.raises(NeuratlasError, match=message):
            Trainer(digits_run(run_overrides, **common, **{"optimizer.lr_mults": spec}))
    with pytest.raises(NeuratlasError, match="not supported with muon"):
        Trainer(digits_run(run_overrides, **{"optimizer.name": "muon", "optimizer.lr_mults": "body.*=0.1"}))


def test_budget_schedule_follows_the_clock(run_overrides):
    run = digits_run(
        run_overrides,
        **{
            "trainer.time_limit": "2",
            "trainer.budget_schedule": "true",
            "trainer.epochs": "1000",
            "schedule.name": "cosine",
            "trainer.log_every": "1",
        },
    )
    t = Trainer(run)
    result = t.fit()
    assert result.stopped_early.startswith("time limit") and result.steps < t.total_steps
    last_lr = t.optimizer.param_groups[0]["lr"]
    assert last_lr < 0.25 * run.optimizer.lr  # the cosine reached its tail when the budget ran out
    # a fast machine: the step grid is used up long before the budget, and training goes on to the clock
    fast = Trainer(
        digits_run(
            run_overrides,
            **{
                "trainer.time_limit": "1.5",
                "trainer.budget_schedule": "true",
                "trainer.max_steps": "5",
                "trainer.eval_every": "1000",
            },
        )
    )
    result = fast.fit()
    assert result.stopped_early.startswith("time limit") and result.steps > 5 and result.train_seconds >= 1.5


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_fused_optimizer_matches_the_reference_update(name):
    """The fused kernel is a speed switch only: the same parameters after a few steps."""
    from neuratlas.optim import OptimizerConfig, build_optimizer

    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))]
    models.append(copy.deepcopy(models[0]))
    opts = [
        build_optimizer(m, OptimizerConfig(name=name, lr=1e-2, weight_decay=0.1, fused=f))
        for m, f in zip(models, (True, False))
    ]
    assert opts[0].defaults.get("fused") is True and not opts[1].defaults.get("fused")
    x = torch.randn(32, 8)
    for _ in range(5):
        for m, opt in zip(models, opts):
            m(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_tta_flip_averages_the_logits_of_each_image_and_its_mirror(run_overrides):
    run = digits_run(run_overrides, **{"trainer.max_steps": "3", "task.tta_flip": "true"})
    trainer = Trainer(run)
    task, model = trainer.task, trainer.model.eval()
    x, y = task.data.test
    with torch.no_grad():
        plain, mirrored = (model(task.prepare(v)) for v in (x, x.flip(-1)))
    assert not torch.allclose(plain, mirrored)  # digits are not mirror-symmetric: the two views differ
    want = torch.nn.functional.cross_entropy((plain + mirrored) / 2, y).item()
    got = task.evaluate(model, "test", torch.autocast("cpu", enabled=False))
    assert got["loss"] == pytest.approx(want, rel=1e-5)


def test_keep_freed_memory_switch(run_overrides, monkeypatch):
    calls = []
    monkeypatch.setattr("neuratlas.training.trainer.keep_freed_memory", lambda: calls.append(1))
    Trainer(digits_run(run_overrides, **{"trainer.keep_freed_memory": "false"}))
    assert calls == []
    Trainer(digits_run(run_overrides))
    assert calls == [1]


def test_muon_orthogonalises_like_the_reference_and_steps_like_torch_muon():
    """Our batched Newton-Schulz against torch's per-matrix one (bf16 both: ~2% apart), and whole Muon steps
    against torch.optim.Muon with Moonshot's lr rule on the same gradients."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    from neuratlas.optim import NS_COEFFICIENTS, Muon, orthogonalize

    g = torch.randn(3, 48, 160)
    ours = orthogonalize(g).float()
    ref = torch.stack([_zeropower_via_newtonschulz(m, NS_COEFFICIENTS, 5, 1e-7) for m in g]).float()
    assert (ours - ref).norm() / ref.norm() < 0.05
    s = torch.linalg.svdvals(ours)
    assert s.min() > 0.5 and s.max() < 1.5  # every direction moves at about the same rate
    shapes = [(32, 96), (96, 32), (32, 96), (40, 40)]  # tall, wide and square, grouped by shape
    mine = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in mine]
    ours_opt, ref_opt = (
        Muon(mine, lr=0.02, weight_decay=0.1),
        torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"),
    )
    for _ in range(3):
        for a, b in zip(mine, theirs):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        ours_opt.step()
        ref_opt.step()
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.randn(3))])


def test_muon_with_adamw_splits_the_model_and_schedules_both_halves():
    from neuratlas.models import create_model
    from neuratlas.optim import OptimizerConfig, build_optimizer, build_scheduler, hidden_matrices

    gpt = create_model("gpt-char-baby", vocab_size=65, bias=False)
    names = {id(p): n for n, p in gpt.named_parameters()}
    hidden = [names[id(p)] for p in hidden_matrices(gpt)]
    assert len(hidden) == 16 and all(".attn." in n or ".ffn." in n for n in hidden)  # not embeddings/head
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    assert [p.shape for p in hidden_matrices(mlp)] == [(16, 8)]  # the output layer goes to AdamW
    opt = build_optimizer(gpt, OptimizerConfig(name="muon", lr=1e-3, weight_decay=0.1))
    covered = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(covered) == sorted(id(p) for p in gpt.parameters())  # every parameter exactly once
    sched = build_scheduler(opt, ScheduleConfig(name="cosine", warmup_steps=10), 100)
    opt.step()  # no gradients yet: a no-op, in the order the scheduler expects
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-4] * 3)  # both halves follow the schedule
    with pytest.raises(ValueError, match="no hidden"):
        build_optimizer(torch.nn.Linear(4, 2), OptimizerConfig(name="muon"))
