"""One global registry mapping config names to classes.

Configs say *what* to build by name (``arch: mini_gpt4``); the registry turns
those names into classes.  Unlike the ancestors' registry, an unknown name is
an error at the lookup site (with a close-match suggestion), and registering
a name twice is an error instead of a silent overwrite.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, Iterable, List, TypeVar
from xraygpt.common.errors import ConfigurationError

T = TypeVar("T")

# The kinds the project knows.  Third-party code may add more with
# ``registry.register(kind, name)``; the built-in ones get named helpers.
KINDS = (
    "builder",
    "model",
    "processor",
    "task",
    "runner",
    "lr_scheduler",
    "vision_encoder",
    "conversation_template",
)


class RegistryError(ConfigurationError, KeyError):
    """Raised for duplicate registrations and unknown names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0]) if self.args else ""


class Registry:
    """Name -> object tables, one per kind, plus library paths."""

    def __init__(self) -> None:
        self._tables: Dict[str, Dict[str, Any]] = {kind: {} for kind in KINDS}
        self._paths: Dict[str, str] = {}

    # ------------------------------------------------------------------ generic
    def register(self, kind: str, name: str, aliases: tuple = ()) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (and ``aliases``) for ``kind``."""

        def wrap(obj: T) -> T:
            table = self._tables.setdefault(kind, {})
            for key in (name, *aliases):
                if key in table and table[key] is not obj:
                    raise RegistryError(
                        f"{kind} name '{key}' is already registered to "
                        f"{_qualname(table[key])}; cannot register {_qualname(obj)} under it"
                    )
                table[key] = obj
            return obj

        return wrap

    def get(self, kind: str, name: str) -> Any:
        """Look ``name`` up; unknown names raise with a suggestion and the full list."""
        table = self._tables.get(kind)
        if table is None:
            raise RegistryError(f"unknown registry kind '{kind}' — known kinds: {', '.join(sorted(self._tables))}")
        if name in table:
            return table[name]
        names = sorted(table)
        hint = did_you_mean(name, names)
        listed = ", ".join(names) if names else "(none)"
        raise RegistryError(f"unknown {kind.replace('_', ' ')} '{name}'{hint} registered: {listed}")

    def names(self, kind: str) -> List[str]:
        return sorted(self._tables.get(kind, {}))

    def unregister(self, kind: str, name: str) -> None:
        """Remove a name (tests and plugins that re-register use this)."""
        self._tables.get(kind, {}).pop(name, None)

    # ------------------------------------------------------------ named helpers
    def register_builder(self, name: str, aliases: tuple = ()):
        return self.register("builder", name, aliases)

    def register_model(self, name: str, aliases: tuple = ()):
        return self.register("model", name, aliases)

    def register_processor(self, name: str, aliases: tuple = ()):
        return self.register("processor", name, aliases)

    def register_task(self, name: str, aliases: tuple = ()):
        return self.register("task", name, aliases)

    def register_runner(self, name: str, aliases: tuple = ()):
        return self.register("runner", name, aliases)

    def register_lr_scheduler(self, name: str, aliases: tuple = ()):
        return self.register("lr_scheduler", name, aliases)

    def register_vision_encoder(self, name: str, aliases: tuple = ()):
        return self.register("vision_encoder", name, aliases)

    def register_conversation_template(self, name: str, aliases: tuple = ()):
        return self.register("conversation_template", name, aliases)

    def get_builder_class(self, name: str):
        return self.get("builder", name)

    def get_model_class(self, name: str):
        return self.get("model", name)

    def get_processor_class(self, name: str):
        return self.get("processor", name)

    def get_task_class(self, name: str):
        return self.get("task", name)

    def get_runner_class(self, name: str):
        return self.get("runner", name)

    def get_lr_scheduler_class(self, name: str):
        return self.get("lr_scheduler", name)

    def get_vision_encoder_class(self, name: str):
        return self.get("vision_encoder", name)

    def get_conversation_template(self, name: str):
        return self.get("conversation_template", name)

    # -------------------------------------------------------------------- paths
    def register_path(self, name: str, path: str) -> None:
        if name in self._paths and self._paths[name] != str(path):
            raise RegistryError(f"path '{name}' is already registered as '{self._paths[name]}'")
        self._paths[name] = str(path)

    def get_path(self, name: str) -> str:
        if name not in self._paths:
            hint = did_you_mean(name, self._paths)
            raise RegistryError(f"unknown path '{name}'{hint} registered: {', '.join(sorted(self._paths))}")
        return self._paths[name]


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """`` — did you mean 'x'?`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(str(name), sorted(choices), n=1)
    return f" — did you mean '{close[0]}'?" if close else ""


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", "?")
    return f"{module}.{getattr(obj, '__qualname__', repr(obj))}"


registry = Registry()
