"""Instruction prompts for samples whose annotation carries none.

The ancestors drew a random prompt at every step; we pick one per sample
from a hash of (seed, image id), so two runs with the same seed see the
same prompt for the same image and a run can be reproduced exactly.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import List, Sequence

from xraygpt.common.constants import IMAGE_TAG  # the original prompt files start each line with it

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PROMPT_FILE = PACKAGE_ROOT / "configs" / "prompts" / "report.txt"


def normalise_prompt(prompt: str) -> str:
    """Return the text that follows ``</Img>``: the image tag removed, one leading space.

    The model glues the prompt straight onto ``</Img>``, so every source
    (prompt files, annotation files) is brought to the original's form
    ``" Describe ..."``.
    """
    text = prompt.strip()
    if text.startswith(IMAGE_TAG):
        text = text[len(IMAGE_TAG):].strip()
    return " " + text if text else ""


def load_prompts(path: str | Path | None = None) -> List[str]:
    """Read one prompt per non-empty line (``#`` starts a comment line)."""
    path = Path(path) if path else DEFAULT_PROMPT_FILE
    if not path.is_absolute() and not path.exists() and (PACKAGE_ROOT / path).exists():
        path = PACKAGE_ROOT / path  # "configs/prompts/report.txt" names the shipped file
    if not path.is_file():
        raise FileNotFoundError(
            f"prompt file not found: {path} (one instruction per line, e.g. xraygpt/configs/prompts/report.txt)"
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    prompts = [normalise_prompt(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"prompt file {path} holds no prompts")
    return prompts


def pick_prompt(prompts: Sequence[str], key: str, seed: int = 0) -> str:
    """Deterministic choice: the same (seed, key) always gives the same prompt."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode("utf-8"), digest_size=8).digest()
    return prompts[int.from_bytes(digest, "little") % len(prompts)]
