"""Shared test setup: GPU tests skip cleanly on machines without a supported GPU."""

import pytest
import torch

from cute_moe.kernels import runtime


def pytest_collection_modifyitems(config, items):
    if runtime.gpu_available():
        return
    reason = "needs an NVIDIA GPU of SM90, SM100 or SM120"
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def seeded():
    """A fresh generator per test: random inputs differ between tests, runs are reproducible."""
    return torch.Generator().manual_seed(torch.initial_seed() % (2**31))
