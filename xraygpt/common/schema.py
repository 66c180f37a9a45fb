"""Typed config sections and the one checker every section goes through.

Every key the runner reads is declared in :class:`RunConfig` with its type and
default, so a typo (``init_Lr``) or a wrong type (``max_epoch: five``) fails
before any work starts instead of being silently ignored.  The model's, the
datasets' and the encoders' schemas live beside their code and are checked by
the same :func:`check_section` (unknown key -> file + did-you-mean).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Type, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from xraygpt.common.decoding_settings import GenerationSettings
from xraygpt.common.errors import ConfigurationError
from xraygpt.common.registry import did_you_mean

T = TypeVar("T")


Source = Optional[Callable[[str], str]]
"""Which file (or ``--options``) set a key of the section, for the message."""


def _origin(source: Source, key: str) -> str:
    return f" in {source(key)}" if source else ""


def reject_unknown_keys(section: Iterable[str], schema: type | Sequence[str], where: str, *, source: Source = None,
                        error: Type[Exception] = ConfigurationError) -> None:
    """Raise ``error`` naming the first key of ``section`` that dataclass ``schema`` (or a list of names) lacks."""
    known = list(schema) if isinstance(schema, (list, tuple)) else [f.name for f in dataclasses.fields(schema)]
    for key in section:
        if key not in known:
            hint = did_you_mean(key, known)
            raise error(f"unknown key {where}.{key}{_origin(source, key)}{hint} (known: {', '.join(known)})")


def check_section(schema: Type[T], cfg: Mapping[str, Any] | DictConfig | None, where: str, *,
                  source: Source = None, error: Type[Exception] = ConfigurationError) -> T:
    """``cfg`` as a checked ``schema`` instance: unknown keys, wrong types, missing values and
    ``__post_init__`` checks raise ``error`` naming the key and the file it came from."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
    reject_unknown_keys(data, schema, where, source=source, error=error)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))
    except MissingMandatoryValue as exc:
        key = str(getattr(exc, "key", "") or "").split(".")[-1]
        raise error(f"missing required value {where}.{key}: set it{_origin(source, key)} "
                    f"or with --options {where}.{key}=...") from None
    except OmegaConfBaseException as exc:
        key = str(getattr(exc, "key", "") or "")
        expected = getattr(getattr(schema, "__dataclass_fields__", {}).get(key), "type", "?")
        raise error(f"bad value for {where}.{key}{_origin(source, key)}: expected {expected}, got {data.get(key)!r} "
                    f"({exc.msg if hasattr(exc, 'msg') else exc})") from None
    except ValueError as exc:
        raise error(f"{exc}{_origin(source, '')}") from None


def with_flags(section: T, **flags: Any) -> T:
    """``section`` with every command-line value that was given (not ``None``) put in, checked again.

    Flags override the config: ``with_flags(cfg.generation, max_new_tokens=args.max_new_tokens)``.
    """
    given = {name: value for name, value in flags.items() if value is not None}
    try:
        return dataclasses.replace(section, **given)
    except ConfigurationError:
        raise
    except ValueError as exc:
        raise ConfigurationError(f"{exc} (from the command line)") from None


@dataclass
class PreprocessSection:
    """Processors the model defaults name for inference (``demo``, ``generate``) when datasets name none."""

    vis_processor: Dict[str, Any] = field(default_factory=dict)
    """``{train: {name: ..., image_size: ...}, eval: {...}}``."""
    text_processor: Dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluationSection:
    """Local model files of the optional learned metrics (never downloaded; see evaluation/learned_metrics.py)."""

    chexbert_path: Optional[str] = None
    """CheXbert checkpoint, for CheXbert F1 (needs ``f1chexbert`` or ``RadEval`` installed)."""
    radgraph_path: Optional[str] = None
    """RadGraph model file, for RadGraph F1 (needs ``RadEval`` or ``radgraph`` installed)."""


@dataclass
class PretrainSection:
    """Stage 1 of the embedded default (``xraygpt.tasks.encoder_pretraining``): ViT + Q-Former trained on
    the phantoms' finding labels.  Its seed and device are ``run.seed`` and ``run.device``."""

    # 1000 x 32 images at 2e-3 (or 1500 x 32 at 3e-3) learned the pneumothorax label for some seeds only
    steps: int = 1000
    """Optimizer steps (``--steps`` overrides)."""
    lr: float = 3e-3
    """Peak learning rate of the one-cycle schedule (``--lr`` overrides)."""
    batch_size: int = 64
    """Images per step (``--batch-size`` overrides)."""
    warmup_fraction: float = 0.05
    """Share of the steps spent warming up."""
    weight_decay: float = 0.01
    positive_weight_power: float = 0.5
    """Each finding's positives weigh (negatives/positives) ** power in the loss: 0 = plain BCE, 1 = balanced.
    Without it the rare findings (pneumothorax 12 %, lesion 15 %) often stay at "absent" for the whole run."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"pretrain.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"pretrain.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")


SECTIONS = ("run", "model", "datasets", "preprocess", "evaluation", "generation", "pretrain")
"""The top-level sections of a job config."""


@dataclass
class JobConfig:
    """One job's checked sections (``Config.job``); the model and dataset schemas live beside their code."""

    run: "RunConfig"
    model: Any
    """The model class's typed config (``MiniGPT4Config``; the section as given when the class has no
    ``check_config``), ``None`` without ``model.arch``."""
    datasets: Dict[str, Any]
    """Dataset name -> its builder's ``DatasetSection``."""
    preprocess: PreprocessSection
    evaluation: EvaluationSection
    generation: GenerationSettings
    """How ``generate`` and ``evaluate`` decode (greedy, 300 new tokens unless set); their flags override it."""
    pretrain: PretrainSection


@dataclass
class RunConfig:
    # What to run.
    task: str = MISSING
    """Registered task name, e.g. ``image_text_pretrain``."""
    runner: str = "runner_base"
    """Registered runner name."""

    # Optimisation (keys and meaning kept from the original configs).
    lr_sched: str = "linear_warmup_cosine_lr"
    init_lr: float = 3e-5
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_steps: int = 0
    lr_decay_rate: Optional[float] = None
    """Per-epoch decay factor of ``linear_warmup_step_lr``."""
    weight_decay: float = 0.05
    max_epoch: int = 1
    iters_per_epoch: Optional[int] = None
    """Optimizer steps per epoch; ``null`` means one pass over the data."""
    batch_size_train: int = 1
    batch_size_eval: int = 1
    accum_grad_iters: int = 1
    max_grad_norm: Optional[float] = None
    num_workers: int = 0
    seed: int = 42

    # Precision.
    amp: bool = False
    amp_dtype: str = "bf16"
    """``bf16`` (no scaler) or ``fp16`` (with a gradient scaler)."""

    # Output, logging and checkpoints.
    output_dir: str = "output"
    job_id: Optional[str] = None
    """Sub-folder of ``output_dir``; a timestamp when unset."""
    log_freq: int = 10
    save_freq: int = 0
    """Save every N optimizer steps as well as at each epoch end (0: epoch ends only)."""
    keep_last_n: int = 2
    resume_ckpt_path: Optional[str] = None
    """A checkpoint folder to resume from, or ``latest``: the newest complete checkpoint of this job (a fresh
    start when it has none; a corrupt newest one is set aside and the previous one used)."""
    overwrite: bool = False
    """Replace the run already in ``output_dir/job_id`` (``train.py --overwrite``); without it such a job is
    refused at start-up unless resumed."""

    # Splits and evaluation.
    evaluate: bool = False
    train_splits: List[str] = field(default_factory=lambda: ["train"])
    valid_splits: List[str] = field(default_factory=list)
    test_splits: List[str] = field(default_factory=list)
    group_by_length: bool = False
    """Batch samples of similar caption length together (less padding)."""
    valid_generate: int = 0
    """Also generate text for this many valid samples each epoch and score it (0: loss only, -1: all)."""
    valid_max_new_tokens: int = 160
    """Generation length limit for ``valid_generate``."""

    # Devices and distribution.
    device: str = "cuda"
    """``cuda``, ``cuda:N`` or ``cpu``; ``cuda`` falls back to CPU with a warning when no GPU exists."""
    world_size: int = 1
    dist_url: str = "env://"
    distributed: bool = True
    """Use torch.distributed when launched by torchrun (ignored otherwise)."""
    strategy: str = "ddp"
    """``ddp`` replicates the model on every process; ``fsdp`` shards it with FSDP2 (xraygpt/runners/fsdp.py)."""
    fsdp_shard_frozen: bool = False
    """With ``fsdp``: also shard the frozen vision encoder and Q-Former (default: replicated on every process)."""
    fsdp_param_dtype: str = "auto"
    """With ``fsdp``: compute dtype of the gathered weights; ``auto`` is bf16 on GPUs and fp32 on CPU."""
    fsdp_reduce_dtype: str = "fp32"
    """With ``fsdp``: dtype in which gradients are reduced across processes."""
    activation_checkpointing: bool = False
    """Recompute the LLM decoder layers in the backward pass instead of keeping their activations."""
    save_checkpoints: bool = True
    """false: write no checkpoints and no model_best export (benchmarks, throw-away runs)."""

    # Data policy and speed.
    on_bad_sample: str = "error"
    """``error`` stops on an unreadable sample; ``skip`` logs it, counts it and goes on."""
    cache_visual_features: bool = False
    """Train from cached Q-Former outputs (frozen encoders and eval processor only)."""
    cache_dir: Optional[str] = None
    allow_cache_with_augmentation: bool = False

    def __post_init__(self) -> None:
        checks = {
            "amp_dtype": (self.amp_dtype, ("bf16", "fp16")),
            "on_bad_sample": (self.on_bad_sample, ("error", "skip")),
            "strategy": (self.strategy, ("ddp", "fsdp")),
            "fsdp_param_dtype": (self.fsdp_param_dtype, ("auto", "bf16", "fp16", "fp32")),
            "fsdp_reduce_dtype": (self.fsdp_reduce_dtype, ("bf16", "fp32")),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed and value != MISSING:
                raise ValueError(f"run.{key} must be one of {allowed}, got {value!r}")
        if self.accum_grad_iters < 1:
            raise ValueError(f"run.accum_grad_iters must be >= 1, got {self.accum_grad_iters}")
        import torch

        try:
            torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"run.device {self.device!r} is not a torch device (use cpu, cuda or cuda:N)") from None
