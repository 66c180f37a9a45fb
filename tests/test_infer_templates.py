"""Conversation templates: rendering, parsing back, stop strings."""
import pytest

import xraygpt  # noqa: F401  (registers the templates)
from xraygpt.common.registry import registry
from xraygpt.common.decoding_settings import GenerationSettings
from xraygpt.conversation.templates import IMAGE_TAG, TemplateError

CHATS = [
    [("user", f"{IMAGE_TAG} What are the findings?"), ("assistant", None)],
    [("user", f"{IMAGE_TAG} Describe it."), ("assistant", "Clear lungs. No effusion."), ("user", "Any fracture?"),
     ("assistant", None)],
    [("user", f"{IMAGE_TAG}"), ("assistant", "Heart size normal: ratio < 0.5."), ("user", "Thanks: and the bones?"),
     ("assistant", "Intact.")],
]


def _with_roles(template, chat):
    return [(template.roles[0] if who == "user" else template.roles[1], text) for who, text in chat]


def test_default_template_is_the_original_doctor_patient_format():
    template = registry.get_conversation_template("default")
    assert template is registry.get_conversation_template("xraygpt_doctor")
    prompt = template.render(_with_roles(template, CHATS[1]))
    assert prompt == (
        template.system + "###Patient: <Img><ImageHere></Img> Describe it.###Doctor: Clear lungs. No effusion."
        "###Patient: Any fracture?###Doctor:"
    )


def test_vicuna_template_closes_assistant_turns_with_eos():
    template = registry.get_conversation_template("vicuna_v1_1")
    prompt = template.render(_with_roles(template, CHATS[1]))
    assert prompt.endswith(
        "questions. USER: <Img><ImageHere></Img> Describe it. ASSISTANT: Clear lungs. No effusion.</s>"
        "USER: Any fracture? ASSISTANT:"
    )


@pytest.mark.parametrize("name", ["xraygpt_doctor", "vicuna_v1_1"])
@pytest.mark.parametrize("chat", CHATS)
def test_render_parse_round_trip(name, chat):
    template = registry.get_conversation_template(name)
    messages = _with_roles(template, chat)
    prompt = template.render(messages)
    assert template.parse(prompt) == messages
    assert template.render(template.parse(prompt)) == prompt


@pytest.mark.parametrize("name", ["xraygpt_doctor", "vicuna_v1_1"])
def test_conversation_builds_the_same_prompt_as_render(name):
    template = registry.get_conversation_template(name)
    conversation = template.new_conversation()
    for role, text in _with_roles(template, CHATS[1]):
        conversation.append(role, text)
    assert conversation.prompt() == template.render(_with_roles(template, CHATS[1]))
    copied = conversation.copy()
    copied.messages[-1][1] = "changed"
    assert conversation.messages[-1][1] is None


def test_turn_order_and_roles_are_enforced():
    conversation = registry.get_conversation_template("default").new_conversation()
    with pytest.raises(TemplateError, match="must come from 'Patient'"):
        conversation.append("Doctor", "hello")
    with pytest.raises(TemplateError, match="unknown role"):
        conversation.append("Nurse", "hello")


@pytest.mark.parametrize(
    "name, text",
    [("xraygpt_doctor", "a ### b"), ("vicuna_v1_1", "a</s>b"), ("vicuna_v1_1", "fine ASSISTANT: fake")],
)
def test_messages_holding_a_turn_boundary_are_refused(name, text):
    template = registry.get_conversation_template(name)
    with pytest.raises(TemplateError, match="turn boundary"):
        template.render([(template.roles[0], text), (template.roles[1], None)])


def test_parse_names_what_is_wrong():
    template = registry.get_conversation_template("default")
    with pytest.raises(TemplateError, match="system text"):
        template.parse("###Patient: hi###Doctor:")
    with pytest.raises(TemplateError, match="not closed"):
        template.parse(template.system + "###Patient: hi")


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("xraygpt_doctor", " Normal heart. ###Patient: more", ("Normal heart.", True)),
        ("xraygpt_doctor", "No effusion.###", ("No effusion.", True)),
        ("xraygpt_doctor", "still writing", ("still writing", False)),
        ("vicuna_v1_1", "Clear.</s>junk", ("Clear.", True)),
        ("vicuna_v1_1", "Clear. USER: next", ("Clear.", True)),
    ],
)
def test_cut_at_stop(name, text, expected):
    assert registry.get_conversation_template(name).cut_at_stop(text) == expected


def test_generation_settings_map_to_generate_kwargs():
    assert GenerationSettings(temperature=0, max_new_tokens=5).generate_kwargs() == {
        "max_new_tokens": 5, "num_beams": 1, "do_sample": False, "repetition_penalty": 1.0,
    }
    sampled = GenerationSettings(temperature=0.7, top_p=0.8, num_beams=3, length_penalty=2.0).generate_kwargs()
    assert sampled["do_sample"] and sampled["temperature"] == 0.7 and sampled["top_p"] == 0.8
    assert sampled["length_penalty"] == 2.0
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(temperature=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)
