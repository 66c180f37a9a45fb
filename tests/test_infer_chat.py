"""Chat with the seed-reference model (tiny, random weights: replies are gibberish but deterministic)."""
import dataclasses

import pytest
import torch

import xraygpt  # noqa: F401
from xraygpt.common.config import Config
from xraygpt.common.registry import registry
from xraygpt.conversation.chat import Chat, ContextTooLongError
from xraygpt.common.decoding_settings import GenerationSettings
from xraygpt.conversation.templates import IMAGE_PLACEHOLDER

GREEDY = GenerationSettings(max_new_tokens=24, temperature=0)


@pytest.fixture(scope="module")
def model(repo_root, seed_reference_dir):
    cfg = Config({"cfg_path": str(repo_root / "eval_configs" / "seed_reference_tiny.yaml")})
    return registry.get_model_class("mini_gpt4").from_config(cfg.config.model).eval()


@pytest.fixture(scope="module")
def images(seed_reference_dir):
    return torch.load(seed_reference_dir / "inputs.pt", weights_only=True)["images"]


@pytest.fixture
def chat(model):
    return Chat(model, vis_processor=None)


def _started(chat, image, question="What do you see?"):
    state = chat.new_state()
    chat.upload_img(image, state)
    chat.ask(question, state)
    return state


def _raw_continuation(model, state, max_new_tokens):
    """What the model writes after the pending turn with no stop string at all."""
    template = state.conversation.template
    prompt = template.render([tuple(m) for m in state.conversation.messages] + [(template.roles[1], None)])
    return model.generate(
        None, [prompt], image_features=state.image_features, apply_template=False, stop_strings=[],
        max_new_tokens=max_new_tokens, do_sample=False,
    )[0]


def test_prompt_follows_the_original_chat_format(chat, images):
    state = _started(chat, images[0])
    assert state.conversation.prompt() == (
        chat.template.system + "###Patient: <Img><ImageHere></Img> What do you see?###"
    )
    assert state.image_features.shape == (1, 8, 64)


def test_reply_stops_at_the_templates_stop_string(model, images):
    """Cut exactly where the stop text begins (a word this model emits stands in for '###')."""
    reference_state = _started(Chat(model, None), images[0])
    raw = _raw_continuation(model, reference_state, GREEDY.max_new_tokens)
    stop_word = raw.split()[1]  # a word in the middle of the greedy continuation
    template = dataclasses.replace(registry.get_conversation_template("default"), stop_strings=(stop_word,))
    chat = Chat(model, None, template=template)
    state = _started(chat, images[0])
    replies = list(chat.stream_answer(state, GREEDY))
    assert replies[-1] == raw[: raw.index(stop_word)].strip()
    assert stop_word not in replies[-1] and len(replies[-1]) > 0


def test_without_a_stop_the_reply_is_the_whole_greedy_continuation(chat, model, images):
    state = _started(chat, images[0])
    raw = _raw_continuation(model, state, GREEDY.max_new_tokens)
    assert "###" not in raw  # this model never writes the separator here, so nothing is cut
    assert chat.answer(state, GREEDY) == raw.strip()


def test_streamed_updates_grow_to_the_unstreamed_reply(chat, images):
    streamed = list(chat.stream_answer(_started(chat, images[2]), GREEDY))
    whole = chat.answer(_started(chat, images[2]), GREEDY)
    assert len(streamed) > 1 and streamed[-1] == whole
    assert all(streamed[i + 1].startswith(streamed[i].rstrip("\ufffd")) for i in range(len(streamed) - 1))


def test_beam_search_gives_one_clean_reply(chat, images):
    replies = list(chat.stream_answer(_started(chat, images[1]), dataclasses.replace(GREEDY, num_beams=2)))
    assert len(replies) == 1 and replies[0] and "###" not in replies[0]


def test_multi_turn_encodes_the_image_once(chat, model, images, monkeypatch):
    calls = []
    original = model.encode_qformer
    monkeypatch.setattr(model, "encode_qformer", lambda pixels: calls.append(1) or original(pixels))
    state = _started(chat, images[1])
    first = chat.answer(state, GREEDY)
    chat.ask("Any effusion?", state)
    second = chat.answer(state, GREEDY)
    assert len(calls) == 1
    assert [m[0] for m in state.conversation.messages] == ["Patient", "Doctor", "Patient", "Doctor"]
    assert [m[1] for m in state.conversation.messages[1::2]] == [first, second]
    assert state.conversation.prompt().count(IMAGE_PLACEHOLDER) == 1
    with pytest.raises(ValueError, match="already has an image"):
        chat.upload_img(images[0], state)


def test_closing_the_stream_early_keeps_the_partial_reply(chat, images):
    state = _started(chat, images[0])
    stream = chat.stream_answer(state, GREEDY)
    first = next(stream)
    stream.close()
    assert state.conversation.messages[-1] == ["Doctor", first]


def test_long_conversations_drop_old_exchanges_with_a_warning(model, images):
    settings = GenerationSettings(max_new_tokens=8, temperature=0)
    chat = Chat(model, None)
    probe = _started(chat, images[0], "First question?")
    chat.max_context_tokens = chat.context_length(probe.conversation.prompt(), probe.image_features) + 40
    state = _started(chat, images[0], "First question?")
    chat.answer(state, settings)
    for question in ("Second question?", "Third question?", "Fourth question?", "Fifth question?"):
        chat.ask(question, state)
        chat.answer(state, settings)
    assert state.warnings and "dropped" in state.warnings[0]
    messages = state.conversation.messages
    assert messages[0][1].endswith("First question?") and messages[-2][1] == "Fifth question?"
    assert len(messages) < 10
    fitted = chat.context_length(state.conversation.prompt(), state.image_features)
    assert fitted <= chat.max_context_tokens


def test_a_question_that_cannot_fit_is_refused_and_the_turn_removed(model, images):
    chat = Chat(model, None, max_context_tokens=80)
    state = _started(chat, images[0], "Describe the heart, lungs, pleura, mediastinum and bones in great detail.")
    with pytest.raises(ContextTooLongError, match=r"tokens but only 56 fit \(80-token window minus 24"):
        chat.answer(state, GREEDY)
    assert [m[0] for m in state.conversation.messages] == ["Patient"]


def test_questions_need_text_and_an_image(chat, images):
    state = chat.new_state()
    with pytest.raises(ValueError, match="empty"):
        chat.ask("   ", state)
    chat.ask("Hello?", state)
    with pytest.raises(ValueError, match="upload an image"):
        chat.answer(state, GREEDY)
    with pytest.raises(ValueError, match="turn boundary"):
        chat.ask("a ### b", _started(chat, images[0]))


def test_vicuna_template_chats_too(model, images):
    chat = Chat(model, None, template="vicuna_v1_1")
    state = _started(chat, images[0])
    reply = chat.answer(state, GREEDY)
    assert state.conversation.prompt().endswith(f"USER: <Img><ImageHere></Img> What do you see? ASSISTANT: {reply}</s>")
