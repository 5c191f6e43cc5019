"""Shared test setup: deterministic, small, CPU-friendly."""

from __future__ import annotations

import os

import pytest
import torch

# Under pytest-xdist each worker gets one thread: 2 workers on 2 cores, no oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
