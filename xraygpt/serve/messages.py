"""OpenAI chat messages -> the model's conversation prompt and the images it holds.

The turns go onto a registered :class:`ConversationTemplate` exactly as the chat
(:mod:`xraygpt.conversation.chat`) writes them, so an API answer equals the demo's: the
turn with the image says ``<Img><ImageHere></Img> <text>``. A system message replaces the
template's system text.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Sequence

from xraygpt.conversation.templates import IMAGE_PLACEHOLDER, IMAGE_TAG, ConversationTemplate, TemplateError
from xraygpt.serve.errors import bad_request
from xraygpt.serve.protocol import ChatMessage, ImagePart, TextPart


@dataclass
class PromptPlan:
    prompt: str
    """The context string the model continues; one ``<ImageHere>`` per image."""
    image_urls: List[str]


def _text_and_images(message: ChatMessage) -> tuple[str, List[str]]:
    if message.content is None:
        return "", []
    if isinstance(message.content, str):
        return message.content.strip(), []
    texts = [p.text.strip() for p in message.content if isinstance(p, TextPart)]
    images = [p.image_url.url for p in message.content if isinstance(p, ImagePart)]
    return " ".join(t for t in texts if t), images


def build_prompt(messages: Sequence[ChatMessage], template: ConversationTemplate, max_images: int = 1) -> PromptPlan:
    """The prompt for ``messages``; a 400 error says what is wrong with them otherwise."""
    turns: List[List[str]] = []  # [role, text]
    image_urls: List[str] = []
    user, assistant = template.roles
    for index, message in enumerate(messages):
        text, images = _text_and_images(message)
        if IMAGE_PLACEHOLDER in text:
            raise bad_request(f"message text may not contain {IMAGE_PLACEHOLDER}; send images as image_url parts",
                              param=f"messages.{index}")
        if message.role in ("system", "developer"):
            if turns or index:
                raise bad_request("a system message may only come first", param=f"messages.{index}")
            template = dataclasses.replace(template, system=text)
            continue
        if images and message.role != "user":
            raise bad_request("images may only be sent in user messages", param=f"messages.{index}")
        image_urls.extend(images)
        if len(image_urls) > max_images:
            raise bad_request(
                f"this model reads {max_images} image per conversation, as it was trained; this request has "
                f"{len(image_urls)} (start a new conversation for another image)", param=f"messages.{index}",
                code="too_many_images")
        if images:
            text = f"{IMAGE_TAG} {text}".strip() if len(images) == 1 else " ".join([IMAGE_TAG] * len(images) + [text]).strip()
        role = user if message.role == "user" else assistant
        if turns and turns[-1][0] == role:
            turns[-1][1] = f"{turns[-1][1]} {text}".strip()
        elif not turns and role == assistant:
            raise bad_request("the conversation must start with a user message", param=f"messages.{index}")
        else:
            turns.append([role, text])
    if not turns or turns[-1][0] != user:
        raise bad_request("the last message must come from the user", param="messages")
    if not image_urls:
        raise bad_request("no image: add an image_url content part to a user message "
                          "(data:image/png;base64,...); this model answers about one image", param="messages",
                          code="image_required")
    try:
        prompt = template.render([(role, text) for role, text in turns] + [(assistant, None)])
    except TemplateError as exc:
        raise bad_request(f"a message cannot be written into the conversation: {exc}", param="messages") from None
    return PromptPlan(prompt, image_urls)
