"""Conversation templates: how a chat is written out as one prompt string.

A template is data (system text, two role names, separators), registered by
name so a config or the demo can pick one.  ``Conversation`` is the mutable
chat built on a template.  The image is represented in the text by
``IMAGE_PLACEHOLDER``; the chat code swaps it for image embeddings.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from xraygpt.common.constants import IMAGE_PLACEHOLDER, IMAGE_TAG
from xraygpt.common.errors import ConfigurationError
from xraygpt.common.registry import registry

Message = Tuple[str, Optional[str]]


class TemplateError(ConfigurationError):
    """A prompt that does not follow its template, or a message that would break it."""


@dataclass(frozen=True)
class ConversationTemplate:
    """``system + sep``, then ``role: text`` turns, each closed by its separator.

    Turn *i* is closed by ``sep`` when *i* is even (user turns) and by ``sep2``
    (or ``sep`` when unset) when odd (assistant turns).  The turn being
    generated is written as ``role:`` with nothing after it.
    """

    name: str
    system: str
    roles: Tuple[str, str]
    sep: str
    sep2: Optional[str] = None
    stop_strings: Tuple[str, ...] = field(default=())
    """Text that ends an answer: where generation stops and the reply is cut."""

    def separator(self, turn_index: int) -> str:
        return self.sep if turn_index % 2 == 0 or self.sep2 is None else self.sep2

    def render(self, messages: List[Message]) -> str:
        """The prompt string for ``messages`` (``None`` text = turn still to write)."""
        parts = [self.system + self.sep]
        for index, (role, text) in enumerate(messages):
            if text is None:
                parts.append(f"{role}:")
            else:
                self.check_message(text)
                parts.append(f"{role}: {text}{self.separator(index)}")
        return "".join(parts)

    def parse(self, prompt: str) -> List[Message]:
        """Inverse of :meth:`render`: the turns written in ``prompt``."""
        head = self.system + self.sep
        if not prompt.startswith(head):
            raise TemplateError(f"prompt does not start with the {self.name!r} system text and separator {self.sep!r}")
        rest = prompt[len(head):]
        messages: List[Message] = []
        while rest:
            index = len(messages)
            role, next_role = self.roles[index % 2], self.roles[(index + 1) % 2]
            if rest == f"{role}:":
                messages.append((role, None))
                break
            opener = f"{role}: "
            if not rest.startswith(opener):
                raise TemplateError(f"expected turn {index} to start with {opener!r}, found {rest[:40]!r}")
            body, closer = rest[len(opener):], self.separator(index)
            end = body.find(f"{closer}{next_role}:")
            if end >= 0:
                messages.append((role, body[:end]))
                rest = body[end + len(closer):]
            elif body.endswith(closer):
                messages.append((role, body[: len(body) - len(closer)]))
                rest = ""
            else:
                raise TemplateError(f"turn {index} ({role}) is not closed by {closer!r}")
        return messages

    def check_message(self, text: str) -> None:
        """Refuse text that :meth:`parse` would read back as more than one turn."""
        seps = {self.sep, self.sep2 or self.sep}
        forbidden = {s for s in seps if s.strip()} | {f"{s}{role}:" for s in seps for role in self.roles}
        for bad in sorted(forbidden):
            if bad in text:
                raise TemplateError(f"message contains {bad!r}, a turn boundary of template {self.name!r}: {text[:60]!r}")

    def cut_at_stop(self, text: str) -> Tuple[str, bool]:
        """``text`` up to the first stop string (stripped), and whether one was found."""
        cut = min((i for i in (text.find(s) for s in self.stop_strings) if i >= 0), default=-1)
        if cut < 0:
            return text.strip(), False
        return text[:cut].strip(), True

    def new_conversation(self) -> "Conversation":
        return Conversation(self)


@dataclass
class Conversation:
    """The turns of one chat; ``prompt()`` writes them out with the template."""

    template: ConversationTemplate
    messages: List[List[Optional[str]]] = field(default_factory=list)

    @property
    def user_role(self) -> str:
        return self.template.roles[0]

    @property
    def assistant_role(self) -> str:
        return self.template.roles[1]

    def append(self, role: str, text: Optional[str]) -> None:
        if role not in self.template.roles:
            raise TemplateError(f"unknown role {role!r}; template {self.template.name!r} has {self.template.roles}")
        expected = self.template.roles[len(self.messages) % 2]
        if role != expected:
            raise TemplateError(f"turn {len(self.messages)} must come from {expected!r}, not {role!r}")
        self.messages.append([role, text])

    def prompt(self) -> str:
        return self.template.render([(role, text) for role, text in self.messages])

    def copy(self) -> "Conversation":
        return Conversation(self.template, copy.deepcopy(self.messages))


def _register(template: ConversationTemplate, aliases: tuple = ()) -> ConversationTemplate:
    registry.register_conversation_template(template.name, aliases=aliases)(template)
    return template


# The template the released XrayGPT checkpoints were demoed with (kept verbatim:
# the model's behaviour depends on these exact strings).
XRAYGPT_DOCTOR = _register(
    ConversationTemplate(
        name="xraygpt_doctor",
        system=(
            "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it "
            "to you. Please answer my questions."
        ),
        roles=("Patient", "Doctor"),
        sep="###",
        stop_strings=("###",),
    ),
    aliases=("default",),
)

# Vicuna v1.1 chat format, for LLMs fine-tuned on it.
VICUNA_V1_1 = _register(
    ConversationTemplate(
        name="vicuna_v1_1",
        system=(
            "A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions."
        ),
        roles=("USER", "ASSISTANT"),
        sep=" ",
        sep2="</s>",
        stop_strings=("</s>", "USER:", "ASSISTANT:"),
    ),
)
