"""Shared pieces of the serve tests: the tiny model behind a real uvicorn server on a free 127.0.0.1 port."""
from __future__ import annotations

import base64
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xraygpt.common.config import Config
from xraygpt.common.registry import registry
from xraygpt.conversation.loading import load_model_and_processor
from xraygpt.datasets.image_io import load_medical_image

API_KEY = "test-key-123"
CFG = "eval_configs/seed_reference_tiny.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def data_url(path: Path, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def load_tiny(repo_root: Path):
    cfg = Config({"cfg_path": str(repo_root / CFG)})
    torch.manual_seed(0)
    return load_model_and_processor(cfg, torch.device("cpu"))


@dataclass
class RunningServer:
    url: str
    model: Any
    processor: Any
    app: Any
    background: Any

    def stop(self) -> None:
        self.background.stop()


def start_server(model, processor, settings) -> RunningServer:
    from xraygpt.serve.app import create_app
    from xraygpt.serve.background import serve_in_thread

    app = create_app(model, processor, settings)
    background = serve_in_thread(app)
    return RunningServer(background.url, model, processor, app, background)


def reference_answer(model, processor, image_path: Path, question: str, max_new_tokens: int,
                     template: str = "default") -> str:
    """What ``model.generate`` answers, greedy, for the prompt the chat (and so the API) writes."""
    from xraygpt.conversation.templates import IMAGE_TAG

    tpl = registry.get_conversation_template(template)
    prompt = tpl.render([(tpl.roles[0], f"{IMAGE_TAG} {question}"), (tpl.roles[1], None)])
    pixels = processor(load_medical_image(image_path)).unsqueeze(0)
    with torch.inference_mode():
        return model.generate(pixels, [prompt], apply_template=False, max_new_tokens=max_new_tokens)[0]
