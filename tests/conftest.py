"""Shared fixtures: seeded RNG, tmp data folders, and a small config written next to them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))        # the root scripts and the package
sys.path.insert(0, str(ROOT / "tests"))  # tests/media.py


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def write_config(tmp_path):
    """Write a config.yaml in tmp_path from a YAML string; returns its path."""
    def write(text: str = "", name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path
    return write
