"""Several images per sample (views of one study): prompt layout, mixed batches, one-image equivalence, max_images."""
from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from xraygpt.common.config import Config, ConfigError
from xraygpt.common.errors import DataError
from xraygpt.common.registry import registry
from xraygpt.models.prompting import build_generation_batch, wrap_prompt, wrap_study_prompt

TEMPLATE = "###Patient: {} ###Doctor: "


@pytest.fixture(scope="module")
def ref(seed_reference_dir):
    return {
        "images": torch.load(seed_reference_dir / "inputs.pt", weights_only=True)["images"],
        "samples": json.loads((seed_reference_dir / "samples.json").read_text()),
        "expected": torch.load(seed_reference_dir / "expected.pt", weights_only=True),
    }


def _build(repo_root, **overrides):
    cfg = Config({"cfg_path": str(repo_root / "eval_configs" / "seed_reference_tiny.yaml")}).model_cfg
    cfg = OmegaConf.merge(cfg, overrides)
    torch.manual_seed(0)
    return registry.get_model_class("mini_gpt4").from_config(cfg).eval()


@pytest.fixture(scope="module")
def model(repo_root, seed_reference_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield _build(repo_root, max_images=3)
    torch.set_num_threads(threads)


def test_study_prompt_layout():
    assert wrap_study_prompt(" Describe.", TEMPLATE, 1) == wrap_prompt(" Describe.", TEMPLATE)
    assert wrap_study_prompt(" Describe.", TEMPLATE, 2, ["Frontal", "Lateral"]) == (
        "###Patient: Frontal: <Img><ImageHere></Img> Lateral: <Img><ImageHere></Img> Describe. ###Doctor: ")
    assert wrap_study_prompt(" Describe.", TEMPLATE, 2, ["PA", "LATERAL"], view_template="") == (
        "###Patient: <Img><ImageHere></Img> <Img><ImageHere></Img> Describe. ###Doctor: ")
    assert wrap_study_prompt(" Describe.", TEMPLATE, 2, None, view_template="[{view}] ") == (
        "###Patient: <Img><ImageHere></Img> <Img><ImageHere></Img> Describe. ###Doctor: ")
    with pytest.raises(ValueError, match="1 view names for 2 images"):
        wrap_study_prompt(" Describe.", TEMPLATE, 2, ["PA"])
    assert wrap_study_prompt("<Img><ImageHere></Img> Describe.", TEMPLATE, 2, ["Frontal", "Lateral"]) == (
        wrap_study_prompt(" Describe.", TEMPLATE, 2, ["Frontal", "Lateral"]))  # the one tag stands for all images
    with pytest.raises(ValueError, match="the prompt holds 2 <ImageHere> for 3 images"):
        wrap_study_prompt("<ImageHere> and <ImageHere> Describe.", TEMPLATE, 3)


def test_each_image_gets_its_own_slots_between_its_text_pieces(model):
    prompt = wrap_study_prompt(" Describe.", TEMPLATE, 2, ["Frontal", "Lateral"])
    batch = build_generation_batch(model.tokenizer, [prompt], 8, [2])
    mask = batch.image_mask[0].tolist()
    runs = [i for i in range(1, len(mask)) if mask[i] != mask[i - 1]]
    assert sum(mask) == 16 and len(runs) == 4  # two separate runs of 8 slots
    ids = model.tokenizer(["###Patient: Frontal: <Img>", "</Img> Lateral: <Img>", "</Img> Describe. ###Doctor: "],
                          add_special_tokens=False)["input_ids"]
    pad = model.tokenizer.pad_token_id
    assert batch.input_ids[0].tolist() == [model.tokenizer.bos_token_id, *ids[0], *[pad] * 8, *ids[1], *[pad] * 8, *ids[2]]


@torch.no_grad()
def test_one_image_studies_give_todays_tokens(model, ref):
    samples = ref["samples"]["samples"]
    batch = {"image": ref["images"][[s["image_index"] for s in samples]],
             "prompt": [s["prompt"] for s in samples], "caption": [s["caption"] for s in samples]}
    plain = model(batch)
    as_studies = model({**batch, "image_counts": torch.ones(len(samples), dtype=torch.long),
                        "views": [None] * len(samples)})
    assert as_studies["loss"].item() == plain["loss"].item()
    prompt = ref["samples"]["greedy"]["prompt"].split("<ImageHere></Img>")[1].split(" ###Doctor")[0]
    _, ids = model.generate(ref["images"][:1], [prompt], max_new_tokens=16, stop_strings=[], return_ids=True,
                            image_counts=[1])
    assert ids[0].tolist() == ref["expected"]["greedy_tokens"].tolist()


@torch.no_grad()
def test_batches_mixing_image_counts_equal_one_by_one(model, ref):
    images = ref["images"]
    studies = [  # (image indices, views, prompt, caption)
        ([0, 1], ["Frontal", "Lateral"], " Describe the study.", "There is a small left pleural effusion."),
        ([2], None, " Is the heart enlarged?", "No."),
        ([1, 2, 0], None, " Findings?", "Cardiomegaly. No pneumothorax. Lungs are clear."),
    ]

    def batch_of(chosen):
        return {"image": torch.cat([images[s[0]] for s in chosen]),
                "image_counts": torch.tensor([len(s[0]) for s in chosen]),
                "views": [s[1] for s in chosen], "prompt": [s[2] for s in chosen], "caption": [s[3] for s in chosen]}

    singles = [model(batch_of([s])) for s in studies]
    losses = torch.stack([o["loss"] for o in singles])
    tokens = torch.stack([o["num_target_tokens"] for o in singles]).float()
    batched = model(batch_of(studies))
    assert abs(batched["loss"].item() - (losses * tokens).sum().item() / tokens.sum().item()) <= 1e-5
    reordered = model(batch_of(studies[::-1]))
    assert abs(reordered["loss"].item() - batched["loss"].item()) <= 1e-5

    together = batch_of(studies)
    _, ids = model.generate(together["image"], together["prompt"], image_counts=together["image_counts"],
                            views=together["views"], max_new_tokens=8, stop_strings=[], return_ids=True)
    for i, study in enumerate(studies):
        one = batch_of([study])
        _, single = model.generate(one["image"], one["prompt"], image_counts=one["image_counts"], views=one["views"],
                                   max_new_tokens=8, stop_strings=[], return_ids=True)
        assert ids[i].tolist() == single[0].tolist(), i
    # the second image changes the answer context: a two-view study is not its frontal alone
    frontal, _ = model.prepare_generation_inputs(images[:1], [" Describe the study."])
    study, _ = model.prepare_generation_inputs(images[:2], [" Describe the study."], image_counts=[2])
    assert study.shape[1] > frontal.shape[1] + 8


def test_max_images_caps_with_a_clear_error(repo_root, ref):
    small = _build(repo_root)  # max_images defaults to 1
    with pytest.raises(DataError, match=r"^a sample has 2 images but model.max_images is 1; raise model.max_images"):
        small.prepare_generation_inputs(ref["images"][:2], [" Describe."], image_counts=[2])
    with pytest.raises(ConfigError, match="model.max_images must be at least 1"):
        _build(repo_root, max_images=0)
    with pytest.raises(ConfigError, match=r"model.view_template must contain '\{view\}'"):
        _build(repo_root, view_template="View: ")


def test_feature_cache_stores_each_view_once_and_gives_the_same_loss(model, seed_reference_dir, tmp_path, caplog):
    import contextlib
    import logging
    import shutil

    from xraygpt.common.dist_utils import DistInfo
    from xraygpt.datasets.annotations import parse_annotations
    from xraygpt.datasets.caption_dataset import ImageTextDataset, collate
    from xraygpt.processors.base import build_processor
    from xraygpt.runners.feature_cache import FeatureCache

    for name in ("xray_0.png", "xray_1.png", "xray_2.png"):
        shutil.copy(seed_reference_dir / "images" / name, tmp_path / name)
    entries = [  # xray_1 is the lateral of two studies and a single-image entry of its own
        {"image": ["xray_0.png", "xray_1.png"], "views": ["Frontal", "Lateral"], "prompt": "Describe.", "caption": "A."},
        {"image": ["xray_2.png", "xray_1.png"], "views": ["Frontal", "Lateral"], "prompt": "Describe.", "caption": "B."},
        {"image": "xray_1.png", "prompt": "Describe.", "caption": "C."},
    ]
    (tmp_path / "ann.json").write_text(json.dumps(entries))
    records, _ = parse_annotations(tmp_path / "ann.json")
    dataset = ImageTextDataset(records, build_processor({"name": "blip2_image_eval", "image_size": 224}))
    cache = FeatureCache(model, tmp_path / "cache", "f" * 64, DistInfo(), batch_size=3, autocast=contextlib.nullcontext)
    with caplog.at_level(logging.INFO, logger="xraygpt.train"):
        cached = cache.wrap(dataset, seed=0, name="train")
    assert "3 computed, 2 reused" in caplog.text
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 3
    batch = cached.collater([cached[i] for i in range(3)])
    assert batch["image_features"].shape == (5, 8, 64) and batch["image_counts"].tolist() == [2, 2, 1]
    assert batch["views"] == [["Frontal", "Lateral"], ["Frontal", "Lateral"], None]
    with torch.no_grad():
        direct = model(collate([dataset[i] for i in range(3)]))["loss"]
        from_cache = model(batch)["loss"]
    assert abs(direct.item() - from_cache.item()) <= 1e-6


@torch.no_grad()
def test_chat_about_a_two_view_study(model, ref):
    from xraygpt.conversation.chat import Chat
    from xraygpt.common.decoding_settings import GenerationSettings

    chat = Chat(model, lambda image: image)  # the fixture's tensors are already processed
    one, two = chat.new_state(), chat.new_state()
    chat.upload_img(ref["images"][0], one)
    chat.upload_img([ref["images"][0], ref["images"][1]], two, views=["Frontal", "Lateral"])
    assert two.image_features.shape == (2, 8, 64)
    assert two.conversation.messages[0][1] == "Frontal: <Img><ImageHere></Img> Lateral: <Img><ImageHere></Img>"
    for state in (one, two):
        chat.ask("Describe the study.", state)
    assert chat.context_length(two.conversation.prompt(), two.image_features) > \
        chat.context_length(one.conversation.prompt(), one.image_features) + 8
    settings = GenerationSettings(max_new_tokens=6, temperature=0)
    reply = chat.answer(two, settings)
    assert isinstance(reply, str) and two.conversation.messages[-1][1] == reply
    with pytest.raises(ValueError, match=r"^4 images but this model takes at most 3 \(model.max_images\)$"):
        chat.upload_img([ref["images"][0]] * 4, chat.new_state())
