"""The floors of the package: imports only point down (parsed, not imported, so this runs in milliseconds)."""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterator, Tuple

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "xraygpt"
# The top floor: command lines.  They may import anything; nothing else may import them.
ENTRY_MODULES = {f"xraygpt.{name}" for name in ("train", "evaluate", "generate", "demo", "quickstart", "serve", "export")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[Tuple[int, str]]:
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    return _imports_in(path.read_text(encoding="utf-8"), package)


def _imports_in(source: str, package: str) -> Iterator[Tuple[int, str]]:
    """``(line, imported module)`` for every import in ``source``, at any depth (lazy imports count)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:  # ``from xraygpt import train``
                yield node.lineno, f"{base}.{alias.name}"


def _is_entry(module: str) -> bool:
    return any(module == entry or module.startswith(entry + ".") for entry in ENTRY_MODULES)


def test_library_modules_never_import_entry_points():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if _is_entry(name):
            continue
        offenders += [f"{path.relative_to(REPO_ROOT)}:{line} imports {module}"
                      for line, module in _imports(path) if _is_entry(module)]
    assert not offenders, "library modules import entry points:\n" + "\n".join(offenders)


# MiniGPT-4's attribute names; the runner reaches these parts through the model's methods (language_model(),
# frozen_image_parts(), parameter_role(), ...).  Whole words: config keys such as freeze_qformer may appear.
MODEL_PARTS = re.compile(r"\b(llama_model|llama_proj|visual_encoder|ln_vision|qformer|query_tokens)\b")


def test_the_runner_never_names_model_parts():
    """The runner trains any model through its interface; only the model knows its parts' names."""
    offenders = []
    for path in sorted((PACKAGE / "runners").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if MODEL_PARTS.search(line):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_checker_sees_lazy_and_relative_imports():
    # The test above is only as good as _imports_in: make sure it finds the forms the package uses.
    source = "def f():\n    from xraygpt.train import set_seed\n    from .. import evaluate\n    import xraygpt.demo\n"
    found = {name for _, name in _imports_in(source, "xraygpt.tasks")}
    assert {"xraygpt.train", "xraygpt.evaluate", "xraygpt.demo"} <= found
    assert _is_entry("xraygpt.serve.app") and not _is_entry("xraygpt.trainer")
