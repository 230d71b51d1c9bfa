"""Shared test setup: GPU tests skip cleanly on machines without a supported GPU."""

import json
import os
import tempfile

import pytest
import torch

# Kernels compiled by the tests go to a private cache unless the caller names one (a GPU run
# shares one cache between its steps).
os.environ.setdefault("CUTE_MOE_CACHE_DIR", tempfile.mkdtemp(prefix="cute_moe_test_cache_"))

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


_ERRORS = []


@pytest.fixture
def record_error(request):
    """Record (case, rel err, max abs err) of a GPU comparison; the session prints them all and,
    with CUTE_MOE_ERROR_REPORT set, each one is appended there as a JSON line when it is made (so
    that pytest-xdist workers, whose records never reach the controller's summary, report too)."""

    def record(rel: float, max_abs: float, **extra):
        entry = {"case": request.node.name, "rel": rel, "max_abs": max_abs, **extra}
        _ERRORS.append(entry)
        path = os.environ.get("CUTE_MOE_ERROR_REPORT")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    return record


def pytest_terminal_summary(terminalreporter):
    if not _ERRORS:
        return
    terminalreporter.section("measured errors vs the float reference")
    worst = max(_ERRORS, key=lambda e: e["rel"])
    for e in _ERRORS:
        terminalreporter.write_line(f"{e['case']:<90} rel {e['rel']:.2e}  max_abs {e['max_abs']:.2e}")
    terminalreporter.write_line(f"{len(_ERRORS)} comparisons; worst rel {worst['rel']:.2e} ({worst['case']})")
