"""Building processors from config sections such as ``{name: blip2_image_eval, image_size: 224}``."""
from __future__ import annotations

import inspect
from typing import Any, Mapping

from xraygpt.common.registry import registry


def build_processor(cfg: Mapping[str, Any] | None) -> Any:
    """Instantiate the registered processor ``cfg["name"]`` with the remaining keys.

    Keys are bound to the constructor's signature, so a typo (``imagesize``)
    fails here with the list of accepted keys instead of being ignored.
    ``None`` (no processor configured) returns ``None``.
    """
    if cfg is None:
        return None
    params = _to_dict(cfg)
    if "name" not in params:
        raise ValueError(f"processor config {params} has no 'name' (e.g. name: blip2_image_eval)")
    name = params.pop("name")
    cls = registry.get_processor_class(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"processor '{name}' got unknown option(s) {unknown}; accepted: {accepted}")
    return cls(**params)


def _to_dict(cfg: Mapping[str, Any]) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return dict(OmegaConf.to_container(cfg, resolve=True))
    except ImportError:  # omegaconf is a core dependency; keep plain dicts working regardless
        pass
    return dict(cfg)
