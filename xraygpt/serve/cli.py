"""``python -m xraygpt.serve`` / ``xraygpt-serve``: load the model once and serve the OpenAI-compatible API.

Binds 127.0.0.1 unless ``--host`` says otherwise; serving beyond this machine needs an API key
(``--api-key`` or ``XRAYGPT_API_KEY``) unless ``--no-auth-i-understand`` is given.
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import List, Optional

from xraygpt.common.cli import is_loopback, run_cli, setup_logging
from xraygpt.common.config import Config, add_config_arguments
from xraygpt.common.errors import ConfigurationError
from xraygpt.serve.settings import ServeSettings

logger = logging.getLogger(__name__)

API_KEY_ENV = "XRAYGPT_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve the model over the OpenAI chat-completions API.")
    add_config_arguments(parser)
    defaults = ServeSettings()
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--api-key", default=None,
                        help=f"require 'Authorization: Bearer <key>'; better: set {API_KEY_ENV} (keeps it out of ps)")
    parser.add_argument("--no-auth-i-understand", action="store_true",
                        help="allow a non-loopback --host without an API key (anyone who can reach it can use it)")
    parser.add_argument("--allow-local-root", type=Path, default=None,
                        help="accept image URLs that are file paths, only under this folder (off by default)")
    parser.add_argument("--served-model-name", default=defaults.model_name, help="the model id clients send")
    parser.add_argument("--template", default=defaults.template, help="conversation template (default: default)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda:<gpu-id> if available)")
    parser.add_argument("--gpu-id", type=int, default=None, help="CUDA device index (when --device is not given)")
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size, help="rows decoded together")
    parser.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                        help="longest a request waits for companions before its prefill starts")
    parser.add_argument("--max-queue", type=int, default=defaults.max_queue,
                        help="requests waiting for a row before new ones get 429")
    parser.add_argument("--max-body-mb", type=float, default=defaults.max_body_bytes / 2**20, help="largest request body")
    parser.add_argument("--max-image-pixels", type=int, default=defaults.max_image_pixels, help="largest image (w*h)")
    parser.add_argument("--max-tokens-limit", type=int, default=defaults.max_tokens_limit,
                        help="largest max_tokens a request may ask for")
    parser.add_argument("--default-max-tokens", type=int, default=defaults.default_max_tokens,
                        help="max_tokens when a request gives none")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def settings_from(args: argparse.Namespace) -> ServeSettings:
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(args.host) and api_key is None and not args.no_auth_i_understand:
        raise ConfigurationError(
            f"refusing to serve on {args.host} without an API key: set {API_KEY_ENV} (or --api-key), "
            "or pass --no-auth-i-understand to serve unauthenticated"
        )
    root = None
    if args.allow_local_root is not None:
        root = args.allow_local_root.resolve()
        if not root.is_dir():
            raise ConfigurationError(f"--allow-local-root {args.allow_local_root} is not a folder")
    return ServeSettings(
        model_name=args.served_model_name, template=args.template, api_key=api_key, allow_local_root=root,
        max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        max_body_bytes=int(args.max_body_mb * 2**20), max_image_pixels=args.max_image_pixels,
        max_tokens_limit=args.max_tokens_limit, default_max_tokens=args.default_max_tokens,
    )


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(getattr(logging, args.log_level.upper()))
    settings = settings_from(args)  # before the model loads: a refused start costs nothing
    from xraygpt.common.registry import registry

    registry.get_conversation_template(settings.template)  # an unknown name fails now, with suggestions

    import uvicorn

    from xraygpt.conversation.loading import load_model_and_processor, pick_device
    from xraygpt.serve.app import create_app

    model, processor = load_model_and_processor(Config(args), pick_device(args.device, args.gpu_id))
    app = create_app(model, processor, settings)
    if not is_loopback(args.host):
        logger.warning("listening on %s: reachable from other machines (%s)", args.host,
                       "API key required" if settings.api_key else "NO API key: anyone who can reach it can use it")
    logger.info("serving %r on http://%s:%d/v1 (batch %d, wait %g ms, key %s)", settings.model_name, args.host,
                args.port, settings.max_batch_size, settings.max_wait_ms, "required" if settings.api_key else "off")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0


def cli() -> None:
    run_cli(main)
