"""Shared fixtures: tiny synthetic data in the course layout, written once per test session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`hw1_data/`-shaped tiny sample data (P1 and, once present, P2)."""
    from hw1.sample_data import write_sample_data

    return write_sample_data(tmp_path_factory.mktemp("data") / "hw1_data", preset="tiny")
