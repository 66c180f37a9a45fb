"""One run: filter, sample, export images, split, generate (resumably), write the dataset.

Output folder::

    image/                  exported images (entries point here with relative paths)
    filter_cap.json         train entries  [{"image", "prompt", "caption"}, ...]
    filter_cap_val.json     val entries    (same format)
    filter_cap_test.json    test entries
    manifest.json           provenance, options, counts, usage, every rejection with its reason
    cache/generated.jsonl   durable per-job results (what makes a rerun resume)
    cache/rejected.jsonl    audit log of generation rejections, across runs
    cache/identity.json     source and options of the dataset (written first: a resume checks it)

A non-empty folder that holds anything else is refused unless ``overwrite``.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from xraygpt.data_creation.cache import JsonlCache
from xraygpt.data_creation.filters import TextFilter, apply_filter
from xraygpt.data_creation.images import ImageExportError, export_image, output_name
from xraygpt.data_creation.output_folder import claim_output_folder, stored_identity, write_identity
from xraygpt.data_creation.records import DataCreationError, GenerationRejected, Job, Rejection, SourceItem
from xraygpt.data_creation.splitting import SPLITS, sample_items, split_groups
from xraygpt.common.fileio import atomic_write_json

log = logging.getLogger(__name__)

SPLIT_FILES = {"train": "filter_cap.json", "val": "filter_cap_val.json", "test": "filter_cap_test.json"}
MANIFEST = "manifest.json"
CACHE_FILE = Path("cache") / "generated.jsonl"
REJECTED_FILE = Path("cache") / "rejected.jsonl"
TASKS = ("report", "vqa", "structured")
DEFAULT_TASKS = ("report", "vqa")  # structured (JSON targets) only when asked

Generator = Callable[[Job], Tuple[List[Dict[str, str]], Dict[str, Any]]]


@dataclass
class RunOptions:
    out_dir: Path
    tasks: Sequence[str] = DEFAULT_TASKS
    sample_size: Optional[int] = None
    seed: int = 42
    split: Dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    image_format: str = "copy"
    all_images: bool = False
    """Pair every selected image of an item with its text (default: the first one only)."""
    study_level: bool = False
    """One entry per item holding all its images (``"image": [...]``, ``"views"`` from ``meta["views"]``)."""
    concurrency: int = 1
    progress: bool = True
    overwrite: bool = False
    """Replace the dataset files of an ``out_dir`` that holds something else (else such a folder is refused)."""


RUN_ONLY_OPTIONS = ("out_dir", "concurrency", "progress", "overwrite")
"""Options that do not change the dataset: a resume may change them."""


@dataclass
class GeneratorSpec:
    """How text is made: the callable, its prompt version per task and what the manifest says about it."""

    generate: Generator
    prompt_versions: Dict[str, str]
    description: Dict[str, Any]
    usage: Callable[[], Dict[str, Any]] = dict


def dataset_identity(options: RunOptions, text_filter: TextFilter, spec: GeneratorSpec,
                     source_info: Dict[str, Any]) -> Dict[str, Any]:
    """What decides the dataset's content: source, options, filters and generation mode."""
    kept = {k: v for k, v in asdict(options).items() if k not in RUN_ONLY_OPTIONS}
    return {"source": source_info, "options": {**kept, "filters": asdict(text_filter)},
            "mode": spec.description.get("mode")}


def _identity_from_manifest(manifest: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    if manifest.get("tool") != "xraygpt.data_creation":
        return None
    options = {k: v for k, v in (manifest.get("options") or {}).items() if k not in RUN_ONLY_OPTIONS}
    return {"source": manifest.get("source"), "options": options, "mode": (manifest.get("generator") or {}).get("mode")}


def _check_unique(items: List[SourceItem]) -> None:
    seen = set()
    for item in items:
        if item.source_id in seen:
            raise DataCreationError(f"source id {item.source_id} appears twice in the input; ids must be unique")
        seen.add(item.source_id)


def _export_images(
    items: List[SourceItem], options: RunOptions, rejections: List[Rejection]
) -> Tuple[List[SourceItem], Dict[str, List[str]]]:
    """Exported image paths (relative to the output folder) per item; unreadable ones are rejected."""
    image_dir = options.out_dir / "image"
    owners: Dict[str, Path] = {}
    exported: Dict[str, List[str]] = {}
    kept = []
    for item in _progress(items, options.progress, "images"):
        sources = item.images if options.all_images or options.study_level else item.images[:1]
        names = []
        for source in sources:
            stem = source.stem if item.source == "openi" else item.source_id
            name = output_name(stem, source, options.image_format)
            if owners.setdefault(name, source) != source:
                raise DataCreationError(f"two images would both be written as image/{name}: {owners[name]} and {source}")
            try:
                export_image(source, image_dir / name, options.image_format)
                names.append(f"image/{name}")
            except ImageExportError as exc:
                rejections.append(Rejection(item.source_id, "image", str(exc)))
        if options.study_level and len(names) != len(sources):  # a study entry needs every one of its views
            continue
        if names:
            exported[item.source_id] = names
            kept.append(item)
        elif sources:
            rejections.append(Rejection(item.source_id, "image", "no readable image left for this item"))
    return kept, exported


def _progress(iterable, enabled: bool, desc: str, total: Optional[int] = None):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="item", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _run_jobs(jobs: List[Job], spec: GeneratorSpec, options: RunOptions, cache: JsonlCache, rejected_log: Path) -> List[Rejection]:
    """Generate every pending job; each success is durable in the cache before the next is counted."""
    rejections: List[Rejection] = []
    bar = _progress(None, options.progress, "generate", total=len(jobs))

    def finish(job: Job, future_or_call: Callable[[], Tuple[List[Dict[str, str]], Dict[str, Any]]]) -> None:
        try:
            entries, info = future_or_call()
        except GenerationRejected as exc:
            rejection = Rejection(job.item.source_id, "generate", f"{job.task}: {exc}")
            rejections.append(rejection)
            with rejected_log.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({**rejection.as_dict(), "key": job.key, "time": _now()}) + "\n")
        else:
            cache.append(
                {"key": job.key, "source_id": job.item.source_id, "task": job.task,
                 "prompt_version": job.prompt_version, "entries": entries, "time": _now(), **info}
            )
        bar.update(1)
        bar.set_postfix(rejected=len(rejections), refresh=False)

    try:
        if options.concurrency <= 1:
            for job in jobs:
                finish(job, lambda job=job: spec.generate(job))
            return rejections
        # Keep at most 2x concurrency jobs queued, so a stop cancels little and memory stays flat.
        with ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="llm") as pool:
            queue = iter(jobs)
            running: Dict[Future, Job] = {}
            try:
                while True:
                    while len(running) < 2 * options.concurrency:
                        job = next(queue, None)
                        if job is None:
                            break
                        running[pool.submit(spec.generate, job)] = job
                    if not running:
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        finish(running.pop(future), future.result)
            except BaseException:
                for future in running:
                    future.cancel()
                raise
        return rejections
    finally:
        bar.close()


def _assemble(jobs: List[Job], cache: JsonlCache, split_of_group: Dict[str, str], images: Dict[str, List[str]],
              study_level: bool = False):
    """Entries per split in source order, plus what the manifest records about each split."""
    splits: Dict[str, List[Dict[str, str]]] = {name: [] for name in SPLITS}
    provenance = {name: {"source_ids": [], "groups": set(), "entries_by_task": Counter()} for name in SPLITS}
    models: Counter = Counter()
    for job in jobs:
        record = cache.records.get(job.key)
        if record is None:  # rejected in this run
            continue
        split = split_of_group[job.item.group_id]
        info = provenance[split]
        if not info["source_ids"] or info["source_ids"][-1] != job.item.source_id:
            info["source_ids"].append(job.item.source_id)
        info["groups"].add(job.item.group_id)
        models[record.get("model", "unknown")] += 1
        exported = images[job.item.source_id]
        if study_level and len(exported) > 1:  # one study entry: every view, named
            groups: List[Any] = [{"image": exported, "views": job.item.meta["views"].split(",")}]
        else:
            groups = [{"image": image} for image in exported]
        for entry in record["entries"]:
            for group in groups:
                row = {**group, "prompt": entry["prompt"], "caption": entry["caption"]}
                if job.task == "structured":  # so build_info.tasks: [structured] can select (or drop) them
                    row["task"] = job.task
                splits[split].append(row)
                info["entries_by_task"][job.task] += 1
    return splits, provenance, models


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run(
    items: List[SourceItem],
    read_rejections: List[Rejection],
    text_filter: TextFilter,
    options: RunOptions,
    spec: GeneratorSpec,
    source_info: Dict[str, Any],
) -> Dict[str, Any]:
    """Build (or finish building) the dataset in ``options.out_dir``; returns the manifest."""
    started = time.time()
    unknown = [t for t in options.tasks if t not in TASKS]
    if unknown or not options.tasks:
        raise DataCreationError(f"--tasks must be a non-empty subset of {list(TASKS)}, got {list(options.tasks)}")
    _check_unique(items)
    identity = dataset_identity(options, text_filter, spec, source_info)
    claim_output_folder(options.out_dir, identity, [*SPLIT_FILES.values(), MANIFEST, "image", "cache"],
                        overwrite=options.overwrite, stored=stored_identity(options.out_dir, _identity_from_manifest))
    write_identity(options.out_dir, identity)
    rejections = list(read_rejections)
    kept, dropped = apply_filter(items, text_filter)
    rejections += dropped
    selected = sample_items(kept, options.sample_size, options.seed)
    log.info("%d items read, %d pass the filters, %d selected", len(items), len(kept), len(selected))
    selected, images = _export_images(selected, options, rejections)
    split_of_group = split_groups(selected, options.split, options.seed)

    out = options.out_dir
    with JsonlCache(out / CACHE_FILE) as cache:
        jobs = [
            Job(item, task, spec.prompt_versions[task], image=out / images[item.source_id][0])
            for item in selected
            for task in options.tasks
        ]
        pending = [job for job in jobs if job.key not in cache]
        log.info("%d generation jobs, %d already done (cache), %d to run", len(jobs), len(jobs) - len(pending), len(pending))
        rejections += _run_jobs(pending, spec, options, cache, out / REJECTED_FILE)

        splits, provenance, models = _assemble(jobs, cache, split_of_group, images, options.study_level)

    for name in SPLITS:
        atomic_write_json(out / SPLIT_FILES[name], splits[name])

    counts_by_stage = dict(Counter(rejection.stage for rejection in rejections))
    manifest = {
        "tool": "xraygpt.data_creation",
        "created": _now(),
        "command": sys.argv,
        "source": source_info,
        "generator": spec.description,
        "prompt_versions": {t: spec.prompt_versions[t] for t in options.tasks},
        "models_in_output": dict(models),
        "options": {
            **{k: v for k, v in asdict(options).items() if k not in ("out_dir", "overwrite")},
            "filters": asdict(text_filter),
        },
        "counts": {
            "items_read": len(items),
            "items_passing_filters": len(kept),
            "items_selected": len(selected),
            "jobs": len(jobs),
            "jobs_run_now": len(pending),
            "rejected_by_stage": counts_by_stage,
            "entries": {name: len(splits[name]) for name in SPLITS},
        },
        "usage": spec.usage(),
        "splits": {
            name: {
                "file": SPLIT_FILES[name],
                "entries": len(splits[name]),
                "entries_by_task": dict(provenance[name]["entries_by_task"]),
                "groups": sorted(provenance[name]["groups"]),
                "source_ids": provenance[name]["source_ids"],
            }
            for name in SPLITS
        },
        "rejected": [r.as_dict() for r in rejections],
        "seconds": round(time.time() - started, 2),
    }
    atomic_write_json(out / MANIFEST, manifest)
    log.info(
        "wrote %s: entries train/val/test = %d/%d/%d, rejected %s, usage %s",
        out, *(len(splits[n]) for n in SPLITS), counts_by_stage or 0, manifest["usage"] or "-",
    )
    return manifest
