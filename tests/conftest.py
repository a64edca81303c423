"""Shared fixtures: where the golden files live, small seeded models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = Path(os.environ.get("PHOENIX_GOLDEN_DIR", ROOT.parent / "shared" / "golden"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def golden_files() -> list[Path]:
    files = sorted(GOLDEN_DIR.glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"no golden .npz files in {GOLDEN_DIR} (set PHOENIX_GOLDEN_DIR)")
    return files


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    golden_files()
    return GOLDEN_DIR
