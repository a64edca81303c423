"""Shared fixtures: where the golden files live (tests/golden, in the repository), small seeded models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# The upstream golden files travel with the code (tests/golden/README.md says where they come from);
# PHOENIX_GOLDEN_DIR points the tests at another folder of the same layout.
GOLDEN_DIR = Path(os.environ.get("PHOENIX_GOLDEN_DIR", Path(__file__).resolve().parent / "golden"))
MAY_ARTIFACTS = GOLDEN_DIR / "may" / "may_artifacts_mini"

torch.set_num_threads(min(2, torch.get_num_threads()))


def golden_files() -> list[Path]:
    """Every golden .npz: the January files and the May files (may/)."""
    files = sorted(GOLDEN_DIR.glob("*.npz")) + sorted(GOLDEN_DIR.glob("may/*.npz"))
    if not files:
        raise FileNotFoundError(f"no golden .npz files in {GOLDEN_DIR} (set PHOENIX_GOLDEN_DIR)")
    return files


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    golden_files()
    return GOLDEN_DIR
