"""Shared test setup: deterministic, small, CPU-friendly; the session-wide tiny set and run."""

from __future__ import annotations

import os

import pytest
import torch

# Helpers' asserts explain their failures as the tests' own do (before anything imports them).
pytest.register_assert_rewrite("tests.helpers")

from tests.helpers.tiny import Tiny, get_tiny  # noqa: E402

# Under pytest-xdist each worker gets one thread: 2 workers on 2 cores, no oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    """The tiny synthetic set and training run (tests/helpers/tiny.py), built once per session
    (once for all xdist workers); read-only: copy before writing into it."""
    return get_tiny(tmp_path_factory)
