"""``python -m xraygpt.generate``: write a report for every image, one JSON line each.

Resumable: images that already have a report in ``--out`` are skipped, and
each batch is appended and flushed as soon as it is done, so an interrupted
run loses at most the batch in flight.  Images that cannot be read get an
``error`` line (retried on the next run, recorded again only if the reason
changed) and make the exit code 1.  ``--out`` must be this command's own
output: any other file is refused untouched.  The file is locked while a run
writes it, so a second run on it stops at once instead of redoing images.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Set

from xraygpt.common.cli import run_cli, setup_logging
from xraygpt.common.config import Config, ConfigError, add_config_arguments
from xraygpt.common.constants import IMAGE_SUFFIXES
from xraygpt.common.fileio import try_lock_exclusive
from xraygpt.common.schema import with_flags
from xraygpt.common.decoding_settings import GenerationSettings

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "<Img><ImageHere></Img> Describe the given chest x-ray image in detail."


def collect_images(sources: Sequence[str]) -> List[Path]:
    """Expand folders (their image files, recursively), globs, ``.txt`` lists and plain files; keep order, drop repeats."""
    found: List[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.suffix.lower() == ".txt" and path.is_file():
            lines = [line.strip() for line in path.read_text().splitlines()]
            found.extend((path.parent / line) if not Path(line).is_absolute() else Path(line) for line in lines if line)
        elif glob.has_magic(source):
            matches = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"--images pattern {source!r} matches no file")
            found.extend(matches)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"--images entry {source!r} is not a file, folder, glob or .txt list")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise FileNotFoundError(f"no images found in {list(sources)} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return unique


RECORD_START = b'{"image": '
"""Every line this command writes starts so (``json.dumps`` of a dict whose first key is ``image``)."""


@dataclass
class PreviousOutput:
    """What an existing ``--out`` already holds: images with a report, and the error recorded per image."""

    done: Set[str] = field(default_factory=set)
    errors: Dict[str, str] = field(default_factory=dict)
    torn_bytes: int = 0
    """Length of an incomplete last line (a run killed mid-write); cut off before appending."""


def read_previous_output(out: Path, data: bytes) -> PreviousOutput:
    """Parse ``out``'s bytes; refuse (change nothing) unless every complete line is one of our records.

    A torn last line is only accepted when the rest is provably our output and the
    fragment itself starts like one of our records.
    """
    previous = PreviousOutput()
    keep = data.rfind(b"\n") + 1
    complete, tail = data[:keep], data[keep:]
    how_to_fix = "choose another --out file, or move this one away to start over"
    for number, line in enumerate(complete.split(b"\n")[:-1], start=1):
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{out}:{number} is not JSON ({exc}): not an output of this command; {how_to_fix}") from None
        image = record.get("image") if isinstance(record, dict) else None
        is_study = isinstance(image, list) and "study_id" in record  # --study-manifest records
        if not (isinstance(image, str) or is_study) or not ("report" in record or "error" in record):
            raise ConfigError(f"{out}:{number} is not a report or error record of this command; {how_to_fix}")
        key = _record_key(record)
        if "report" in record:
            previous.done.add(key)
            previous.errors.pop(key, None)
        else:
            previous.errors[key] = str(record["error"])
    if tail and not tail.startswith(RECORD_START):
        raise ConfigError(f"{out} ends in {len(tail)} bytes that are not a record of this command; {how_to_fix}")
    previous.torn_bytes = len(tail)
    return previous


def finished_images(out: Path) -> Set[str]:
    """Images with a report in ``out`` (read only; the file is not changed)."""
    if not out.exists():
        return set()
    return read_previous_output(out, out.read_bytes()).done


class OutputFile:
    """The ``--out`` file, opened once and held under an advisory lock for the whole run.

    A second run on the same file is refused at once, so no image is done twice.
    """

    def __init__(self, path: Path):
        self.path = path
        if path.is_dir():
            raise ConfigError(f"--out {path} is a folder; give a .jsonl file path")
        self.created = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = path.open("a+b")
        if not try_lock_exclusive(self.handle):
            self.handle.close()
            raise ConfigError(
                f"another xraygpt.generate run is writing {path}; wait for it to finish (then rerun to resume) "
                "or give this run another --out"
            )
        self.handle.seek(0)
        self.previous = read_previous_output(path, self.handle.read())
        if self.previous.torn_bytes:
            size = self.handle.seek(0, os.SEEK_END)
            logger.warning("%s ends in an incomplete record (interrupted run); removing its %d bytes", path,
                           self.previous.torn_bytes)
            self.handle.truncate(size - self.previous.torn_bytes)

    def write(self, record: Dict[str, Any]) -> None:
        self.handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))

    def sync(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        empty = self.handle.seek(0, os.SEEK_END) == 0
        self.handle.close()
        if self.created and empty:  # nothing written: leave no empty file behind
            self.path.unlink(missing_ok=True)


def _record_key(record: dict) -> str:
    return f"study:{record['study_id']}" if "study_id" in record else _key(record["image"])


def _key(path: str | Path) -> str:
    """Resume matches images by absolute path, however they were named on the command line."""
    return str(Path(path).resolve())


def _item_key(item) -> str:
    return _key(item) if isinstance(item, Path) else f"study:{item.id}"


def _item_images(item) -> Sequence[Path]:
    return [item] if isinstance(item, Path) else item.images


def _item_fields(item) -> dict:
    """How a record names its input: an image path, or a study's id, images and views."""
    if isinstance(item, Path):
        return {"image": str(item), "image_id": item.stem}
    return {"image": [str(p) for p in item.images], "study_id": item.id, "views": item.views, "image_id": item.id}


def batches(items: Sequence, size: int) -> Iterable[List]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Generate a report for each image into a JSON-lines file (resumable).")
    add_config_arguments(parser)
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--images", nargs="+", help="image files, folders, glob patterns or .txt lists")
    inputs.add_argument("--study-manifest", type=Path,
                        help="studies.jsonl: one study per line, {\"id\", \"image\": [paths], \"views\": [names]?}; "
                             "one report per study from all its images (needs model.max_images >= the views)")
    parser.add_argument("--out", required=True, type=Path, help="JSON-lines output; existing reports are kept and skipped")
    parser.add_argument(
        "--prompt", default=DEFAULT_PROMPT,
        help="question asked about every image, put into the model's prompt template (the text follows </Img> as written)",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per generate call (default 4)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda:<gpu-id> if available)")
    parser.add_argument("--gpu-id", type=int, default=None, help="CUDA device index (when --device is not given)")
    # Decoding: the config's generation section (greedy, 300 new tokens unless it says otherwise); a flag overrides it.
    parser.add_argument("--max-new-tokens", type=int, help="longest report, in tokens (default: generation.max_new_tokens)")
    parser.add_argument("--num-beams", type=int, help="beam-search width, 1 = none (default: generation.num_beams)")
    parser.add_argument("--temperature", type=float, help="0 = greedy/beam search (default: generation.temperature, 0)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling mass with --temperature > 0 (default: generation.top_p)")
    parser.add_argument("--repetition-penalty", type=float,
                        help="> 1 discourages repeats (default: generation.repetition_penalty)")
    parser.add_argument(
        "--structured", nargs="?", const="extract", choices=("extract", "constrained"), default=None,
        help="also write a schema-valid structured report per image (key 'structured'): extract = read it from the "
             "prose (default), constrained = decode the JSON under the schema (models fine-tuned on JSON targets)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: List[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.study_manifest:
        from xraygpt.datasets.study_manifest import read_study_manifest

        images = read_study_manifest(args.study_manifest)
    else:
        images = collect_images(args.images)
    out = OutputFile(args.out)
    try:
        return _generate(args, images, out)
    finally:
        out.close()


def generation_settings(cfg: Config, args: argparse.Namespace) -> GenerationSettings:
    """The config's ``generation`` section with the decoding flags that were given put in."""
    return with_flags(cfg.generation, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                      temperature=args.temperature, top_p=args.top_p, repetition_penalty=args.repetition_penalty)


def _generate(args: argparse.Namespace, images: List, out: OutputFile) -> int:
    done, known_errors = out.previous.done, out.previous.errors
    todo = [item for item in images if _item_key(item) not in done]
    logger.info("%d images: %d already in %s, %d to do", len(images), len(images) - len(todo), args.out, len(todo))
    if not todo:
        return 0

    import torch
    from tqdm import tqdm

    from xraygpt.common.device import pick_device
    from xraygpt.conversation.loading import load_model_and_processor
    from xraygpt.datasets.image_io import ImageLoadError, load_medical_image

    cfg = Config(args)
    settings = generation_settings(cfg, args)
    device = pick_device(args.device, gpu_id=args.gpu_id)
    model, processor = load_model_and_processor(cfg, device)
    if settings.num_beams == 1 and hasattr(model, "warm_up"):  # captures now, not in the first batch
        model.warm_up(min(args.batch_size, len(todo)), prompt=args.prompt, generation_kwargs=[settings.generate_kwargs()])
    run_settings = {**settings.as_dict(), "batch_size": args.batch_size, "cfg_path": str(args.cfg_path), "device": str(device)}
    if args.structured:
        from xraygpt.structured import generate_structured, model_generator

        generator = model_generator(model, args.structured, f"{cfg.model_cfg.arch}:{args.cfg_path}", run_settings)

    failures = 0
    with tqdm(total=len(todo), disable=args.no_progress, unit="img") as bar:
        for batch in batches(todo, args.batch_size):
            pixels, readable = [], []
            for item in batch:
                try:
                    pixels.append([processor(load_medical_image(path)) for path in _item_images(item)])
                    readable.append(item)
                except ImageLoadError as exc:
                    failures += 1
                    logger.error("%s", exc)
                    # Retried on every run, but recorded once while the reason stays the same.
                    if known_errors.get(_item_key(item)) != str(exc):
                        out.write({**_item_fields(item), "error": str(exc)})
            if readable:
                start = time.perf_counter()
                kwargs = settings.generate_kwargs()
                if args.study_manifest:  # every study's images one after the other, with their counts and views
                    kwargs.update(image_counts=[len(p) for p in pixels], views=[item.views for item in readable])
                with torch.inference_mode():
                    batch_pixels = torch.stack([image for study in pixels for image in study]).to(device)
                    prompts = [args.prompt] * len(readable)
                    if args.structured:
                        reports, structured, ids = generate_structured(
                            model, batch_pixels, prompts, args.structured, generator, return_ids=True, **kwargs
                        )
                    else:
                        (reports, ids), structured = model.generate(batch_pixels, prompts, return_ids=True, **kwargs), None
                seconds = time.perf_counter() - start
                stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
                for number, (item, report, new_ids) in enumerate(zip(readable, reports, ids)):
                    record = {
                        **_item_fields(item), "prompt": args.prompt, "report": report, "new_tokens": len(new_ids),
                        "seconds": round(seconds / len(readable), 4), "batch_seconds": round(seconds, 4),
                        "created": stamp, "settings": run_settings,
                    }
                    if structured is not None:
                        record["structured"] = structured[number]
                    out.write(record)
            out.sync()
            bar.update(len(batch))
    logger.info("wrote %d reports to %s; %d images could not be read", len(todo) - failures, args.out, failures)
    return 1 if failures else 0


if __name__ == "__main__":
    run_cli(main)


def cli() -> None:
    """Console-script entry point."""
    run_cli(main)
