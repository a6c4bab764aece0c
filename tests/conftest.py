"""Shared fixtures. Helpers that build checkpoints live in helpers.py."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("MPLBACKEND", "Agg")
# figures are drawn in the test process (matplotlib imported once), not by a helper per command;
# tests/cli/test_figure_process.py turns the helper on where it is the subject
os.environ.setdefault("PRISM_FIGURE_PROCESS", "0")
warnings.filterwarnings("ignore")


@pytest.fixture
def tmp(tmp_path) -> Path:
    return tmp_path


@pytest.fixture(params=["fused", "torch"])
def compute_path(request, monkeypatch):
    """Run a test on both implementations of the statistics: the fused numba CPU kernels (for
    tensors of any size here) and the torch path (GPU, other dtypes, small tensors)."""
    from prism_analysis.weights import fused
    from prism_analysis.weights import update as weights

    monkeypatch.setattr(weights, "USE_FUSED", request.param == "fused")
    monkeypatch.setattr(weights, "FUSED_MIN_NUMEL", 0)
    calls = []
    for name in ("pair_stats", "overlap_stats"):
        original = getattr(fused, name)
        monkeypatch.setattr(fused, name, lambda *a, _f=original, **k: calls.append(1) or _f(*a, **k))
    yield request.param
    assert bool(calls) == (request.param == "fused"), "the fused kernels ran on the wrong path"


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="devices of the `device` fixture and of the tests marked gpu: auto (cpu, and cuda where a GPU is), "
        "cuda (only the GPU; tests skip without one), cpu (only the CPU; the tests marked gpu then run on the CPU "
        "in place of the GPU: the plumbing check of benchmarks/gpu_check.py --dry-run)",
    )


def _devices(config) -> list[str]:
    import torch

    choice = config.getoption("device")
    if choice in ("cpu", "cuda"):
        return [choice]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", _devices(metafunc.config), indirect=True)


@pytest.fixture
def device(request) -> str:
    """Every device this machine has (``--device`` narrows it): the training and RL tests run on each
    (cuda where a GPU is); the cuda instances are marked gpu."""
    import torch

    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return request.param


@pytest.fixture
def gpu_device(request) -> str:
    """The device of a test marked gpu: "cuda" (the test skips without a CUDA device), or "cpu" under
    ``--device cpu``, where the test's GPU side runs on the CPU (it then proves only the plumbing)."""
    import torch

    if request.config.getoption("device") == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return "cuda"


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(config, items):
    """Mark gpu what a GPU check runs: the cuda instances of the `device` tests and every test using
    `gpu_device`; under ``--device cpu`` the `device` tests too (they stand in for the GPU run)."""
    stand_in = config.getoption("device") == "cpu"
    for item in items:
        names = getattr(item, "fixturenames", ())
        param = getattr(getattr(item, "callspec", None), "params", {}).get("device")
        if "gpu_device" in names or param == "cuda" or (stand_in and "device" in names):
            item.add_marker(pytest.mark.gpu)
