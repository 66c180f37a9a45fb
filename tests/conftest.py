"""Shared test fixtures: paths to ../shared, seeding, device markers."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
# CI and developers have ../shared beside the checkout; XRAYGPT_SHARED overrides.
SHARED = Path(os.environ.get("XRAYGPT_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(autouse=True)
def _reset_seed_and_dtype():
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def seed_reference_dir() -> Path:
    """The reference implementation's tiny checkpoints and outputs (copied into tests/fixtures)."""
    path = FIXTURES / "seed_reference"
    if not path.is_dir():
        path = SHARED / "fixtures" / "seed_reference"
    if not path.is_dir():
        pytest.skip("seed_reference fixtures not found")
    return path


@pytest.fixture(scope="session")
def sample_data_dir() -> Path:
    """Small real public samples; never copied into the repo, so skip when absent."""
    path = SHARED / "sample_data"
    if not path.is_dir():
        pytest.skip(f"sample data not found at {path}")
    return path


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
