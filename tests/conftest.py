"""Shared fixtures. Helpers that build checkpoints live in helpers.py."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("MPLBACKEND", "Agg")
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


def _devices() -> list[str]:
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=_devices())
def device(request) -> str:
    """Every device this machine has: the training and RL tests run on each (cuda where a GPU is)."""
    return request.param
