"""Real-data training checks. Bounded by default; NEURATLAS_FULL_TESTS=1 trains the whole recipe."""

import json
import subprocess
import sys

import pytest

from neuratlas.recipes import get_recipe
from neuratlas.training.trainer import Trainer


@pytest.mark.slow
def test_convnet_quick_recipe_reaches_its_accuracy(run_overrides, full):
    # full: the recipe as the tour runs it (≥ 0.90); bounded: its first 250 steps (≥ 0.86)
    overrides = dict(run_overrides) if full else {**run_overrides, "trainer.max_steps": "250"}
    result = Trainer(get_recipe("convnet-fashion-quick").run_config(overrides)).fit()
    assert result.test["accuracy"] >= (0.90 if full else 0.86)


@pytest.mark.slow
def test_tour_runs_and_writes_its_report(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "neuratlas",
            "tour",
            "--families",
            "mlp",
            "--out",
            str(tmp_path),
            "--trainer.max_steps",
            "150",
            "--trainer.progress",
            "false",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "mlp-fashion-quick" in r.stdout and "test accuracy" in r.stdout
    assert "| mlp | mlp-fashion-quick |" in (tmp_path / "tour.md").read_text()
    (row,) = json.loads((tmp_path / "tour.json").read_text())
    assert row["metric"] == "test accuracy" and row["value"] > 0.75  # 150 MLP steps on real Fashion-MNIST
    assert (tmp_path / "mlp-fashion-quick" / "curves.png").stat().st_size > 1000
