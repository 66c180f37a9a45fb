"""``run.strategy: fsdp``: shard the model with PyTorch's FSDP2 (``fully_shard``).

Layout (the usual one for decoder LLMs): every LLM decoder layer is its own
``fully_shard`` unit, gathered just before it runs and freed after, and the
root unit (the whole model) holds what is left: embeddings, final norm, LM
head and the image-to-LLM projection.  The frozen image side has no
gradients to reduce, so by default it stays out of FSDP (``ignored_params``:
a full copy on every process, no communication); ``run.fsdp_shard_frozen``
makes each of its encoders a unit too, which saves their memory at the price
of an all-gather per step.

The model says which parts are which (``language_model()``,
``frozen_image_parts()``, ``image_encoders()``, see ``MiniGPT4``); a model
without ``language_model()`` trains with ``run.strategy: ddp``.

Activation checkpointing uses the LLM's own ``gradient_checkpointing_enable``
(torch.utils.checkpoint, non-reentrant) rather than wrapping layers in
``checkpoint_wrapper``: it leaves parameter names unchanged (our state dicts,
LoRA names and the original-format export keep working), it works when the
layer inputs need no gradient (LoRA on a frozen LLM), and it recomputes only
the layer's ``forward``: FSDP2's gather/free hooks on the layer stay outside
the recomputed part (the backward gathers the layer through its own hook).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Iterator, List, Optional, Set

import torch
import torch.distributed as dist
from torch import nn

from xraygpt.common.dist_utils import DistInfo, process_group_backend
from xraygpt.common.errors import ConfigurationError
from xraygpt.common.schema import RunConfig

logger = logging.getLogger(__name__)


def language_model(model: nn.Module) -> nn.Module:
    """The LLM whose decoder layers FSDP shards (the model's ``language_model()``)."""
    find = getattr(model, "language_model", None)
    if not callable(find):
        raise ConfigurationError(
            f"run.strategy: fsdp shards an LLM's decoder layers, but {type(model).__name__} has no "
            "language_model(); use run.strategy: ddp for this model"
        )
    return find()


def image_side_parameters(model: nn.Module) -> List[nn.Parameter]:
    """Every parameter of the model's ``frozen_image_parts()`` (none for a model without them)."""
    found: List[nn.Parameter] = []
    for part in getattr(model, "frozen_image_parts", dict)().values():
        found += [part] if isinstance(part, nn.Parameter) else list(part.parameters())
    return found


def decoder_layers(model: nn.Module) -> List[nn.Module]:
    """The LLM's transformer blocks (through a peft LoRA wrapper too)."""
    layers = getattr(language_model(model).get_decoder(), "layers", None)
    if not layers:
        raise ConfigurationError(f"cannot find the decoder layers of {type(language_model(model)).__name__} "
                                 "(expected get_decoder().layers)")
    return list(layers)


def mixed_precision(run: RunConfig, device: torch.device):
    """bf16 gathered weights and fp32 gradient reduction on GPUs by default; fp32 throughout on CPU."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from xraygpt.models.llm import resolve_dtype

    name = run.fsdp_param_dtype
    if name == "auto":
        name = "bf16" if device.type == "cuda" else "fp32"
    return MixedPrecisionPolicy(param_dtype=resolve_dtype(name), reduce_dtype=resolve_dtype(run.fsdp_reduce_dtype))


def ensure_process_group(dist_info: DistInfo) -> None:
    """FSDP2 needs a process group even for one process: a plain ``python train.py`` gets a private one."""
    if dist.is_initialized():
        return
    backend = process_group_backend(dist_info.device)
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                            device_id=dist_info.device if dist_info.device.type == "cuda" else None)


def _frozen_image_params(model: nn.Module) -> Set[nn.Parameter]:
    return {p for p in image_side_parameters(model) if not p.requires_grad}


def checkpoint_decoder_layers(model: nn.Module) -> int:
    """Recompute each LLM decoder layer in the backward pass; returns how many layers it covers."""
    llm = language_model(model)
    kwargs = {"use_reentrant": False}
    if hasattr(llm, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns there
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return len(decoder_layers(model))


def shard_model(model: nn.Module, run: RunConfig, dist_info: DistInfo) -> nn.Module:
    """Apply FSDP2 in place (call before building the optimizer: parameters become DTensors)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    config = getattr(model, "config", None)
    if getattr(config, "compile_llm", False):
        # Regional compile wraps already-sharded blocks lazily, with FSDP's hooks inside the compiled call:
        # a composition we have not measured, so sharded runs stay eager.
        logger.warning("model.compile_llm is not applied with run.strategy: fsdp (the decoder layers run eagerly)")
        model.config = dataclasses.replace(config, compile_llm=False)
    ensure_process_group(dist_info)
    mesh = init_device_mesh(dist_info.device.type, (dist.get_world_size(),))
    policy = mixed_precision(run, dist_info.device)
    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    ignored: Optional[Set[nn.Parameter]] = None
    if run.fsdp_shard_frozen:
        keep_dtype = MixedPrecisionPolicy()  # frozen encoders compute in the dtype they were loaded in
        for encoder in getattr(model, "image_encoders", list)():
            fully_shard(encoder, mesh=mesh, mp_policy=keep_dtype)
    else:
        ignored = _frozen_image_params(model) or None
    if getattr(model, "_encoder_graph", None) is not None:
        # The graphed frozen encoder would be captured while FSDP's all-gather streams are in flight (or
        # would have to capture the all-gathers themselves): sharded runs call it eagerly.
        model._encoder_graph = None
    fully_shard(model, mesh=mesh, mp_policy=policy, ignored_params=ignored)
    logger.info("FSDP2: %d decoder layers + root sharded over %d process(es), params %s, reduce %s, frozen image "
                "side %s", len(layers), dist.get_world_size(), policy.param_dtype or "as loaded", policy.reduce_dtype,
                "sharded" if run.fsdp_shard_frozen else "replicated")
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gathered_root(model: nn.Module) -> Iterator[None]:
    """Root weights gathered, for calls that do not go through ``model.forward`` (e.g. ``generate``)."""
    if not is_sharded(model):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()
