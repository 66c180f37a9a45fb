"""The API with a model that reads studies (model.max_images: 2): several image parts in one request."""
from __future__ import annotations

import openai
import pytest
import torch

from tests.serve_support import API_KEY, data_url, load_tiny, reference_answer, start_server
from xraygpt.conversation.templates import IMAGE_TAG
from xraygpt.datasets.image_io import load_medical_image
from xraygpt.serve.settings import ServeSettings


@pytest.fixture(scope="module")
def server(repo_root):
    model, processor = load_tiny(repo_root)
    model.config.max_images = 2
    running = start_server(model, processor, ServeSettings(api_key=API_KEY, max_batch_size=4, max_wait_ms=200))
    yield running
    running.stop()


def test_two_image_parts_are_one_study(server, seed_reference_dir):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    images = [seed_reference_dir / "images" / n for n in ("xray_0.png", "xray_1.png")]
    question = "Describe the study."
    content = [{"type": "text", "text": question}] + [{"type": "image_url", "image_url": {"url": data_url(p)}}
                                                      for p in images]
    reply = client.chat.completions.create(model="xraygpt", messages=[{"role": "user", "content": content}],
                                           max_tokens=12, temperature=0)
    from xraygpt.common.registry import registry

    template = registry.get_conversation_template("default")
    prompt = template.render([(template.roles[0], f"{IMAGE_TAG} {IMAGE_TAG} {question}"), (template.roles[1], None)])
    pixels = torch.stack([server.processor(load_medical_image(p)) for p in images])
    with torch.inference_mode():
        expected = server.model.generate(pixels, [prompt], apply_template=False, max_new_tokens=12)[0]
    assert reply.choices[0].message.content == expected and reply.usage.image_tokens == 16
    # one image still answers exactly as before
    single = client.chat.completions.create(model="xraygpt", max_tokens=12, temperature=0, messages=[
        {"role": "user", "content": [{"type": "text", "text": question},
                                     {"type": "image_url", "image_url": {"url": data_url(images[0])}}]}])
    assert single.choices[0].message.content == reference_answer(server.model, server.processor, images[0], question, 12)
    with pytest.raises(openai.BadRequestError, match="reads 2 image per conversation"):
        client.chat.completions.create(model="xraygpt", max_tokens=4, messages=[
            {"role": "user", "content": content + content[1:2]}])
