"""The FastAPI app: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.

Each request is checked (key, body, model name, parameters, images, context length) and
handed to the :class:`ContinuousBatcher`; tokens come back through an asyncio queue and
go out as one JSON answer or as server-sent events. Every refusal is an OpenAI error
object; an unexpected failure is logged with its traceback and answered with a 500 that
names only the request id.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from typing import Any, AsyncIterator, Callable, Dict, List, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from xraygpt.common.registry import registry
from xraygpt.models.prompting import build_generation_batch
from xraygpt.serve.batcher import ContinuousBatcher, GenerationRequest, QueueFullError
from xraygpt.serve.errors import APIError, bad_request, error_body
from xraygpt.serve.images import load_image_url
from xraygpt.serve.messages import build_prompt
from xraygpt.serve.middleware import AccessLog, BodySizeLimit
from xraygpt.serve.protocol import (
    AnswerMessage, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice, ChunkChoice, Delta,
    ModelCard, ModelList, Usage,
)
from xraygpt.serve.settings import ServeSettings
from xraygpt.serve.structured import (
    RowGrammar,
    check_response_format,
    constrained_answer,
    structured_answer,
    structured_mode,
)

logger = logging.getLogger(__name__)

# Accepted by the protocol but not implemented: refused by name instead of silently ignored.
_UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "logit_bias", "logprobs", "top_logprobs",
                "audio", "modalities", "prediction")


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body",))
    return f"invalid request: {where}: {first.get('msg')}" if where else f"invalid request: {first.get('msg')}"


class ChatService:
    """Turns a validated request into a :class:`GenerationRequest` and its answer into protocol objects."""

    def __init__(self, model: Any, vis_processor: Callable, settings: ServeSettings, batcher: ContinuousBatcher):
        self.model, self.vis_processor, self.settings, self.batcher = model, vis_processor, settings, batcher
        self.template = registry.get_conversation_template(settings.template)
        self.window = int(getattr(model.llama_model.config, "max_position_embeddings", 2048))
        self.num_query_tokens = int(model.config.num_query_token)
        # Multi-image hook: a model config with max_images > 1 (the study issue) lifts the one-image rule.
        self.max_images = int(getattr(model.config, "max_images", 1) or 1)
        self.stops = [s for s in (*self.template.stop_strings, model.config.end_sym) if s and s != model.tokenizer.eos_token]
        self.created = int(time.time())

    def check(self, body: ChatCompletionRequest) -> None:
        if body.model != self.settings.model_name:
            raise APIError(404, f"the model {body.model!r} does not exist; this server serves {self.settings.model_name!r}",
                           code="model_not_found", param="model")
        if body.n not in (None, 1):
            raise bad_request(f"n={body.n} is not supported: one answer per request (n=1)", param="n")
        extras = body.model_extra or {}
        for name in _UNSUPPORTED:
            if extras.get(name) not in (None, False, [], {}):
                raise bad_request(f"{name} is not supported by this server", param=name)
        for name in ("frequency_penalty", "presence_penalty"):
            if extras.get(name) not in (None, 0, 0.0):
                raise bad_request(f"{name} is not supported by this server (leave it at 0)", param=name)
        check_response_format(body.response_format, stream=bool(body.stream), constrained=True)  # the batcher masks rows

    def max_new_tokens(self, body: ChatCompletionRequest) -> int:
        wanted = body.max_completion_tokens or body.max_tokens or self.settings.default_max_tokens
        if wanted > self.settings.max_tokens_limit:
            raise bad_request(f"max_tokens={wanted} is above this server's limit of {self.settings.max_tokens_limit} "
                              "(--max-tokens-limit)", param="max_tokens")
        return wanted

    def stops_for(self, body: ChatCompletionRequest) -> List[str]:
        extra = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(extra) > 4:
            raise bad_request(f"at most 4 stop strings, got {len(extra)}", param="stop")
        return self.stops + [s for s in extra if s]

    def prepare(self, body: ChatCompletionRequest) -> GenerationRequest:
        """Blocking part (image decoding, tokenizing): run in a worker thread."""
        plan = build_prompt(body.messages, self.template, self.max_images)
        images = [load_image_url(url, self.settings.allow_local_root, self.settings.max_image_pixels)
                  for url in plan.image_urls]
        pixels = [self.vis_processor(image.convert("RGB")) for image in images]
        max_new = self.max_new_tokens(body)
        context = build_generation_batch(self.model.tokenizer, [plan.prompt], self.num_query_tokens, [len(images)])
        needed = int(context.attention_mask.shape[1]) + max_new
        if needed > self.window:
            raise bad_request(f"the conversation needs {needed - max_new} tokens plus max_tokens={max_new}, above the "
                              f"model's {self.window}-token window; shorten the history or lower max_tokens",
                              param="messages", code="context_length_exceeded")
        return GenerationRequest(
            prompt=plan.prompt, pixels=pixels, max_new_tokens=max_new,
            temperature=float(body.temperature or 0.0), top_p=float(body.top_p if body.top_p is not None else 1.0),
            seed=body.seed, stops=self.stops_for(body), ignore_eos=bool(body.ignore_eos),
            grammar=RowGrammar(self.model) if structured_mode(body.response_format) == "constrained" else None,
        )

    def usage(self, done: Dict[str, Any], images: int) -> Usage:
        image_tokens = self.num_query_tokens * images
        return Usage(prompt_tokens=done["prompt_tokens"], completion_tokens=done["completion_tokens"],
                     total_tokens=done["prompt_tokens"] + done["completion_tokens"], image_tokens=image_tokens,
                     prompt_tokens_details={"image_tokens": image_tokens, "cached_tokens": 0})


def create_app(model: Any, vis_processor: Callable, settings: ServeSettings,
               batcher: Optional[ContinuousBatcher] = None) -> FastAPI:
    """The ASGI app; the batcher (started here when not given) lives as long as the app."""
    batcher = batcher or ContinuousBatcher(model, settings.max_batch_size, settings.max_wait_ms, settings.max_queue)
    service = ChatService(model, vis_processor, settings, batcher)

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="XrayGPT OpenAI-compatible API", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.batcher, app.state.service = batcher, service

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "missing or incorrect API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = "not found" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse(error_body(f"{message}: {request.method} {request.url.path}", "invalid_request_error"),
                            status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("invalid request", "invalid_request_error"), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = request.scope.get("state", {}).get("request_id", "?")
        logger.error("request %s failed", request_id, exc_info=exc)
        return JSONResponse(error_body(f"internal server error (request id {request_id})", "server_error"),
                            status_code=500)

    @app.get("/health")
    async def health() -> Dict[str, Any]:
        return {"status": "ok", "model": settings.model_name, **batcher.load(), "stats": dict(batcher.stats)}

    @app.get("/v1/models")
    async def models(request: Request) -> Dict[str, Any]:
        authorize(request)
        return ModelList(data=[ModelCard(id=settings.model_name, created=service.created)]).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        raw = await request.body()
        try:
            body = ChatCompletionRequest.model_validate_json(raw)
        except ValidationError as exc:
            raise bad_request(_validation_message(exc)) from None
        service.check(body)
        generation = await run_in_threadpool(service.prepare, body)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        generation.on_event = lambda kind, data: loop.call_soon_threadsafe(events.put_nowait, (kind, data))
        state = request.scope["state"]
        generation.request_id = state["request_id"]
        try:
            batcher.submit(generation)
        except QueueFullError as exc:
            raise APIError(429, f"the server is busy: {exc}; retry shortly", type="rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        completion_id = f"chatcmpl-{state['request_id']}"
        images = len(generation.pixels)

        def record(done: Dict[str, Any]) -> None:
            state.update(prompt_tokens=done["prompt_tokens"], completion_tokens=done["completion_tokens"],
                         finish_reason=done["finish_reason"])

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _stream(service, generation, events, completion_id, images, include_usage, record),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
            )
        done = await _wait_for_answer(request, generation, events)
        record(done)
        content = done["text"]
        mode = structured_mode(body.response_format)
        if mode is not None:  # the structured report (schema v1): read from the prose, or decoded under the schema
            make = constrained_answer if mode == "constrained" else structured_answer
            content = make(content, service.model, settings.model_name, {
                "max_new_tokens": generation.max_new_tokens, "temperature": generation.temperature,
                "top_p": generation.top_p, "seed": generation.seed})
        return ChatCompletion(
            id=completion_id, created=int(time.time()), model=settings.model_name,
            choices=[Choice(message=AnswerMessage(content=content), finish_reason=done["finish_reason"])],
            usage=service.usage(done, images),
        ).model_dump()

    return _wrap(app, settings)


def _wrap(app: FastAPI, settings: ServeSettings):
    """Access log outermost (it sees the 413s too), then the body-size cap, then the app."""
    wrapped = AccessLog(BodySizeLimit(app, settings.max_body_bytes))
    wrapped.state = app.state
    wrapped.fastapi = app
    return wrapped


async def _wait_for_answer(request: Request, generation: GenerationRequest, events: asyncio.Queue) -> Dict[str, Any]:
    """The ``done`` event; a client that goes away meanwhile (checked every 0.5 s) cancels its row."""
    checked = time.monotonic()
    try:
        while True:
            try:
                kind, data = await asyncio.wait_for(events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                kind, data = "", {}
            if kind == "done":
                return data
            if kind == "error":
                raise APIError(500, data["message"], type="server_error")
            if time.monotonic() - checked >= 0.5:  # deltas keep coming: look at the connection between them too
                checked = time.monotonic()
                if await request.is_disconnected():
                    generation.cancel()
                    raise APIError(499, "client closed the request")
    except asyncio.CancelledError:
        generation.cancel()
        raise


def _sse(payload: Dict[str, Any]) -> str:
    # ASCII-escaped: a raw U+0085 or U+2028 in the text would split the event for line-based SSE readers.
    return f"data: {json.dumps(payload)}\n\n"


async def _stream(service: ChatService, generation: GenerationRequest, events: asyncio.Queue, completion_id: str,
                  images: int, include_usage: bool, record: Callable) -> AsyncIterator[str]:
    created, name = int(time.time()), service.settings.model_name

    def chunk(delta: Delta, finish: Optional[str] = None, usage: Optional[Usage] = None, choices: bool = True) -> str:
        body = ChatCompletionChunk(id=completion_id, created=created, model=name, usage=usage,
                                   choices=[ChunkChoice(delta=delta, finish_reason=finish)] if choices else [])
        payload = body.model_dump()
        if usage is None:
            del payload["usage"]
        return _sse(payload)

    try:
        yield chunk(Delta(role="assistant", content=""))
        while True:
            kind, data = await events.get()
            if kind == "delta":
                yield chunk(Delta(content=data["text"]))
            elif kind == "done":
                record(data)
                yield chunk(Delta(), finish=data["finish_reason"])
                if include_usage:
                    yield chunk(Delta(), usage=service.usage(data, images), choices=False)
                break
            else:
                yield _sse(error_body(data["message"], "server_error"))
                break
        yield "data: [DONE]\n\n"
    finally:
        generation.cancel()  # a no-op once the row has finished; frees it when the client went away
