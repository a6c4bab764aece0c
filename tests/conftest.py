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
