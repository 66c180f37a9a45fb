"""Multi-turn chat about a medical image with a MiniGPT-4-style model.

The model sees the whole conversation every turn, written out with a
:class:`~xraygpt.conversation.templates.ConversationTemplate`.  The image runs
through the vision encoder and Q-Former once, on upload; each turn reuses
those features through the model's own generation API
(``prepare_generation_inputs`` / ``generate`` / ``stream_generate`` with
``apply_template=False``), so every decoding path of the model (including a
fast CUDA one) serves the chat too.  When the conversation outgrows the LLM
window, the oldest exchanges after the first (which holds the image and the
first question) are dropped, with a warning.
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
from xraygpt.common.decoding_settings import CHAT_DEFAULTS, GenerationSettings
from xraygpt.conversation.templates import IMAGE_TAG, Conversation, ConversationTemplate
from xraygpt.common.errors import DataError

logger = logging.getLogger(__name__)

ImageInput = Union[str, Path, Image.Image, torch.Tensor]


class ContextTooLongError(DataError):
    """The current question alone (with the image turn) does not fit in the LLM window."""


@dataclass
class ChatState:
    """Everything one user's chat needs; the demo keeps one per browser session."""

    conversation: Conversation
    image_features: Optional[torch.Tensor] = None
    """Q-Former output ``[1, Q, D]`` of the conversation's image, computed once on upload."""
    warnings: List[str] = field(default_factory=list)
    """Messages for the user (e.g. earlier turns dropped); the UI shows and clears them."""


class Chat:
    """``upload_img`` -> ``ask`` -> ``answer`` / ``stream_answer``, on a per-user :class:`ChatState`.

    ``model`` is a ``mini_gpt4`` model (``encode_qformer``, ``prepare_generation_inputs``,
    ``generate``, ``stream_generate``, ``tokenizer``, ``llama_model``);
    ``vis_processor`` maps a PIL image to ``[3, H, W]``.
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

    def new_state(self) -> ChatState:
        return ChatState(self.template.new_conversation())

    # ------------------------------------------------------------------ turns
    def upload_img(self, image: Union[ImageInput, Sequence[ImageInput]], state: ChatState,
                   views: Optional[Sequence[str]] = None) -> None:
        """Encode ``image`` once and open the user's turn with it (one image, or the views of one study,
        per conversation; a study needs ``model.max_images`` >= its views)."""
        if state.image_features is not None:
            raise ValueError("this conversation already has an image; start a new one for another image")
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        limit = getattr(self.model.config, "max_images", 1)
        if len(images) > limit:
            raise ValueError(f"{len(images)} images but this model takes at most {limit} (model.max_images)")
        pixels = torch.stack([self._pixels(i) for i in images])
        with torch.inference_mode():
            state.image_features = self.model.encode_qformer(pixels.to(self.model.device))
        if len(images) == 1:
            self._add_user_text(state, IMAGE_TAG)
        else:
            from xraygpt.models.prompting import image_segments

            self._add_user_text(state, image_segments(len(images), views, self.model.config.view_template))

    def ask(self, text: str, state: ChatState) -> None:
        """Add the user's question (joined to a pending image turn, as the model was trained)."""
        text = text.strip()
        if not text:
            raise ValueError("the question is empty")
        self.template.check_message(text)
        self._add_user_text(state, text)

    def answer(self, state: ChatState, settings: GenerationSettings = CHAT_DEFAULTS) -> str:
        """Generate the assistant's reply to the last question and record it."""
        reply = ""
        for reply in self.stream_answer(state, settings):
            pass
        return reply

    def stream_answer(self, state: ChatState, settings: GenerationSettings = CHAT_DEFAULTS) -> Iterator[str]:
        """Yield the reply so far as it grows, cut at the template's stop string.

        Beam search cannot stream, so with ``num_beams > 1`` the reply comes in
        one piece.  The reply is recorded in the conversation when the iterator
        finishes or is closed early; on an error the pending turn is removed.
        """
        conversation = state.conversation
        messages = conversation.messages
        if state.image_features is None:
            raise ValueError("upload an image before asking")
        if not messages or messages[-1][0] != conversation.user_role:
            raise ValueError("ask a question before asking for an answer")
        conversation.append(conversation.assistant_role, None)
        reply = ""
        try:
            prompt = self._fit_context(state, settings.max_new_tokens)
            with contextlib.closing(self._replies(prompt, state.image_features, settings)) as replies:
                for reply in replies:
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

    def context_length(self, prompt: str, image_features: torch.Tensor) -> int:
        """Tokens the LLM reads for ``prompt`` with the image spliced in."""
        with torch.inference_mode():
            embeds, _ = self.model.prepare_generation_inputs(
                None, [prompt], image_features=image_features, apply_template=False
            )
        return int(embeds.shape[1])

    def _fit_context(self, state: ChatState, max_new_tokens: int) -> str:
        """The prompt, after dropping old exchanges until it leaves room for ``max_new_tokens``."""
        budget = self.max_context_tokens - max_new_tokens
        messages = state.conversation.messages
        dropped = 0
        length = self.context_length(state.conversation.prompt(), state.image_features)
        # Layout: [user0 (image), assistant0, ..., user_n, pending]: keep the first exchange and the question.
        while length > budget and len(messages) > 4:
            del messages[2:4]
            dropped += 1
            length = self.context_length(state.conversation.prompt(), state.image_features)
        if dropped:
            note = f"The conversation got too long for the model: its {dropped} oldest exchange(s) after the first were dropped."
            logger.warning(note)
            state.warnings.append(note)
        if length > budget:
            raise ContextTooLongError(
                f"the prompt needs {length} tokens but only {budget} fit "
                f"({self.max_context_tokens}-token window minus {max_new_tokens} new tokens); "
                "ask a shorter question, lower max new tokens, or reset the chat"
            )
        return state.conversation.prompt()

    def _replies(self, prompt: str, image_features: torch.Tensor, settings: GenerationSettings) -> Iterator[str]:
        """The growing reply: streamed for greedy/sampling, in one piece for beam search."""
        kwargs = dict(
            image_features=image_features,
            apply_template=False,
            # An EOS stop string is the EOS token, which ends generation by itself.
            stop_strings=[s for s in self.template.stop_strings if s != self.model.tokenizer.eos_token],
            **settings.generate_kwargs(),
        )
        if settings.num_beams > 1:
            with torch.inference_mode():
                text = self.model.generate(None, [prompt], **kwargs)[0]
            yield self.template.cut_at_stop(text)[0]
            return
        cancel = threading.Event()  # set when the reader stops early: the decoder ends at its next check
        pieces = self.model.stream_generate(None, prompt, cancel=cancel, **kwargs)
        text, reply = "", None
        try:
            for piece in pieces:
                text += piece
                current, stopped = self.template.cut_at_stop(text)
                if current != reply:
                    reply = current
                    yield reply
                if stopped:
                    break
        finally:
            cancel.set()
            pieces.close()
        if reply is None:
            yield ""
