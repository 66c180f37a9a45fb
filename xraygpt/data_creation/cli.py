"""Command lines of the data-creation launchers (``Data_Creation_Scripts/*.py``)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from xraygpt.common.cli import add_debug_argument, debug_requested
from xraygpt.data_creation.filters import TextFilter
from xraygpt.data_creation.images import IMAGE_FORMATS
from xraygpt.data_creation.pipeline import DEFAULT_TASKS, TASKS, GeneratorSpec, RunOptions, run
from xraygpt.data_creation.records import DataCreationError, Rejection, SourceItem
from xraygpt.data_creation.splitting import parse_fractions

EPILOG = "Docs and examples: docs/data_creation.md"


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    add_debug_argument(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, help="dataset folder to create or resume (image/, filter_cap*.json, manifest.json)")
    out.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                     help="comma list of tasks: report (report prompt -> report), vqa (question -> answer), "
                          "structured (JSON report target for constrained decoding; OpenI only)")
    out.add_argument("--sample-size", type=int, default=None, help="keep a seeded random subset of this many items after filtering")
    out.add_argument("--seed", type=int, default=42, help="seed of the sampling and of the split")
    out.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions of the groups (patients/studies/articles)")
    out.add_argument("--image-format", choices=IMAGE_FORMATS, default="copy",
                     help="copy PNG/JPEG bytes as they are (others become PNG), or re-encode all as JPEG")
    out.add_argument("--max-questions", type=int, default=3, help="offline mode: at most this many VQA pairs per item")
    out.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    out.add_argument("--overwrite", action="store_true",
                     help="replace the dataset files of an --out folder that holds other files or another dataset")

    mode = parser.add_argument_group("generation mode (pick one)").add_mutually_exclusive_group(required=True)
    mode.add_argument("--offline", action="store_true", help="rule-based, no API, deterministic")
    mode.add_argument("--llm", action="store_true", help="through an OpenAI-compatible chat API (OpenAI, vLLM, Ollama...)")

    llm = parser.add_argument_group("LLM mode")
    llm.add_argument("--model", help="model name on the server, e.g. gpt-4o-mini or Qwen/Qwen2.5-7B-Instruct")
    llm.add_argument("--base-url", default=None, help="API base URL, e.g. http://127.0.0.1:8000/v1 (vLLM) or http://127.0.0.1:11434/v1 (Ollama); default: OpenAI")
    llm.add_argument("--api-key-env", default="OPENAI_API_KEY", help="name of the environment variable holding the API key (the key itself is never logged)")
    llm.add_argument("--concurrency", type=int, default=4, help="parallel requests")
    llm.add_argument("--max-attempts", type=int, default=6, help="attempts per job (429/5xx/timeouts/malformed JSON are retried)")
    llm.add_argument("--request-timeout", type=float, default=60.0, help="seconds before a request counts as timed out")
    llm.add_argument("--backoff-base", type=float, default=1.0, help="first retry delay in seconds; doubles each retry (with jitter)")
    llm.add_argument("--backoff-max", type=float, default=60.0, help="longest retry delay in seconds")
    llm.add_argument("--no-json-mode", action="store_true", help="do not send response_format=json_object (servers without JSON mode)")
    llm.add_argument("--attach-image", action="store_true", help="also send the image (vision models only)")
    llm.add_argument("--temperature", type=float, default=0.2)
    llm.add_argument("--max-tokens", type=int, default=1024, help="answer token limit per request")
    llm.add_argument("--price-input", type=float, default=0.0, help="USD per 1M prompt tokens, for the cost estimate")
    llm.add_argument("--price-output", type=float, default=0.0, help="USD per 1M completion tokens, for the cost estimate")


def _generator_spec(args: argparse.Namespace) -> GeneratorSpec:
    if args.offline:
        from xraygpt.data_creation import offline

        def generate(job):
            return offline.generate_offline(job, args.max_questions), {"model": "offline-rules"}

        return GeneratorSpec(
            generate=generate,
            prompt_versions={task: offline.PROMPT_VERSION for task in TASKS},
            description={"mode": "offline", "model": "offline-rules", "max_questions": args.max_questions},
        )
    from xraygpt.data_creation.llm import PROMPT_VERSIONS, LLMGenerator, LLMSettings, describe_settings

    if not args.model:
        raise DataCreationError("--llm needs --model (the model name your server serves)")
    settings = LLMSettings(
        model=args.model, base_url=args.base_url, api_key_env=args.api_key_env, request_timeout=args.request_timeout,
        max_attempts=args.max_attempts, backoff_base=args.backoff_base, backoff_max=args.backoff_max,
        json_mode=not args.no_json_mode, attach_image=args.attach_image, temperature=args.temperature,
        max_tokens=args.max_tokens, price_input_per_1m=args.price_input, price_output_per_1m=args.price_output,
    )
    generator = LLMGenerator(settings)
    return GeneratorSpec(
        generate=generator,
        prompt_versions=dict(PROMPT_VERSIONS),
        description={"mode": "llm", **describe_settings(settings)},
        usage=lambda: generator.meter.summary(settings),
    )


def _options(args: argparse.Namespace, all_images: bool = False, study_level: bool = False) -> RunOptions:
    if args.concurrency < 1 or args.max_attempts < 1:
        raise DataCreationError("--concurrency and --max-attempts must be at least 1")
    return RunOptions(
        out_dir=args.out,
        tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
        sample_size=args.sample_size,
        seed=args.seed,
        split=parse_fractions(args.split),
        image_format=args.image_format,
        all_images=all_images,
        study_level=study_level,
        concurrency=args.concurrency if args.llm else 1,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )


def _main(build: Callable[[argparse.Namespace], Tuple[List[SourceItem], List[Rejection], TextFilter, dict]],
          parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> int:
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        spec = _generator_spec(args)  # fail on a missing key/model before reading anything
        items, rejections, text_filter, source_info = build(args)
        run(items, rejections, text_filter, _options(args, getattr(args, "all_images", False), getattr(args, "study_level", False)), spec, source_info)
    except DataCreationError as exc:
        if debug_requested(list(argv) if argv is not None else None):
            raise
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished items are saved; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


def openi_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="create_openi.py", epilog=EPILOG,
        description="OpenI / Indiana chest X-rays (Kaggle layout) -> filter_cap.json dataset (LLM or offline).",
    )
    src = parser.add_argument_group("input (Kaggle 'chest-xrays-indiana-university' layout)")
    src.add_argument("--root", type=Path, help="folder with indiana_reports.csv, indiana_projections.csv, images/images_normalized/")
    src.add_argument("--reports-csv", type=Path, help="override <root>/indiana_reports.csv")
    src.add_argument("--projections-csv", type=Path, help="override <root>/indiana_projections.csv")
    src.add_argument("--images-dir", type=Path, help="override <root>/images/images_normalized")
    flt = parser.add_argument_group("filters")
    flt.add_argument("--min-findings-chars", type=int, default=1, help="drop studies whose cleaned findings are shorter (0: keep empty)")
    flt.add_argument("--min-impression-chars", type=int, default=1, help="drop studies whose cleaned impression is shorter (0: keep empty)")
    flt.add_argument("--projection", choices=("frontal", "any"), default="frontal", help="which views count as the study's images")
    flt.add_argument("--all-images", action="store_true", help="one entry per selected image instead of the first image only")
    flt.add_argument("--study-level", action="store_true",
                     help="one entry per study with its first frontal and first lateral image ('image': [...], "
                          "'views': ['Frontal', 'Lateral']); the split stays per study")
    _common_arguments(parser)
    return parser


def _build_openi(args: argparse.Namespace):
    from xraygpt.data_creation.openi import read_openi

    if args.study_level and args.all_images:
        raise DataCreationError("--study-level and --all-images exclude each other (one study entry vs one entry per image)")
    items, rejections = read_openi(args.root, args.reports_csv, args.projections_csv, args.images_dir, args.projection,
                                   study_level=args.study_level)
    text_filter = TextFilter(min_findings_chars=args.min_findings_chars, min_impression_chars=args.min_impression_chars)
    info = {"name": "openi", "layout": "kaggle", **{k: str(getattr(args, k)) for k in ("root", "reports_csv", "projections_csv", "images_dir") if getattr(args, k)},
            "projection": args.projection, **({"study_level": True} if args.study_level else {})}
    return items, rejections, text_filter, info


def openi_main(argv: Optional[Sequence[str]] = None) -> int:
    return _main(_build_openi, openi_parser(), argv)


def roco_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="create_roco.py", epilog=EPILOG,
        description="ROCO radiology figures (GitHub layout or Kaggle CSV) -> filter_cap.json dataset (LLM or offline).",
    )
    src = parser.add_argument_group("input (one of)").add_mutually_exclusive_group(required=True)
    src.add_argument("--roco-dir", type=Path, help="GitHub layout folder data/<split>/radiology (captions.txt, licences.txt, images/)")
    src.add_argument("--kaggle-csv", type=Path, help="Kaggle CSV with id,name,caption (e.g. radiologyvaldata.csv); images in images/ beside it")
    parser.add_argument("--images-dir", type=Path, help="override the image folder")
    flt = parser.add_argument_group("filters")
    flt.add_argument("--min-caption-chars", type=int, default=20, help="drop figures whose cleaned caption is shorter")
    flt.add_argument("--exclude-licence", action="append", default=[], metavar="CC",
                     help="drop figures with this licence code (GitHub layout), e.g. 'NO-CC CODE'; repeatable")
    _common_arguments(parser)
    return parser


def _build_roco(args: argparse.Namespace):
    from xraygpt.data_creation.roco import read_roco_github, read_roco_kaggle

    if args.roco_dir:
        items, rejections = read_roco_github(args.roco_dir, args.images_dir)
    else:
        items, rejections = read_roco_kaggle(args.kaggle_csv, args.images_dir)
    if args.exclude_licence:
        excluded = set(args.exclude_licence)
        rejections += [Rejection(i.source_id, "filter", f"licence {i.meta.get('licence')} excluded") for i in items if i.meta.get("licence") in excluded]
        items = [i for i in items if i.meta.get("licence") not in excluded]
    info = {"name": "roco", "layout": "github" if args.roco_dir else "kaggle",
            "path": str(args.roco_dir or args.kaggle_csv), "images_dir": str(args.images_dir or "images/ (default)"),
            "licences": {i.source_id: i.meta["licence"] for i in items if i.meta.get("licence")}}
    return items, rejections, TextFilter(min_caption_chars=args.min_caption_chars), info


def roco_main(argv: Optional[Sequence[str]] = None) -> int:
    return _main(_build_roco, roco_parser(), argv)


def merge_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="merge_datasets.py", epilog=EPILOG,
        description="Merge dataset folders made by create_openi.py / create_roco.py into one (images under image/<name>/).",
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="dataset folders to merge")
    parser.add_argument("--out", type=Path, required=True, help="merged dataset folder")
    parser.add_argument("--names", help="comma list of names for the inputs (default: their folder names)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the dataset files of an --out folder that holds other files or another merge")
    return add_debug_argument(parser)


def merge_main(argv: Optional[Sequence[str]] = None) -> int:
    from xraygpt.data_creation.merge import merge_datasets

    args = merge_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        merge_datasets(args.inputs, args.out, args.names.split(",") if args.names else None, overwrite=args.overwrite)
    except DataCreationError as exc:
        if debug_requested(list(argv) if argv is not None else None):
            raise
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 2
    return 0
