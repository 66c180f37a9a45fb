"""Layered YAML configuration.

Layers, later ones winning:
1. the model's default YAML, chosen by ``model.arch`` + ``model.model_type``;
2. each dataset's default YAML (``xraygpt/configs/datasets/<name>/defaults.yaml``);
3. the user's YAML (``--cfg-path``);
4. command-line overrides (``--options key=value ...``).

Every section is checked when the config is loaded (``run`` against
:class:`~xraygpt.common.schema.RunConfig`, the model and each dataset by their classes, ...).
Relative paths inside configs are resolved against the *current working
directory* (as in the original project, whose commands run from the repo
root); ``${cfg_dir:}`` expands to the folder of the user YAML when a path
should travel with its config file.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from xraygpt.common.cli import add_debug_argument
from xraygpt.common.registry import did_you_mean, registry
from xraygpt.common.decoding_settings import GenerationSettings
from xraygpt.common.schema import (SECTIONS, EvaluationSection, JobConfig, PreprocessSection, PretrainSection, RunConfig,
                                   check_section, reject_unknown_keys)
from xraygpt.common.errors import ConfigurationError

logger = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
_UNSET = object()


class ConfigError(ConfigurationError):
    """A configuration problem, with the key and the file it came from."""


def _library_path(relative: str) -> Path:
    path = Path(relative)
    return path if path.is_absolute() else PACKAGE_ROOT / path


def load_yaml(path: str | Path, what: str = "config file") -> DictConfig:
    """Load one YAML file, turning a missing file or a syntax error into a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path} (check the path; relative paths are taken from {Path.cwd()})")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"cannot parse {what} {path}: {exc}") from exc
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level, got {type(cfg).__name__}")
    return cfg


def parse_options(options: Optional[Sequence[str]]) -> DictConfig:
    """``["a.b=1", "c=[1,2]"]`` -> nested DictConfig with YAML-typed values."""
    if not options:
        return OmegaConf.create({})
    items: List[str] = []
    for opt in options:
        if "=" not in opt:
            raise ConfigError(f"--options expects key=value pairs, got '{opt}' (e.g. run.init_lr=1e-4)")
        items.append(opt)
    try:
        return OmegaConf.from_dotlist(items)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse --options {items}: {exc}") from exc


class Config:
    """Merged configuration of one job, every section checked when it is loaded.

    Typed sections (also together as ``job``): ``run`` (:class:`RunConfig`), ``model`` (the model class's
    config, e.g. ``MiniGPT4Config``), ``datasets`` (name -> the builder's ``DatasetSection``), ``preprocess``,
    ``evaluation``, ``generation`` (:class:`GenerationSettings`) and ``pretrain`` (:class:`PretrainSection`).
    ``run_cfg``, ``model_cfg`` and ``datasets_cfg`` are the same values as DictConfigs (``config``, written
    beside the checkpoints); code reads the typed sections.
    """

    def __init__(self, args: argparse.Namespace | Dict[str, Any]):
        if isinstance(args, dict):
            args = argparse.Namespace(**args)
        self.args = args
        cfg_path = getattr(args, "cfg_path", None)
        if not cfg_path:
            raise ConfigError("no config given: pass --cfg-path path/to/config.yaml")
        self.cfg_path = Path(cfg_path)
        options = list(getattr(args, "options", None) or []) + list(getattr(args, "cfg_options", None) or [])

        user_cfg = load_yaml(self.cfg_path, "user config")
        override_cfg = parse_options(options)
        _register_cfg_dir_resolver(self.cfg_path.resolve().parent)

        # The user file and the overrides decide which defaults to load.
        head = OmegaConf.merge(user_cfg, override_cfg)
        self._layers: List[Tuple[str, DictConfig]] = []
        model_default = self._model_defaults(head)
        if model_default is not None:
            self._layers.append(model_default)
        self._layers.extend(self._dataset_defaults(head))
        self._layers.append((str(self.cfg_path), user_cfg))
        self._layers.append(("--options", override_cfg))

        merged = OmegaConf.merge(*[layer for _, layer in self._layers])
        merged.setdefault("run", {})
        merged.setdefault("model", {})
        merged.setdefault("datasets", {})
        merged["run"] = self._validated_run(merged["run"])
        self._check_sections(merged)
        self.config: DictConfig = merged

    # ------------------------------------------------------------------ layers
    def _model_defaults(self, head: DictConfig) -> Optional[Tuple[str, DictConfig]]:
        model = head.get("model")
        if not model or "arch" not in model:
            return None
        model_cls = registry.get_model_class(model.arch)
        model_type = model.get("model_type", None) or getattr(model_cls, "DEFAULT_MODEL_TYPE", None)
        path_table: Dict[str, str] = getattr(model_cls, "PRETRAINED_MODEL_CONFIG_DICT", {}) or {}
        if model_type is None:
            return None
        if model_type not in path_table:
            hint = did_you_mean(model_type, path_table)
            raise ConfigError(
                f"unknown model.model_type '{model_type}' for arch '{model.arch}'{hint} "
                f"known: {', '.join(sorted(path_table)) or '(none)'}"
            )
        path = _library_path(path_table[model_type])
        cfg = load_yaml(path, f"default config of model {model.arch}/{model_type}")
        return str(path), OmegaConf.create({"model": cfg.get("model", {}), "preprocess": cfg.get("preprocess", {})})

    def _dataset_defaults(self, head: DictConfig) -> Iterable[Tuple[str, DictConfig]]:
        datasets = head.get("datasets") or {}
        for name in datasets:
            path = default_dataset_config_path(name)
            cfg = load_yaml(path, f"default config of dataset '{name}'")
            section = cfg.get("datasets", {}).get(name)
            if section is None:
                raise ConfigError(f"{path} must define datasets.{name}")
            yield str(path), OmegaConf.create({"datasets": {name: section}})

    def _validated_run(self, run: DictConfig) -> DictConfig:
        self.run = check_section(RunConfig, run, "run", source=lambda key: self._source_of("run", key), error=ConfigError)
        return OmegaConf.structured(self.run)

    def _check_sections(self, merged: DictConfig) -> None:
        """Every section, before any dataset or model is built: a typo fails here, in seconds."""
        reject_unknown_keys(merged, list(SECTIONS), "config", source=self._source_of,
                            error=ConfigError)
        model = merged.get("model") or {}
        self.model = None
        if "arch" in model:
            check = getattr(registry.get_model_class(model.arch), "check_config", None)
            self.model = check(model, source=lambda key: self._source_of("model", key)) if check else model
        self.datasets = {}
        for name, section in (merged.get("datasets") or {}).items():
            check = getattr(registry.get_builder_class(name), "check_config", None)
            where = f"datasets.{name}"
            self.datasets[name] = check(section, source=lambda key, where=where: self._source_of(where, key)) if check else section
        preprocess = self._checked(PreprocessSection, merged, "preprocess")
        for where, processors in [("preprocess", preprocess)] + [(f"datasets.{n}", d) for n, d in self.datasets.items()]:
            for kind in ("vis_processor", "text_processor"):
                for stage, spec in (getattr(processors, kind, None) or {}).items():
                    if spec and spec.get("name"):
                        registry.get_processor_class(spec["name"])  # unknown name: did-you-mean
        self.preprocess = preprocess
        self.evaluation = self._checked(EvaluationSection, merged, "evaluation")
        self.generation = self._checked(GenerationSettings, merged, "generation")
        self.pretrain = self._checked(PretrainSection, merged, "pretrain")

    def _checked(self, schema: type, merged: DictConfig, section: str) -> Any:
        return check_section(schema, merged.get(section), section, source=lambda key: self._source_of(section, key),
                             error=ConfigError)

    def _source_of(self, section: str, key: str = "") -> str:
        """The last layer (file or ``--options``) that sets ``section.key`` (a dotted path), for messages."""
        path = f"{section}.{key}" if key else section
        for name, layer in reversed(self._layers):
            if OmegaConf.select(layer, path, default=_UNSET, throw_on_missing=False) is not _UNSET:
                return name
        return str(self.cfg_path)

    # -------------------------------------------------------------- accessors
    @property
    def job(self) -> JobConfig:
        return JobConfig(run=self.run, model=self.model, datasets=self.datasets, preprocess=self.preprocess,
                         evaluation=self.evaluation, generation=self.generation, pretrain=self.pretrain)

    @property
    def run_cfg(self) -> DictConfig:
        return self.config.run

    @property
    def model_cfg(self) -> DictConfig:
        return self.config.model

    @property
    def datasets_cfg(self) -> DictConfig:
        return self.config.datasets

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(self.config, resolve=True)

    def pretty_print(self) -> None:
        logger.info("\n===== resolved config (%s) =====\n%s", self.cfg_path, self.to_yaml())

    def __repr__(self) -> str:
        return f"Config({self.cfg_path})"


def default_dataset_config_path(name: str) -> Path:
    """Where a dataset's defaults live: the builder's own table first, else the convention."""
    try:
        builder_cls = registry.get_builder_class(name)
    except KeyError:
        builder_cls = None
    table = getattr(builder_cls, "DATASET_CONFIG_DICT", None) or {}
    relative = table.get("default", f"configs/datasets/{name}/defaults.yaml")
    return _library_path(relative)


_CFG_DIR: List[Path] = [Path.cwd()]


def _register_cfg_dir_resolver(folder: Path) -> None:
    _CFG_DIR[0] = folder
    if OmegaConf.has_resolver("cfg_dir"):
        return
    try:  # omegaconf >= 2.4; its older register_resolver has other semantics and no `replace`
        OmegaConf.register_resolver("cfg_dir", lambda: str(_CFG_DIR[0]), replace=True)
    except TypeError:
        OmegaConf.register_new_resolver("cfg_dir", lambda: str(_CFG_DIR[0]))


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags every entry point shares."""
    parser.add_argument("--cfg-path", required=True, help="path to the job's YAML config")
    parser.add_argument(
        "--options",
        "--cfg-options",
        dest="options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config values, e.g. run.init_lr=1e-4 model.lora.r=8 run.train_splits=[train,val]",
    )
    return add_debug_argument(parser)
