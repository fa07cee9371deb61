"""Shared test settings.

Training checks on real data are marked ``slow``. They always run (CI included), but in a bounded form
unless NEURATLAS_FULL_TESTS=1, where they train the full recipe and assert its published target.
"""

from __future__ import annotations

import os

import pytest
import torch

FULL = os.environ.get("NEURATLAS_FULL_TESTS") == "1"


@pytest.fixture(autouse=True)
def _seed_and_quiet(monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setenv("NEURATLAS_OFFLINE", "1")  # tests never touch the network
    yield


@pytest.fixture
def full() -> bool:
    """True when the full (unbounded) training checks were asked for."""
    return FULL


@pytest.fixture
def run_overrides(tmp_path) -> dict[str, str]:
    """Overrides that keep a test's training run quiet and inside its tmp folder."""
    return {"trainer.out_dir": str(tmp_path / "runs"), "trainer.progress": "false", "trainer.loggers": "csv"}


@pytest.fixture
def one_thread():
    """Small models: one torch thread is fastest and immune to other processes on a shared CPU (restored
    afterwards). Test modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
