"""``runner_base``: the training loop behind ``train.py``.

Reads top to bottom: set up (devices, DDP, optimizer, schedule, precision),
maybe resume, then epochs of optimizer steps, each step accumulating
``accum_grad_iters`` micro-batches; validation, checkpoints and logs at epoch
ends (and every ``save_freq`` steps).  The model contract it relies on:
``model(samples) -> {"loss": scalar[, "num_target_tokens": int]}`` and
``model.trainable_state_dict()``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import ConcatDataset, Dataset

from xraygpt.common import checkpointing as ckpt
from xraygpt.common.config import Config
from xraygpt.common.dist_utils import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
)
from xraygpt.common.errors import ConfigurationError, DataError, XrayGPTError
from xraygpt.common.fileio import atomic_write_text, atomic_write_with
from xraygpt.common.optims import build_optimizer, build_scheduler
from xraygpt.common.registry import registry
from xraygpt.common.schema import RunConfig
from xraygpt.runners import distributed_checkpoint as dcp_ckpt
from xraygpt.runners import fsdp
from xraygpt.runners.feature_cache import (
    FeatureCache,
    FeatureCacheError,
    check_frozen_visual_path,
    draws_differ,
    encoder_fingerprint,
)
from xraygpt.runners.data import SKIPPED_KEY, BatchStream, SeededSamples, make_loader, to_device
from xraygpt.runners.job_folder import JobPlan, plan_job
from xraygpt.runners.metrics_log import MetricsLog, format_eta
from xraygpt.runners.samplers import ResumableBatchSampler

logger = logging.getLogger("xraygpt.train")

TOKEN_COUNT_KEY = "num_target_tokens"
"""Optional model output: tokens behind ``loss``; lets accumulation and DDP weight micro-batches by tokens."""


@dataclass
class TrainState:
    """Counters saved in every checkpoint."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_metric: Optional[float] = None
    best_checkpoint: Optional[str] = None
    history: List[Dict[str, Any]] = field(default_factory=list)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def trainable_state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    model = unwrap(model)
    if hasattr(model, "trainable_state_dict"):
        return model.trainable_state_dict()
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def _does_not_fit(path: Path, exc: Exception) -> Exception:
    return ckpt.CheckpointError(f"checkpoint {path} does not fit this run's optimizer/schedule ({exc}); "
                                "was it written with different trainable parts or run settings?")


@registry.register_runner("runner_base")
class RunnerBase:
    def __init__(
        self,
        cfg: Config,
        task: Any,
        model: torch.nn.Module,
        datasets: Dict[str, Dataset],
        dist_info: Optional[DistInfo] = None,
    ):
        self.cfg, self.task = cfg, task
        self.run_config: RunConfig = cfg.run
        """The checked ``run:`` section; every setting the loop reads comes from here."""
        self.dist = dist_info or init_distributed(self.run_config)
        self.device = self.dist.device
        self.model = model.to(self.device)
        self.datasets = self.image_datasets = datasets
        self.amp_dtype = self._amp_dtype()
        self.cache_skipped = 0
        """Bad training samples the feature cache left out (the same count on every rank)."""
        self.job_dir = self._job_dir()
        self.ckpt_dir = self.job_dir / "checkpoints"
        if self.run_config.evaluate:  # validate only: the job folder (maybe a finished run) is not written
            self.plan, self.log = JobPlan(), MetricsLog(None, enabled=False)
        else:  # before any slow work: a job folder this run may not use is refused now, not at the first save
            self.plan = self._plan_job()
            self.log = MetricsLog(self.job_dir, enabled=self.dist.is_main,
                                  purge_step=self.plan.resumed_step + 1 if self.plan.resume_from else None)
            if self.dist.is_main:
                atomic_write_text(self.job_dir / "config.yaml", cfg.to_yaml())
        if self.run_config.cache_visual_features:
            self.datasets = self._cached_datasets()

    # ------------------------------------------------------------------ set-up
    def _amp_dtype(self) -> Optional[torch.dtype]:
        if not self.run_config.amp:
            return None
        if self.run_config.amp_dtype == "bf16":
            if self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
                logger.warning("this GPU has no bf16: using fp16 autocast with a gradient scaler")
                return torch.float16
            return torch.bfloat16
        return torch.float16

    def _cached_datasets(self) -> Dict[str, Dataset]:
        """Swap the train/valid splits for views that read cached Q-Former outputs."""
        rc = self.run_config
        check_frozen_visual_path(self.model)
        train = self._split(rc.train_splits)
        if train is not None and draws_differ(train, rc.seed)[0] and not rc.allow_cache_with_augmentation:
            raise FeatureCacheError(
                "run.cache_visual_features would freeze one random augmentation per image: the training image "
                "processor is random (e.g. blip2_image_train). Use the eval processor (blip2_image_eval) for "
                "training, or set run.allow_cache_with_augmentation: true to accept fixed augmentations."
            )
        root = Path(rc.cache_dir) if rc.cache_dir else Path(rc.output_dir) / "feature_cache"
        cache = FeatureCache(self.model, root, encoder_fingerprint(self.model), self.dist,
                             rc.batch_size_eval, rc.num_workers, self.autocast)
        cached = dict(self.datasets)
        for split in dict.fromkeys([*rc.train_splits, *rc.valid_splits]):
            if cached.get(split) is not None:
                cached[split] = cache.wrap(cached[split], rc.seed, split)
        # Bad training samples left out of the cache (on_bad_sample: skip); the same number on every rank.
        self.cache_skipped = sum(cached[s].skipped for s in dict.fromkeys(rc.train_splits) if cached.get(s) is not None)
        return cached

    def _plan_job(self) -> JobPlan:
        """Decide on the main process whether this run may use its job folder; every rank gets the answer."""
        outcome: Any = None
        if self.dist.is_main:
            try:
                outcome = plan_job(self.job_dir, self.run_config.resume_ckpt_path, self.run_config.overwrite)
            except XrayGPTError as exc:
                outcome = exc
        outcome = broadcast_object(outcome)
        if isinstance(outcome, XrayGPTError):
            raise outcome
        return outcome

    def _job_dir(self) -> Path:
        job_id = self.run_config.job_id or datetime.now().strftime("%Y%m%d%H%M%S")
        job_id = broadcast_object(job_id)
        return Path(self.run_config.output_dir) / job_id

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _split(self, names: List[str], images: bool = False) -> Optional[Dataset]:
        """The named splits, concatenated (None when absent); ``images``: bypass the feature cache."""
        source = self.image_datasets if images else self.datasets
        parts = [source[name] for name in names if name in source and source[name] is not None]
        missing = [name for name in names if name not in source]
        if missing:
            raise KeyError(f"split(s) {missing} not built; available: {sorted(source)} (check run.*_splits)")
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else ConcatDataset(parts)

    def _train_stream(self) -> BatchStream:
        rc = self.run_config
        dataset = self._split(rc.train_splits)
        if dataset is None:
            raise DataError(f"no training data: run.train_splits {rc.train_splits} built no samples "
                            f"(built splits: {sorted(k for k, v in self.datasets.items() if v is not None)})")
        lengths = self.task.sample_lengths(dataset) if rc.group_by_length else None
        sampler = ResumableBatchSampler(
            len(dataset), rc.batch_size_train, rank=self.dist.rank, world_size=self.dist.world_size,
            shuffle=True, seed=rc.seed, drop_last=True, lengths=lengths,
        )
        return BatchStream(SeededSamples(dataset, rc.seed), sampler, rc.num_workers, self.device.type == "cuda")

    @property
    def _sharded(self) -> bool:
        return self.run_config.strategy == "fsdp"

    def _prepare_parallel(self) -> None:
        """Activation checkpointing and, with ``run.strategy: fsdp``, FSDP2 (before the optimizer sees the weights)."""
        rc = self.run_config
        if rc.activation_checkpointing:
            logger.info("activation checkpointing: %d decoder layers", fsdp.checkpoint_decoder_layers(self.model))
        if self._sharded:
            if rc.valid_generate and self.dist.distributed:
                raise ConfigurationError(
                    "run.valid_generate generates on rank 0 alone, which a sharded model cannot do: set it to 0 with "
                    "run.strategy: fsdp on several processes and score model_best.safetensors with xraygpt.evaluate"
                )
            fsdp.shard_model(self.model, rc, self.dist)

    def _wrap(self) -> torch.nn.Module:
        if not self.dist.distributed or self._sharded:
            return self.model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=device_ids)

    # ---------------------------------------------------------------- training
    def train(self) -> Dict[str, Any]:
        rc = self.run_config
        stream = self._train_stream()
        accum = rc.accum_grad_iters
        iters_per_epoch = rc.iters_per_epoch or max(stream.batches_per_epoch // accum, 1)
        self._prepare_parallel()
        fused = True if self._sharded and self.device.type == "cuda" else None
        optimizer = build_optimizer(self.model, rc, fused=fused)
        scheduler = build_scheduler(optimizer, rc, iters_per_epoch)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        state = TrainState()
        if self.plan.resume_from is not None:
            state = self._resume(self.plan.resume_from, optimizer, scheduler, scaler, stream)
        model = self._wrap()
        total_steps = rc.max_epoch * iters_per_epoch
        self._log_start(iters_per_epoch, total_steps, accum)

        window_start, window_samples, window_losses = time.perf_counter(), 0, []
        run_start, run_start_step = time.perf_counter(), state.global_step
        for epoch in range(state.epoch, rc.max_epoch):
            state.epoch = epoch
            model.train()
            while state.step_in_epoch < iters_per_epoch:
                loss, samples = self._optimizer_step(model, stream, optimizer, scaler, accum)
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                state.step_in_epoch += 1
                state.global_step += 1
                window_samples += samples
                window_losses.append(loss)
                if state.global_step % max(rc.log_freq, 1) == 0 or state.step_in_epoch == iters_per_epoch:
                    now = time.perf_counter()
                    rate = window_samples / max(now - window_start, 1e-9)
                    per_step = (now - run_start) / max(state.global_step - run_start_step, 1)
                    eta = format_eta(per_step * (total_steps - state.global_step))
                    mean_loss = sum(window_losses) / len(window_losses)
                    self._log_train(state, epoch, iters_per_epoch, mean_loss, lr, rate, eta)
                    window_start, window_samples, window_losses = now, 0, []
                if rc.save_freq and state.global_step % rc.save_freq == 0 and state.step_in_epoch < iters_per_epoch:
                    self._save(state, optimizer, scheduler, scaler, stream)
            state.epoch, state.step_in_epoch = epoch + 1, 0
            val_metrics = self.validate()
            is_best = bool(val_metrics) and self._is_best(state, val_metrics)
            if val_metrics:
                self._record_validation(state, epoch, val_metrics)
            if is_best:
                state.best_metric = float(val_metrics["loss"])
                state.best_checkpoint = self._checkpoint_path(state).name
            self._save(state, optimizer, scheduler, scaler, stream)
            if is_best:
                self._write_best_pointer(state)
        self._report_skipped(stream)
        self._export_best_weights(state)
        self._test(state)
        self.log.close()
        self.task.after_training(self)
        barrier()
        return asdict(state)

    def _optimizer_step(self, model, stream: BatchStream, optimizer, scaler, accum: int) -> tuple[float, int]:
        """One optimizer step over ``accum`` micro-batches; returns (mean loss, samples seen by this rank)."""
        optimizer.zero_grad(set_to_none=True)
        weighted_loss = torch.zeros(2, dtype=torch.float64)  # [sum(loss * weight), sum(weight)]
        samples = 0
        for micro in range(accum):
            batch = to_device(stream.next(), self.device)
            samples += _batch_size(batch)
            sync = micro == accum - 1 or not isinstance(model, DistributedDataParallel)
            with (contextlib.nullcontext() if sync else model.no_sync()):
                with self.autocast():
                    output = self.task.train_step(model, batch)
                loss = output["loss"]
                weight = float(output.get(TOKEN_COUNT_KEY, 1))
                scaler.scale(loss.float() * (weight / accum)).backward()
            weighted_loss += torch.tensor([loss.detach().double().item() * weight, weight], dtype=torch.float64)
        all_reduce_sum(weighted_loss)
        if float(weighted_loss[1]) == 0.0:
            raise ValueError(f"a training step had no target tokens (data position {stream.position()}): "
                             "are the captions empty, or is model.max_txt_len too small for the prompt?")
        mean_loss = float(weighted_loss[0] / weighted_loss[1])
        if not math.isfinite(mean_loss) and not scaler.is_enabled():
            raise FloatingPointError(
                f"training loss became {mean_loss} at step {stream.position()}: lower run.init_lr, "
                "set run.max_grad_norm, or check the data"
            )
        params = [p for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        scaler.unscale_(optimizer)
        # DDP averaged over ranks and each micro-batch was scaled by weight/accum:
        # rescale so the gradient is the weight-averaged gradient of the whole global batch.
        factor = accum * self.dist.world_size / float(weighted_loss[1])
        if factor != 1.0 and params:
            torch._foreach_mul_([p.grad for p in params], factor)
        if self.run_config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, self.run_config.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        return mean_loss, samples

    # -------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self, splits: Optional[List[str]] = None) -> Dict[str, float]:
        """Loss over ``splits`` (default: the valid splits) plus the task's generation metrics; {} without data."""
        names = self.run_config.valid_splits if splits is None else list(splits)
        dataset = self._split(names) if names else None
        if dataset is None:
            return {}
        model = self.model
        model.eval()
        sampler = ResumableBatchSampler(
            len(dataset), self.run_config.batch_size_eval, rank=self.dist.rank, world_size=self.dist.world_size,
            shuffle=False, drop_last=False,
        )
        sums = torch.zeros(2, dtype=torch.float64)
        for batch in make_loader(dataset, sampler, self.run_config.num_workers, self.device.type == "cuda"):
            if batch is None:  # every sample of the batch was bad and skipped
                continue
            batch.pop(SKIPPED_KEY, None)
            batch = to_device(batch, self.device)
            with self.autocast():
                output = self.task.valid_step(model, batch)
            weight = float(output.get(TOKEN_COUNT_KEY, _batch_size(batch)))
            sums += torch.tensor([float(output["loss"]) * weight, weight], dtype=torch.float64)
        all_reduce_sum(sums)
        metrics = {"loss": float(sums[0] / max(float(sums[1]), 1e-12))}
        with fsdp.gathered_root(self.model) if self.run_config.valid_generate else contextlib.nullcontext():
            metrics.update(self.task.generation_metrics(self, self._split(names, images=True)))
        model.train()
        return metrics

    def _export_best_weights(self, state: TrainState) -> None:
        """``<job>/model_best.safetensors``: the best (else last) trainable weights, for ``model.ckpt``."""
        if not self.dist.is_main or not self.run_config.save_checkpoints:
            return
        name = state.best_checkpoint or self._checkpoint_path(state).name
        source = self.ckpt_dir / name / ckpt.WEIGHTS_FILE
        target = self.job_dir / "model_best.safetensors"
        if self._sharded:
            dcp_ckpt.export_weights(self.ckpt_dir / name, target)
            logger.info("weights of %s gathered into %s (use it as model.ckpt)", name, target)
            return
        atomic_write_with(target, lambda tmp: shutil.copyfile(source, tmp))
        logger.info("weights of %s exported to %s (use it as model.ckpt)", name, target)

    def _test(self, state: TrainState) -> None:
        """Loss of the final weights on ``run.test_splits`` (the quick start also generates and scores them)."""
        if not self.run_config.test_splits:
            return
        metrics = self.validate(self.run_config.test_splits)
        if metrics and self.dist.is_main:
            logger.info("test splits %s after training: loss %.4f", self.run_config.test_splits, metrics["loss"])
            self.log.write("test", state.global_step, metrics)

    def _is_best(self, state: TrainState, metrics: Dict[str, float]) -> bool:
        return state.best_metric is None or metrics["loss"] < state.best_metric

    # ------------------------------------------------------------- checkpoints
    def _training_state(self, state: TrainState, optimizer, scheduler, scaler, stream: BatchStream) -> Dict[str, Any]:
        return {
            "optimizer": {} if self._sharded else optimizer.state_dict(),  # sharded: in the DCP files
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "rng": ckpt.capture_rng_state(),
            "counters": {"epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "global_step": state.global_step},
            "data_position": self._all_ranks(stream.position()),
            "best": {"metric": state.best_metric, "checkpoint": state.best_checkpoint},
            "world_size": self.dist.world_size,
        }

    def _all_ranks(self, value: Any) -> List[Any]:
        """``value`` of every rank (data positions differ when ranks skipped different bad samples)."""
        return all_gather_objects(value)

    def _checkpoint_path(self, state: TrainState) -> Path:
        return self.ckpt_dir / f"step_{state.global_step:08d}"

    def _save(self, state: TrainState, optimizer, scheduler, scaler, stream: BatchStream) -> Path:
        path = self._checkpoint_path(state)
        if not self.run_config.save_checkpoints:
            return path
        training_state = self._training_state(state, optimizer, scheduler, scaler, stream)  # collective under DDP
        meta = {"global_step": state.global_step, "epoch": state.epoch, "step_in_epoch": state.step_in_epoch}
        if self._sharded:
            dcp_ckpt.save_sharded_checkpoint(path, self.model, optimizer, training_state=training_state,
                                             config_yaml=self.cfg.to_yaml(), meta=meta, is_main=self.dist.is_main)
            if self.dist.is_main:
                logger.info("saved sharded checkpoint %s", path)
                self.log.write("checkpoint", state.global_step, {"path": str(path)})
                self._prune(state)
            barrier()
            return path
        if self.dist.is_main:
            ckpt.save_checkpoint(
                path,
                weights=trainable_state_dict(self.model),
                training_state=training_state,
                config_yaml=self.cfg.to_yaml(),
                meta=meta,
            )
            logger.info("saved checkpoint %s", path)
            self.log.write("checkpoint", state.global_step, {"path": str(path)})
            self._prune(state)
        barrier()
        return path

    def _prune(self, state: TrainState) -> None:
        keep = self.run_config.keep_last_n
        if keep <= 0:
            return
        existing = ckpt.list_checkpoints(self.ckpt_dir)
        for old in existing[:-keep]:
            if old.name == state.best_checkpoint:
                continue
            shutil.rmtree(old)
            logger.info("removed old checkpoint %s (run.keep_last_n=%d)", old, keep)

    def _write_best_pointer(self, state: TrainState) -> None:
        if self.dist.is_main and state.best_checkpoint:
            atomic_write_text(
                self.ckpt_dir / "best.json",
                f'{{"checkpoint": "{state.best_checkpoint}", "val_loss": {state.best_metric}}}\n',
            )

    def _resume(self, path: Path, optimizer, scheduler, scaler, stream: BatchStream) -> TrainState:
        if self._sharded or dcp_ckpt.is_sharded_checkpoint(path):
            return self._resume_from(path, dcp_ckpt.load_sharded_checkpoint(path, self.model, optimizer),
                                     scheduler, scaler, stream)
        loaded = ckpt.load_checkpoint(path)
        self.load_trainable_weights(loaded["weights"], source=path)
        training = loaded["training_state"]
        try:
            optimizer.load_state_dict(training["optimizer"])
        except (KeyError, ValueError) as exc:
            raise _does_not_fit(path, exc) from exc
        return self._resume_from(path, training, scheduler, scaler, stream)

    def _resume_from(self, path: Path, training: Dict[str, Any], scheduler, scaler, stream: BatchStream) -> TrainState:
        """Schedule, scaler, RNG, counters and data position from a loaded training state."""
        saved_world = int(training.get("world_size", 1))
        if saved_world != self.dist.world_size:
            logger.warning("checkpoint was written by %d process(es), resuming on %d: the data order changes",
                           saved_world, self.dist.world_size)
        try:
            scheduler.load_state_dict(training["scheduler"])
            if scaler.is_enabled() and training["scaler"]:
                scaler.load_state_dict(training["scaler"])
        except (KeyError, ValueError) as exc:
            raise _does_not_fit(path, exc) from exc
        ckpt.restore_rng_state(training["rng"])
        counters = training["counters"]
        positions = training["data_position"]
        stream.seek(**positions[min(self.dist.rank, len(positions) - 1)])
        best = training.get("best", {})
        logger.info("resumed from %s at epoch %d, step %d (global step %d)", path, counters["epoch"],
                    counters["step_in_epoch"], counters["global_step"])
        return TrainState(epoch=counters["epoch"], step_in_epoch=counters["step_in_epoch"],
                          global_step=counters["global_step"], best_metric=best.get("metric"),
                          best_checkpoint=best.get("checkpoint"))

    def load_trainable_weights(self, weights: Dict[str, torch.Tensor], source: Path) -> None:
        """Put saved trainable weights back, refusing a checkpoint of a different model."""
        expected = trainable_state_dict(self.model)
        missing = sorted(set(expected) - set(weights))
        unexpected = sorted(set(weights) - set(expected))
        mismatched = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or mismatched:
            raise ckpt.CheckpointError(
                f"checkpoint {source} does not match this model's trainable weights: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
                f"shape mismatch {mismatched[:5]} (was it written with another model config or freeze flags?)"
            )
        with torch.no_grad():
            named = dict(unwrap(self.model).state_dict(keep_vars=True))
            for key, value in weights.items():
                named[key].copy_(value.to(named[key].dtype))

    # ----------------------------------------------------------------- logging
    def _log_start(self, iters_per_epoch: int, total_steps: int, accum: int) -> None:
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        global_batch = self.run_config.batch_size_train * accum * self.dist.world_size
        logger.info(
            "training: %d epoch(s) x %d steps, global batch %d (%d per process x %d accumulation x %d processes), "
            "%s trainable of %s parameters, precision %s, output %s",
            self.run_config.max_epoch, iters_per_epoch, global_batch, self.run_config.batch_size_train, accum,
            self.dist.world_size, f"{trainable:,}", f"{total:,}",
            {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + scaler"}[self.amp_dtype],
            self.job_dir,
        )

    def _log_train(self, state: TrainState, epoch: int, iters: int, loss: float, lr: float, rate: float, eta: str):
        if not self.dist.is_main:
            return
        logger.info("epoch %d/%d step %d/%d | loss %.4f | lr %.3e | %.1f samples/s | ETA %s", epoch + 1,
                    self.run_config.max_epoch, state.step_in_epoch, iters, loss, lr,
                    rate * self.dist.world_size, eta)
        record = {"epoch": epoch, "loss": loss, "lr": lr, "samples_per_s": rate * self.dist.world_size}
        if self.device.type == "cuda":  # this process's peak since the start (benchmarks/llm_finetune.py reads it)
            record["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.log.write("train", state.global_step, record)

    def _report_skipped(self, stream: BatchStream) -> None:
        counts = torch.tensor([stream.skipped_samples], dtype=torch.float64)
        all_reduce_sum(counts)
        counts += self.cache_skipped
        if counts.item() and self.dist.is_main:
            logger.warning("skipped %d bad training sample(s) in total (run.on_bad_sample: skip; files are listed "
                           "in the warnings above)", int(counts.item()))
            self.log.write("skipped", -1, {"bad_samples": int(counts.item())})

    def _record_validation(self, state: TrainState, epoch: int, metrics: Dict[str, float]) -> None:
        state.history.append({"epoch": epoch, "step": state.global_step, **metrics})
        if self.dist.is_main:
            shown = " | ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, (int, float)))
            logger.info("validation after epoch %d: %s", epoch + 1, shown)
            self.log.write("valid", state.global_step, {"epoch": epoch, **metrics})


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        for value in batch.values():
            if isinstance(value, torch.Tensor):
                return int(value.shape[0])
            if isinstance(value, list):
                return len(value)
    return 1
