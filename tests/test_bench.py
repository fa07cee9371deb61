"""The benchmark machinery: claims produce a report with tables, verdicts and plots; races measure peaks.

Timings are never asserted here; the claims themselves run in `neuratlas bench all`."""

import re
from pathlib import Path

import pytest
import torch

from neuratlas.bench import BENCHMARKS, run_benchmark
from neuratlas.bench.report import (
    CLAIMS,
    ClaimResult,
    budget,
    count_flops,
    line_plot,
    markdown_table,
    register_claim,
    write_report,
)


def test_every_claim_of_the_article_is_registered():
    titles = sorted(CLAIMS.get(n).description for n in CLAIMS.names())
    assert [t.split(".")[0] for t in titles] == [str(i) for i in range(1, 10)]
    for name in ("all", "nanogpt", "mfu", "fashion-race"):
        assert name in BENCHMARKS


def test_report_from_a_claim(tmp_path, monkeypatch):
    def fake(quick: bool, out: Path) -> ClaimResult:
        plot = line_plot({"a": ([1, 2], [3.0, 1.0])}, out / "p.png", "t", "x", "y", logy=True)
        return ClaimResult("0. A claim", [{"variant": "a", "score": 0.5}], "holds: a", [plot])

    register_claim("fake-claim", "0. A claim", fake, 0)
    try:
        lines = run_benchmark("all", quick="true", out=str(tmp_path), only="fake-claim")
        report = (tmp_path / "report.md").read_text()
        assert "| 1 | 0. A claim | holds: a |" in report and "![p](fake-claim/p.png)" in report
        assert "| variant | score |" in report and any("holds: a" in line for line in lines)
        assert (tmp_path / "fake-claim" / "p.png").stat().st_size > 1000
    finally:
        CLAIMS._entries.pop("fake-claim")
        BENCHMARKS._entries.pop("fake-claim")


def test_helpers(monkeypatch):
    assert markdown_table([{"a": 1, "b": 0.123456}]).splitlines()[2] == "| 1 | 0.1235 |"
    assert budget(10, 100, quick=True) == 10 and budget(10, 100, quick=False) == 100
    monkeypatch.setenv("NEURATLAS_BENCH_STEPS", "3")
    assert budget(10, 100, quick=False) == 3
    lin = torch.nn.Linear(8, 4, bias=False)
    assert count_flops(lin, torch.randn(5, 8)) == 2 * 5 * 8 * 4


@pytest.mark.parametrize("per_iter", [0.35, 0.3, 0.6, 1.0, 0.1, 0.02])
def test_nanogpt_budget_schedule_never_breaks_nanogpts_lr_schedule(per_iter):
    """Runs nanoGPT's own get_lr (the bundled peer) at every iteration of the fitted schedule: a run fitted to
    exactly its 100 warm-up iterations (0.35 s/iteration in 50 s) once divided by zero."""
    from neuratlas.bench.races import _find_peers, nanogpt_budget_schedule

    source = (_find_peers() / "nanogpt" / "train.py").read_text()
    get_lr = re.search(r"^def get_lr\(it\):\n(?:    .*\n|\n)+", source, re.M).group(0)
    schedule = nanogpt_budget_schedule(50, per_iter)
    scope = {"math": __import__("math"), "learning_rate": 1e-3, "min_lr": 1e-4, **schedule}
    exec(get_lr, scope)  # the peer's code, not a copy of it
    lrs = [scope["get_lr"](it) for it in range(schedule["max_iters"] + 1)]
    assert schedule["max_iters"] == max(20, int(35 / per_iter)) and max(lrs) <= 1e-3
    assert schedule["warmup_iters"] == min(100, schedule["max_iters"] // 2)


def test_write_report_summary(tmp_path):
    path = write_report([ClaimResult("1. X", [], "not shown: y")], tmp_path)
    assert "| 1 | 1. X | not shown: y |" in path.read_text()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_peak_is_measured(dtype):
    from neuratlas.bench.races import matmul_peak

    peak, shape = matmul_peak(dtype, shapes=((128, 128, 128), (256, 64, 128)), seconds=0.05)
    assert peak > 1e6 and shape in ("128×128×128", "256×64×128")


def test_matmul_peak_is_the_best_shape(monkeypatch):
    from neuratlas.bench import races

    rates = {(2048, 2048, 2048): 2.0e12, (4096, 384, 1152): 3.5e12, (64, 64, 64): 1.0e12}
    monkeypatch.setattr(races, "matmul_rate", lambda dtype, m, k, n, seconds: rates[(m, k, n)])
    assert races.matmul_peak(torch.bfloat16, shapes=tuple(rates)) == (3.5e12, "4096×384×1152")


def test_product_ceiling_accounts_for_the_steps_flops():
    """The MFU ceiling times every matrix product of a step: their FLOPs add up to the step's 6N + attention
    count (up to the biases and norms, which are not products)."""
    from neuratlas.bench.races import MFUOptions, mfu_setup, product_ceiling

    flops_per_step, _, _, model = mfu_setup(MFUOptions(batch=2, context=32, precision="fp32"))
    parts = product_ceiling(model, 2 * 32, 32, torch.float32)
    assert set(parts) == {"forward", "input gradients", "weight gradients", "attention"}
    assert all(f > 0 and t > 0 for f, t in parts.values())
    assert sum(f for f, _ in parts.values()) == pytest.approx(flops_per_step, rel=0.01)


@pytest.mark.slow  # a whole race or profile: tens of seconds on 2 cores
def test_minilm_race_checks_outputs_against_transformers(monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lines = run_benchmark("minilm", quick="true", sentences="40", batch="16")
    text = "\n".join(lines)
    assert "40 Rotten Tomatoes snippets" in text
    assert "(target ≤ 1e-4: met)" in text and "(target ≥ 0.999: met)" in text
    assert text.endswith("reproduce: neuratlas bench minilm --quick")


@pytest.mark.slow  # a whole race or profile: tens of seconds on 2 cores
def test_speed_prints_one_table_line_per_race(capsys):
    lines = run_benchmark("speed", quick=True, only="mfu", races={"mfu": {"batch": 2, "context": 32}})
    assert lines[0].startswith("machine: ") and "bf16" in lines[0]
    rows = [ln for ln in lines if ln.startswith("| GPT 6 × 384 training step |")]
    assert len(rows) == 1 and "MFU" in rows[0] and rows[0].endswith("`neuratlas bench mfu` |")
    assert "RACE |" in capsys.readouterr().out  # each race's own lines are printed as it runs


@pytest.mark.slow  # a whole race or profile: tens of seconds on 2 cores
def test_profile_tables_of_a_recipe_step_and_of_decoding():
    from neuratlas.errors import NeuratlasError

    lines = run_benchmark("profile", what="gpt-tinyshakespeare-baby,generate", steps="1", rows="5")
    heads = [ln for ln in lines if ln.startswith("--- ")]
    assert [h.split(":")[0] for h in heads] == ["--- gpt-tinyshakespeare-baby", "--- generate"]
    assert "per training step un-profiled" in heads[0] and "per 128 generated tokens" in heads[1]
    tables = [ln for ln in lines if "Self CPU" in ln]
    assert len(tables) == 2 and "aten::mm" in tables[0]  # the products are there
    # decoding's linear layers run as addmm (F.linear) or as baddbmm (layers/gemv.py): "auto" picks by timing
    assert "aten::addmm" in tables[1] or "aten::baddbmm" in tables[1]
    with pytest.raises(NeuratlasError, match="no-such-recipe"):
        run_benchmark("profile", what="no-such-recipe")


@pytest.mark.slow
def test_budgeted_gpt_race_runs_the_real_peer_and_rescores_it():
    """nanoGPT's own train.py (the bundled peer) against the budgeted recipe, at a 50-second budget."""
    lines = run_benchmark("nanogpt-10min", budget="50")
    text = "\n".join(lines)
    peer, ours = (float(v) for v in re.findall(r"val (\d\.\d+)", lines[1] + lines[2])[:2])
    assert 1.0 < ours < 4.2 and 1.0 < peer < 4.2  # both trained a little: below ln(65) = 4.17
    assert "RACE | best char GPT in 1 min" in text and text.endswith("neuratlas bench nanogpt-10min")
