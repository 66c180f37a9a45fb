"""Generation through any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, ...).

One place owns the retry policy so that every attempt is counted: transient failures
(429, 5xx, timeouts, dropped connections) and answers that fail the JSON schema are
retried with exponential backoff and jitter; after the last attempt the job is
rejected with its reason.  Credentials or model errors (401/403/404) stop the run,
since every later request would fail the same way.
"""
from __future__ import annotations

import base64
import logging
import os
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from xraygpt.data_creation.records import DataCreationError, GenerationRejected, Job
from xraygpt.structured.targets import LLM_INSTRUCTION as STRUCTURED_INSTRUCTION
from xraygpt.structured.targets import STRUCTURED_PROMPT, llm_target

log = logging.getLogger(__name__)

PROMPT_VERSIONS = {"report": "llm-report-v1", "vqa": "llm-vqa-v1", "structured": "llm-structured-v1"}

SYSTEM_PROMPT = (
    "You are a board-certified radiologist preparing training data for a model that reads medical images. "
    "Use only facts stated in the source text; never invent findings. The text may contain 'XXXX' where words "
    "were removed for privacy: never copy 'XXXX' into your answer. Reply with one JSON object and nothing else."
)
TASK_INSTRUCTIONS = {
    "report": (
        "Write the instruction a clinician would give when showing this image, and a detailed, fluent "
        "radiology report answering it (findings then impression, plain sentences, no headings). "
        'Answer as JSON: {"prompt": "<instruction>", "response": "<report>"}.'
    ),
    "vqa": (
        "Write one clinically useful question about this image that the source text answers, and its "
        "short answer (yes/no questions start the answer with Yes or No). "
        'Answer as JSON: {"question": "<question>", "answer": "<answer>"}.'
    ),
    "structured": STRUCTURED_INSTRUCTION,
}
SOURCE_FIELDS = {
    "openi": ("indication", "comparison", "findings", "impression", "MeSH"),
    "roco": ("caption", "keywords"),
}
RETRYABLE_STATUS_MIN = 500


def _schemas():
    """Pydantic models of the two answers (built lazily: pydantic comes with ``openai``)."""
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    class _Answer(BaseModel):
        model_config = ConfigDict(str_strip_whitespace=True, extra="ignore")

        @field_validator("*")
        @classmethod
        def no_masked_words(cls, value: str) -> str:
            if "XXXX" in value:
                raise ValueError("contains the anonymisation token XXXX")
            return value

    class ReportAnswer(_Answer):
        prompt: str = Field(min_length=5, max_length=500)
        response: str = Field(min_length=20, max_length=6000)

    class VqaAnswer(_Answer):
        question: str = Field(min_length=5, max_length=500)
        answer: str = Field(min_length=1, max_length=2000)

    return {"report": (ReportAnswer, "prompt", "response"), "vqa": (VqaAnswer, "question", "answer")}


@dataclass
class LLMSettings:
    model: str
    base_url: Optional[str] = None
    api_key_env: str = "OPENAI_API_KEY"
    request_timeout: float = 60.0
    max_attempts: int = 6
    """Attempts per job, first try included."""
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    json_mode: bool = True
    """Send ``response_format={"type": "json_object"}``; turn off for servers without it."""
    attach_image: bool = False
    """Send the image as a data URL (vision models only)."""
    temperature: float = 0.2
    max_tokens: int = 1024
    price_input_per_1m: float = 0.0
    price_output_per_1m: float = 0.0


@dataclass
class UsageMeter:
    """Thread-safe request, retry and token counts, and the cost they imply."""

    requests: int = 0
    retries: Dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_request(self, usage: Any) -> None:
        with self._lock:
            self.requests += 1
            if usage is not None:
                self.prompt_tokens += getattr(usage, "prompt_tokens", 0) or 0
                self.completion_tokens += getattr(usage, "completion_tokens", 0) or 0

    def count_retry(self, kind: str) -> None:
        with self._lock:
            self.retries[kind] = self.retries.get(kind, 0) + 1

    def summary(self, settings: LLMSettings) -> Dict[str, Any]:
        cost = (self.prompt_tokens * settings.price_input_per_1m + self.completion_tokens * settings.price_output_per_1m) / 1e6
        return {
            "requests": self.requests,
            "retries": dict(sorted(self.retries.items())),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "estimated_cost_usd": round(cost, 6),
            "price_per_1m_tokens_usd": {"input": settings.price_input_per_1m, "output": settings.price_output_per_1m},
        }


def _image_part(path: Path) -> Dict[str, Any]:
    mime = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def build_messages(job: Job, attach_image: bool) -> List[Dict[str, Any]]:
    item = job.item
    lines = [f"Source: {item.source} ({'chest X-ray study' if item.source == 'openi' else 'figure caption from a paper'})"]
    for name in SOURCE_FIELDS.get(item.source, tuple(item.text)):
        value = item.text.get(name, "")
        lines.append(f"{name}: {value if value else '(empty)'}")
    text = "\n".join(lines) + "\n\n" + TASK_INSTRUCTIONS[job.task]
    content: Any = text
    if attach_image and job.image is not None:
        content = [{"type": "text", "text": text}, _image_part(job.image)]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


class LLMGenerator:
    """Callable ``job -> (entries, info)``; safe to call from several threads."""

    def __init__(self, settings: LLMSettings, meter: Optional[UsageMeter] = None):
        try:
            import openai
        except ImportError as exc:
            raise DataCreationError("--llm needs the 'openai' package: pip install openai (or use --offline)") from exc
        self.openai = openai
        self.settings = settings
        self.meter = meter or UsageMeter()
        self.schemas = _schemas()
        api_key = os.environ.get(settings.api_key_env)
        if not api_key:
            if settings.base_url is None:
                raise DataCreationError(
                    f"environment variable {settings.api_key_env} is not set: export your API key there "
                    "(or name another variable with --api-key-env)"
                )
            # Local servers (vLLM, Ollama) usually ignore the key but the client needs one.
            log.warning("%s is not set; sending a placeholder key to %s", settings.api_key_env, settings.base_url)
            api_key = "not-needed"
        # Retries are ours (max_retries=0) so each one is counted and logged the same way.
        self.client = openai.OpenAI(
            api_key=api_key, base_url=settings.base_url, timeout=settings.request_timeout, max_retries=0
        )

    def _delay(self, attempt: int, retry_after: Optional[str]) -> float:
        if retry_after:
            try:
                return min(self.settings.backoff_max, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return min(self.settings.backoff_max, self.settings.backoff_base * 2**attempt) * random.uniform(0.5, 1.0)

    def _request(self, job: Job):
        kwargs: Dict[str, Any] = dict(
            model=self.settings.model,
            messages=build_messages(job, self.settings.attach_image),
            temperature=self.settings.temperature,
            max_tokens=self.settings.max_tokens,
        )
        if self.settings.json_mode:
            kwargs["response_format"] = {"type": "json_object"}
        return self.client.chat.completions.create(**kwargs)

    def _parse(self, job: Job, completion) -> List[Dict[str, str]]:
        """The answer as entries, or ValueError saying what is wrong with it."""
        from pydantic import ValidationError

        if not completion.choices:
            raise ValueError("response has no choices")
        choice = completion.choices[0]
        content = (choice.message.content or "").strip()
        if choice.finish_reason == "length":
            raise ValueError("answer cut off at max_tokens")
        if content.startswith("```"):  # some local models wrap JSON in a code fence
            content = content.strip("`").removeprefix("json").strip()
        if job.task == "structured":
            return [_structured_entry(job, content)]
        model, prompt_key, caption_key = self.schemas[job.task]
        try:
            answer = model.model_validate_json(content)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "answer"
            raise ValueError(f"invalid JSON answer ({where}: {first['msg']}): {content[:80]!r}") from None
        return [{"prompt": getattr(answer, prompt_key), "caption": getattr(answer, caption_key)}]

    def __call__(self, job: Job) -> Tuple[List[Dict[str, str]], Dict[str, Any]]:
        openai = self.openai
        last_error = ""
        for attempt in range(self.settings.max_attempts):
            retry_after = None
            try:
                completion = self._request(job)
                self.meter.count_request(completion.usage)
                entries = self._parse(job, completion)
                usage = completion.usage
                return entries, {
                    "model": completion.model or self.settings.model,
                    "attempts": attempt + 1,
                    "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
                    "completion_tokens": getattr(usage, "completion_tokens", 0) or 0,
                }
            except ValueError as exc:
                kind, last_error = "malformed_answer", str(exc)
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
                raise DataCreationError(
                    f"the server refused the request (HTTP {exc.status_code}): check --model, --base-url and the key in "
                    f"{self.settings.api_key_env}. Finished items are kept; rerun the same command to resume."
                ) from None
            except openai.APITimeoutError:
                self.meter.count_request(None)
                kind, last_error = "timeout", f"request timed out after {self.settings.request_timeout:g} s"
            except openai.APIConnectionError as exc:
                self.meter.count_request(None)
                kind, last_error = "connection_error", f"connection failed ({exc.__class__.__name__})"
            except openai.APIStatusError as exc:
                self.meter.count_request(None)
                status = exc.status_code
                if status != 429 and status < RETRYABLE_STATUS_MIN:
                    raise GenerationRejected(f"HTTP {status} from the server: {exc.message[:200]}") from None
                kind = "rate_limited" if status == 429 else "server_error"
                last_error = f"HTTP {status}"
                retry_after = exc.response.headers.get("retry-after") if exc.response is not None else None
            if attempt + 1 < self.settings.max_attempts:
                self.meter.count_retry(kind)
                delay = self._delay(attempt, retry_after)
                log.debug("%s: %s, retry %d in %.2f s", job.key, last_error, attempt + 1, delay)
                time.sleep(delay)
        raise GenerationRejected(f"gave up after {self.settings.max_attempts} attempts; last error: {last_error}")


def _structured_entry(job: Job, content: str) -> Dict[str, str]:
    """A structured answer checked against the report schema and the source text (ValueError if not)."""
    if job.item.source != "openi":
        raise GenerationRejected("structured targets follow the chest x-ray schema: OpenI items only")
    source = " ".join(job.item.text.get(k, "") for k in ("findings", "impression"))
    return {"prompt": STRUCTURED_PROMPT, "caption": llm_target(content, source)}


def describe_settings(settings: LLMSettings) -> Dict[str, Any]:
    """Settings for the manifest; they hold the key variable's name, never its value."""
    return asdict(settings)
