"""Declared dependencies are used, and what the package imports is pinned (CI installs only the pins)."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

from tests.conftest import REPO_ROOT

# Declared but never imported by our code: each is needed by a library we call, for the reason given.
USED_THROUGH_A_LIBRARY = {
    "protobuf": "transformers converts tokenizer.model through it",
    "accelerate": "transformers places the 8-bit LLM (device_map) with it",
    "bitsandbytes": "transformers' 8-bit quantization",
    "pytest-timeout": "the suite's timeout setting",
    "tensorboard": "torch.utils.tensorboard writes the event files with it",
}
NOT_PINNED = {
    "bitsandbytes": "GPU-only optional extra; CI has no GPU (hard_requirements.txt says so)",
    "torchao": "CUDA-only int8 extra, pinned in pyproject (0.17.0, for the GPU machine's torch)",
}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return _normal(re.split(r"[<>=!~\[; ]", spec.strip(), maxsplit=1)[0])


def _imported_top_level(*folders: str) -> set[str]:
    names = set()
    for folder in folders:
        for path in (REPO_ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name not in ("xraygpt", "tests", "benchmarks")}


def _declared() -> set[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + [s for extra in project["optional-dependencies"].values() for s in extra]
    return {_requirement_name(spec) for spec in specs}


def _pinned() -> set[str]:
    lines = (REPO_ROOT / "hard_requirements.txt").read_text().splitlines()
    return {_requirement_name(line) for line in lines if line.strip() and not line.startswith("#")}


def test_every_package_the_code_imports_is_declared_and_pinned():
    distributions = importlib.metadata.packages_distributions()
    pinned, declared = _pinned(), _declared()
    missing = []
    for module in sorted(_imported_top_level("xraygpt")):
        names = {_normal(d) for d in distributions.get(module, [module])}
        if (not names & pinned and not names & set(NOT_PINNED)) or not names & declared:
            missing.append(f"{module} (distribution {sorted(names)}: pinned={bool(names & pinned)}, "
                           f"declared={bool(names & declared)})")
    assert not missing, "imports without a pin or a pyproject entry: " + "; ".join(missing)


def test_every_declared_dependency_is_used():
    distributions = importlib.metadata.packages_distributions()
    imported = {_normal(d) for module in _imported_top_level("xraygpt", "tests", "benchmarks")
                for d in distributions.get(module, [module])}
    unused = sorted(_declared() - imported - set(USED_THROUGH_A_LIBRARY))
    assert not unused, f"declared in pyproject.toml but never imported: {unused}"
