"""xraygpt: medical image -> radiology report / VQA, after XrayGPT and MiniGPT-4.

Importing the package registers every built-in model, builder, processor,
task, runner, scheduler, vision encoder and conversation template, so a
config can name any of them.  Each subpackage's ``__init__`` imports its
modules explicitly: grep there to see what is registered.
"""
from pathlib import Path

from xraygpt.common.registry import registry

__version__ = "0.1.0"

registry.register_path("library_root", str(Path(__file__).resolve().parent))

# Registration side effects, in dependency order.
from xraygpt import processors  # noqa: E402,F401
from xraygpt import models  # noqa: E402,F401
from xraygpt import datasets  # noqa: E402,F401
from xraygpt import tasks  # noqa: E402,F401
from xraygpt import runners  # noqa: E402,F401
from xraygpt import conversation  # noqa: E402,F401

__all__ = ["registry", "__version__"]
