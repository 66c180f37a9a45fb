"""Shared test fixtures: paths to ../shared, seeding, device markers."""
from __future__ import annotations

import os
import random
import sys
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


# torch._dynamo settings the package changes (models/regional_compile.py raises the recompile limits).
_DYNAMO_KEYS = ("cache_size_limit", "recompile_limit")


@pytest.fixture(autouse=True)
def _restore_registry_and_dynamo():
    """Undo what a test registers or replaces in the registry, and the dynamo limits it raises.

    Names the package registers while a test first imports one of its modules stay: the module
    will not run its ``register_*`` decorators a second time.
    """
    from xraygpt.common.registry import registry

    tables = {kind: dict(table) for kind, table in registry._tables.items()}
    paths = dict(registry._paths)
    dynamo = sys.modules.get("torch._dynamo")
    limits = {key: getattr(dynamo.config, key) for key in _DYNAMO_KEYS if hasattr(dynamo.config, key)} if dynamo else {}
    yield
    for kind, table in registry._tables.items():
        before = tables.get(kind, {})
        for name in [n for n, obj in table.items() if n not in before and not _from_package(obj)]:
            del table[name]
        table.update(before)
    registry._paths.clear()
    registry._paths.update(paths)
    for key, value in limits.items():
        setattr(dynamo.config, key, value)


def _from_package(obj) -> bool:
    return str(getattr(obj, "__module__", "")).startswith("xraygpt.")


@pytest.fixture(scope="module")
def one_cpu_thread():
    """Tiny kernels: one thread is ~10x faster than two on a busy 2-core CI machine, where threads fight.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_cpu_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
