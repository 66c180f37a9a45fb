"""Who may write ``<output_dir>/<job_id>``: decided at start-up, before any training or any write.

A job folder that already holds a run (a checkpoint or a logged step) is only written by a run that
resumes it from its newest checkpoint, or by one given ``run.overwrite``; anything else stops with one
line naming those choices, so a rerun never trains for an hour and then fails at its first save, and
never appends to or replaces the finished run's ``log.jsonl`` and ``config.yaml``.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from xraygpt.common import checkpointing as ckpt
from xraygpt.common.errors import ConfigurationError
from xraygpt.common.fileio import atomic_write_text

logger = logging.getLogger("xraygpt.train")

LATEST = "latest"
LOG_FILE = "log.jsonl"
JOB_FILES = ("checkpoints", LOG_FILE, "config.yaml", "tensorboard", "model_best.safetensors")
"""What a training run writes into its job folder (``run.overwrite`` removes exactly these)."""
END_OF_RUN_KINDS = ("test", "skipped")
"""log.jsonl rows written once at the end of a run: a resumed run writes them again."""


@dataclass
class JobPlan:
    resume_from: Optional[Path] = None
    """Checkpoint to resume from (None: start at step 0)."""
    resumed_step: int = 0


def _step_of(folder: Path) -> int:
    return int(ckpt.read_meta(folder).get("global_step", -1))


def _logged_steps(job_dir: Path) -> int:
    path = job_dir / LOG_FILE
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _choices() -> str:
    return ("choose a new run.job_id, resume this job with run.resume_ckpt_path=latest, or pass --overwrite "
            "(run.overwrite=true) to replace it")


def plan_job(job_dir: Path, resume_ckpt_path: Optional[str], overwrite: bool) -> JobPlan:
    """Check ``job_dir`` against the request and prepare it (main process only); raises ConfigurationError."""
    ckpt_dir = job_dir / "checkpoints"
    if ckpt.remove_stale_temporaries(ckpt_dir):
        logger.warning("removed incomplete checkpoint folder(s) left by an interrupted save in %s", ckpt_dir)
    checkpoints = [c for c in sorted(ckpt_dir.iterdir()) if c.is_dir() and not c.name.startswith(".")] \
        if ckpt_dir.is_dir() else []
    rows = _logged_steps(job_dir)
    holds_run = bool(checkpoints or rows)
    described = f"{job_dir} ({len(checkpoints)} checkpoint(s), {rows} row(s) in {LOG_FILE})"
    if overwrite:
        if resume_ckpt_path and resume_ckpt_path != LATEST and _inside(Path(resume_ckpt_path), job_dir):
            raise ConfigurationError(f"run.overwrite would delete the checkpoint run.resume_ckpt_path names "
                                     f"({resume_ckpt_path}); resume into a new run.job_id instead")
        if holds_run:
            removed = [name for name in JOB_FILES if (job_dir / name).exists()]
            for name in removed:
                target = job_dir / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            logger.warning("run.overwrite: removed the earlier run in %s (%s)", job_dir, ", ".join(removed))
        if resume_ckpt_path in (None, LATEST):
            return JobPlan()
        return JobPlan(Path(resume_ckpt_path), _step_of(Path(resume_ckpt_path)))

    if resume_ckpt_path == LATEST:
        found = ckpt.latest_checkpoint(ckpt_dir, verify=verify_any)
        if found is None:
            if holds_run:
                logger.warning("run.resume_ckpt_path=latest: %s has no complete checkpoint; starting again at step 0",
                               described)
            plan = JobPlan()
        else:
            plan = JobPlan(found, _step_of(found))
            logger.info("run.resume_ckpt_path=latest: resuming %s from %s", job_dir, found.name)
    elif resume_ckpt_path:
        path = Path(resume_ckpt_path)
        if holds_run:
            if not _inside(path, ckpt_dir):
                raise ConfigurationError(
                    f"run.job_id already holds a run in {described}; resuming {path} into it would mix two runs: "
                    + _choices()
                )
            step = _step_of(path)
            newer = [c.name for c in checkpoints if c.resolve() != path.resolve() and _safe_step(c) > step]
            if newer:
                raise ConfigurationError(
                    f"resuming {path.name} while newer checkpoints of the same job exist ({', '.join(newer[:3])}) "
                    f"would overwrite them: resume from the newest with run.resume_ckpt_path=latest, resume "
                    f"{path.name} into a new run.job_id, or pass --overwrite (run.overwrite=true) to start the job over"
                )
        plan = JobPlan(path, _step_of(path))
    elif holds_run:
        raise ConfigurationError(f"run.job_id already holds a run in {described}: " + _choices())
    else:
        plan = JobPlan()
    if holds_run:
        trim_log(job_dir / LOG_FILE, plan.resumed_step)
    return plan


def verify_any(folder: Path) -> None:
    """Check a checkpoint of either layout (one safetensors file, or DCP shards of run.strategy: fsdp)."""
    from xraygpt.runners import distributed_checkpoint as dcp_ckpt

    if ckpt.read_meta(folder).get("layout") == dcp_ckpt.LAYOUT:
        dcp_ckpt.verify(folder)
    else:
        ckpt.verify_checkpoint(folder)


def _safe_step(folder: Path) -> int:
    try:
        return _step_of(folder)
    except ckpt.CheckpointError:
        return -1


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def trim_log(path: Path, step: int) -> int:
    """Drop the rows a resumed run writes again (steps after ``step``, end-of-run summaries); returns how many."""
    if not path.is_file():
        return 0
    kept: List[str] = []
    dropped = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line torn by a kill
            dropped += 1
            continue
        if row.get("kind") in END_OF_RUN_KINDS or int(row.get("step", 0)) > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
        logger.info("%s: dropped %d row(s) after step %d (they are logged again by this run)", path, dropped, step)
    return dropped
