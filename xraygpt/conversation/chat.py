"""Multi-turn chat about medical images with a MiniGPT-4-style model.

The model sees the whole conversation every turn, written out with a
:class:`~xraygpt.conversation.templates.ConversationTemplate`.  Each image is
encoded once, on upload, and its embeddings are spliced into the token
embeddings wherever the prompt says ``<ImageHere>``.  When the conversation
outgrows the LLM window, the oldest exchanges after the first one (which holds
the image and the first question) are dropped, with a warning.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Union

import torch
from PIL import Image

from xraygpt.common.registry import registry
from xraygpt.conversation.generation import GenerationSettings
from xraygpt.conversation.templates import IMAGE_PLACEHOLDER, IMAGE_TAG, Conversation, ConversationTemplate

logger = logging.getLogger(__name__)

ImageInput = Union[str, Path, Image.Image, torch.Tensor]


class ContextTooLongError(ValueError):
    """The current question alone (with the image turn) does not fit in the LLM window."""


@dataclass
class ChatState:
    """Everything one user's chat needs; the demo keeps one per browser session."""

    conversation: Conversation
    image_embeds: List[torch.Tensor] = field(default_factory=list)
    """One ``[Q, D]`` tensor per ``<ImageHere>`` in the conversation, in order."""
    warnings: List[str] = field(default_factory=list)
    """Messages for the user (e.g. earlier turns dropped); the UI shows and clears them."""


def context_embeddings(
    prompt: str,
    image_embeds: Sequence[torch.Tensor],
    tokenizer: Any,
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``[1, T, D]`` LLM input: text segments around ``<ImageHere>`` with the image vectors between.

    Each segment is tokenized on its own (as in training); only the first gets
    special tokens, i.e. the BOS.
    """
    segments = prompt.split(IMAGE_PLACEHOLDER)
    if len(segments) != len(image_embeds) + 1:
        raise ValueError(
            f"prompt has {len(segments) - 1} {IMAGE_PLACEHOLDER} placeholders but {len(image_embeds)} images were given"
        )
    weight = embed_tokens.weight if hasattr(embed_tokens, "weight") else None
    device = weight.device if weight is not None else image_embeds[0].device
    pieces = []
    for index, segment in enumerate(segments):
        ids = tokenizer(segment, return_tensors="pt", add_special_tokens=index == 0).input_ids.to(device)
        text_embeds = embed_tokens(ids)
        pieces.append(text_embeds)
        if index < len(image_embeds):
            pieces.append(image_embeds[index].to(device=device, dtype=text_embeds.dtype).unsqueeze(0))
    return torch.cat(pieces, dim=1)


class _CancelFlag:
    """A stopping criterion that ends generation once ``event`` is set (abandoned streams)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class Chat:
    """``upload_img`` -> ``ask`` -> ``answer`` / ``stream_answer``, on a per-user :class:`ChatState`.

    ``model`` needs ``encode_img``, ``tokenizer`` and ``llama_model`` (the
    interface of ``mini_gpt4``); ``vis_processor`` maps a PIL image to ``[3, H, W]``.
    """

    def __init__(
        self,
        model: Any,
        vis_processor: Callable[[Image.Image], torch.Tensor],
        template: Union[str, ConversationTemplate] = "default",
        max_context_tokens: Optional[int] = None,
    ):
        self.model = model
        self.vis_processor = vis_processor
        self.template = registry.get_conversation_template(template) if isinstance(template, str) else template
        window = getattr(model.llama_model.config, "max_position_embeddings", None)
        self.max_context_tokens = int(max_context_tokens or window or 2048)

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.llama_model.parameters()).device

    def new_state(self) -> ChatState:
        return ChatState(self.template.new_conversation())

    # ------------------------------------------------------------------ turns
    def upload_img(self, image: ImageInput, state: ChatState) -> None:
        """Encode ``image`` once and add an image turn for the user."""
        pixels = self._pixels(image).to(self.device)
        with torch.inference_mode():
            image_embeds, _ = self.model.encode_img(pixels.unsqueeze(0))
        state.image_embeds.append(image_embeds[0])
        self._add_user_text(state, IMAGE_TAG)

    def ask(self, text: str, state: ChatState) -> None:
        """Add the user's question (joined to a pending image turn, as the model was trained)."""
        text = text.strip()
        if not text:
            raise ValueError("the question is empty")
        self.template.check_message(text)
        self._add_user_text(state, text)

    def answer(self, state: ChatState, settings: GenerationSettings = GenerationSettings()) -> str:
        """Generate the assistant's reply to the last question and record it."""
        reply = ""
        for reply in self.stream_answer(state, settings):
            pass
        return reply

    def stream_answer(self, state: ChatState, settings: GenerationSettings = GenerationSettings()) -> Iterator[str]:
        """Yield the reply so far as it grows (cut at the template's stop string).

        The reply is recorded in the conversation when the
        iterator finishes or is closed; on an error the pending turn is removed.
        """
        messages = state.conversation.messages
        if not messages or messages[-1][0] != state.conversation.user_role:
            raise ValueError("ask a question before asking for an answer")
        state.conversation.append(state.conversation.assistant_role, None)
        reply = ""
        try:
            embeds = self._fit_context(state, settings.max_new_tokens)
            with contextlib.closing(self.stream_from_embeddings(embeds, settings)) as stream:
                for reply in stream:
                    yield reply
        except GeneratorExit:  # the reader stopped early: keep what it saw
            messages[-1][1] = reply
            raise
        except BaseException:
            messages.pop()
            raise
        messages[-1][1] = reply

    # -------------------------------------------------------------- internals
    def _pixels(self, image: ImageInput) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            return image
        if isinstance(image, (str, Path)):
            from xraygpt.datasets.image_io import load_medical_image

            image = load_medical_image(image)
        return self.vis_processor(image.convert("RGB"))

    def _add_user_text(self, state: ChatState, text: str) -> None:
        messages = state.conversation.messages
        if messages and messages[-1][0] == state.conversation.user_role:
            messages[-1][1] = f"{messages[-1][1]} {text}"
        else:
            state.conversation.append(state.conversation.user_role, text)

    def _embed(self, state: ChatState) -> torch.Tensor:
        return context_embeddings(
            state.conversation.prompt(),
            state.image_embeds,
            self.tokenizer,
            self.model.llama_model.get_input_embeddings(),
        )

    def _fit_context(self, state: ChatState, max_new_tokens: int) -> torch.Tensor:
        """Context embeddings that leave room for ``max_new_tokens``, dropping old exchanges if needed."""
        budget = self.max_context_tokens - max_new_tokens
        messages = state.conversation.messages
        dropped = 0
        with torch.inference_mode():
            embeds = self._embed(state)
            # Layout: [user0, assistant0, ..., user_n, pending]; keep the first exchange and the question.
            while embeds.shape[1] > budget and len(messages) > 4:
                first_image = sum(text.count(IMAGE_PLACEHOLDER) for _, text in messages[:2])
                n_images = sum(text.count(IMAGE_PLACEHOLDER) for _, text in messages[2:4])
                del state.image_embeds[first_image : first_image + n_images]
                del messages[2:4]
                dropped += 1
                embeds = self._embed(state)
        if dropped:
            note = f"The conversation was too long for the model; the {dropped} oldest exchange(s) after the first were dropped."
            logger.warning(note)
            state.warnings.append(note)
        if embeds.shape[1] > budget:
            raise ContextTooLongError(
                f"the prompt needs {embeds.shape[1]} tokens but only {budget} fit "
                f"({self.max_context_tokens}-token window minus {max_new_tokens} new tokens); "
                "ask a shorter question, lower max new tokens, or reset the chat"
            )
        return embeds

    def _generate_kwargs(self, embeds: torch.Tensor, settings: GenerationSettings) -> dict:
        tokenizer = self.tokenizer
        kwargs = dict(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device),
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            **settings.generate_kwargs(),
        )
        if self.template.stop_strings:
            kwargs.update(stop_strings=list(self.template.stop_strings), tokenizer=tokenizer)
        return kwargs

    def stream_from_embeddings(self, embeds: torch.Tensor, settings: GenerationSettings) -> Iterator[str]:
        """Decode from ready-made context embeddings ``[1, T, D]``, yielding the reply as it grows.

        Beam search cannot stream, so with ``num_beams > 1`` the reply comes in one piece.
        """
        if settings.num_beams == 1:
            yield from self._generate_streaming(embeds, settings)
            return
        with torch.inference_mode():
            ids = self.model.llama_model.generate(**self._generate_kwargs(embeds, settings))
        text = self.tokenizer.decode(ids[0], skip_special_tokens=True)
        yield self.template.cut_at_stop(text)[0]

    def _generate_streaming(self, embeds: torch.Tensor, settings: GenerationSettings) -> Iterator[str]:
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        errors: List[BaseException] = []

        def work() -> None:
            try:
                with torch.inference_mode():
                    self.model.llama_model.generate(
                        **self._generate_kwargs(embeds, settings),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_CancelFlag(cancel)]),
                    )
            except BaseException as exc:  # re-raised in the caller's thread below
                errors.append(exc)
                streamer.end()

        worker = threading.Thread(target=work, name="xraygpt-generate", daemon=True)
        worker.start()
        text, reply = "", None
        try:
            for piece in streamer:
                text += piece
                current, stopped = self.template.cut_at_stop(text)
                if current != reply:
                    reply = current
                    yield reply
                if stopped:
                    break
        finally:
            cancel.set()
            worker.join()
        if errors:
            raise errors[0]
        if reply is None:
            yield ""
