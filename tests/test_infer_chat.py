"""Chat against the seed-reference LLM and reference image embeddings.

The vision side is replaced by the fixture's own ``inputs_llama`` (what the
reference model's ``encode_img`` returned for each fixture image), so these
tests pin the chat's context building and decoding to the reference exactly.
"""
import types

import pytest
import torch

import xraygpt  # noqa: F401
from xraygpt.conversation.chat import Chat, ContextTooLongError, context_embeddings
from xraygpt.conversation.generation import GenerationSettings
from xraygpt.conversation.templates import IMAGE_PLACEHOLDER, ConversationTemplate

GREEDY = GenerationSettings(max_new_tokens=16, temperature=0)
# The prompt the fixture's greedy record was decoded from (README, "Greedy decoding").
REFERENCE_PROMPT = "###Patient: <Img><ImageHere></Img> Describe the given chest x-ray image in detail. ###Doctor: "


@pytest.fixture(scope="module")
def reference(seed_reference_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(seed_reference_dir / "vicuna")
    llm = AutoModelForCausalLM.from_pretrained(seed_reference_dir / "vicuna", dtype=torch.float32).eval()
    expected = torch.load(seed_reference_dir / "expected.pt", weights_only=True)
    images = torch.load(seed_reference_dir / "inputs.pt", weights_only=True)["images"]
    calls = []

    def encode_img(pixels):
        """The reference encoder's output for whichever fixture image this is."""
        calls.append(pixels.shape[0])
        index = next(i for i in range(len(images)) if torch.equal(images[i], pixels[0]))
        return expected["inputs_llama"][index : index + 1], None

    model = types.SimpleNamespace(tokenizer=tokenizer, llama_model=llm, encode_img=encode_img)
    return types.SimpleNamespace(model=model, expected=expected, images=images, encode_calls=calls)


@pytest.fixture
def chat(reference):
    return Chat(reference.model, vis_processor=None)


def _reference_context(reference):
    model = reference.model
    return context_embeddings(
        REFERENCE_PROMPT, [reference.expected["inputs_llama"][0]], model.tokenizer,
        model.llama_model.get_input_embeddings(),
    )


def test_context_embeddings_reproduce_the_reference_greedy_tokens(reference):
    embeds = _reference_context(reference)
    assert embeds.shape == (1, 7 + 8 + 19, 64)  # BOS+segment 0, 8 image vectors, segment 1 (README)
    ids = reference.model.llama_model.generate(inputs_embeds=embeds, max_new_tokens=16, do_sample=False)
    assert ids[0].tolist() == reference.expected["greedy_tokens"].tolist()


def test_reply_stops_at_the_separator(reference, chat):
    # The reference greedy continuation emits '▁###' as its 6th token: the reply is the 5 tokens before it.
    tokens = reference.expected["greedy_tokens"].tolist()
    assert reference.model.tokenizer.convert_ids_to_tokens(tokens[5]) == "▁###"
    expected_reply = reference.model.tokenizer.decode(tokens[:5]).strip()
    replies = list(chat.stream_from_embeddings(_reference_context(reference), GREEDY))
    assert replies[-1] == expected_reply
    assert all(expected_reply.startswith(r) for r in replies)  # each update extends the last


def test_without_stop_strings_decoding_runs_to_max_new_tokens(reference):
    no_stop = ConversationTemplate(name="no_stop", system="", roles=("Patient", "Doctor"), sep="###")
    chat = Chat(reference.model, vis_processor=None, template=no_stop)
    reply = list(chat.stream_from_embeddings(_reference_context(reference), GREEDY))[-1]
    full = reference.model.tokenizer.decode(reference.expected["greedy_tokens"], skip_special_tokens=True)
    assert reply == full.strip()


def test_beam_search_returns_one_stopped_reply(reference, chat):
    beams = GenerationSettings(max_new_tokens=16, temperature=0, num_beams=2)
    replies = list(chat.stream_from_embeddings(_reference_context(reference), beams))
    assert len(replies) == 1 and replies[0] and "###" not in replies[0]


def test_placeholder_count_must_match_images(reference):
    with pytest.raises(ValueError, match="1 <ImageHere> placeholders but 2 images"):
        context_embeddings(REFERENCE_PROMPT, [torch.zeros(8, 64)] * 2, reference.model.tokenizer, torch.nn.Embedding(1000, 64))


def test_multi_turn_embeds_the_image_once_and_records_the_turns(reference, chat):
    state = chat.new_state()
    before = len(reference.encode_calls)
    chat.upload_img(reference.images[1], state)
    chat.ask("What do you see?", state)
    streamed = list(chat.stream_answer(state, GREEDY))
    chat.ask("Any effusion?", state)
    second = chat.answer(state, GREEDY)
    assert len(reference.encode_calls) == before + 1
    assert [m[0] for m in state.conversation.messages] == ["Patient", "Doctor", "Patient", "Doctor"]
    assert state.conversation.messages[0][1] == "<Img><ImageHere></Img> What do you see?"
    assert state.conversation.messages[1][1] == streamed[-1] and state.conversation.messages[3][1] == second
    assert state.conversation.prompt().count(IMAGE_PLACEHOLDER) == 1
    assert "###" not in streamed[-1] + second


def test_streamed_reply_equals_the_whole_reply(reference, chat):
    """Greedy decoding gives the same reply streamed or not, for the same conversation."""
    replies = []
    for stream in (True, False):
        state = chat.new_state()
        chat.upload_img(reference.images[2], state)
        chat.ask("Describe the image.", state)
        replies.append(list(chat.stream_answer(state, GREEDY))[-1] if stream else chat.answer(state, GREEDY))
    assert replies[0] == replies[1]


def test_closing_the_stream_early_keeps_the_partial_reply(reference, chat):
    state = chat.new_state()
    chat.upload_img(reference.images[0], state)
    chat.ask("Describe the image.", state)
    stream = chat.stream_answer(state, GenerationSettings(max_new_tokens=40, temperature=0))
    first = next(stream)
    stream.close()
    assert state.conversation.messages[-1] == ["Doctor", first]


def test_long_conversations_drop_old_exchanges_with_a_warning(reference):
    chat = Chat(reference.model, vis_processor=None, max_context_tokens=130)
    state = chat.new_state()
    chat.upload_img(reference.images[0], state)
    settings = GenerationSettings(max_new_tokens=8, temperature=0)
    for question in ("First question?", "Second question?", "Third question?", "Fourth question?"):
        chat.ask(question, state)
        chat.answer(state, settings)
    assert state.warnings and "dropped" in state.warnings[0]
    messages = state.conversation.messages
    assert messages[0][1].endswith("First question?") and messages[-2][1] == "Fourth question?"
    assert len(messages) < 8 and len(state.image_embeds) == 1


def test_a_question_that_cannot_fit_is_refused_and_the_turn_removed(reference):
    chat = Chat(reference.model, vis_processor=None, max_context_tokens=60)
    state = chat.new_state()
    chat.upload_img(reference.images[0], state)
    chat.ask("Describe the image in great detail, covering the heart, lungs, pleura and bones.", state)
    with pytest.raises(ContextTooLongError, match="tokens but only 44 fit"):
        chat.answer(state, GREEDY)
    assert [m[0] for m in state.conversation.messages] == ["Patient"]


def test_empty_questions_and_answers_without_questions_are_refused(chat):
    state = chat.new_state()
    with pytest.raises(ValueError, match="empty"):
        chat.ask("   ", state)
    with pytest.raises(ValueError, match="ask a question"):
        chat.answer(state, GREEDY)
