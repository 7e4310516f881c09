"""Shared test set-up: seed every test, skip GPU tests without one. `attrflow` is imported as
installed (`pip install -e .`); test helpers are on pytest's `pythonpath` (pyproject.toml)."""

from __future__ import annotations

import os

import pytest

# Tests never reach a hub: a model that would download must fail at once instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, so a failure reproduces."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one thread: they are many small operations, for which thread
    hand-offs cost more than they save."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
