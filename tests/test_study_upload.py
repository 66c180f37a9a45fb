"""Uploads as the views of a study: one view per file or DICOM frame, each named (DICOM, choice, file name)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from xraygpt.common.config import Config
from xraygpt.common.errors import DataError
from xraygpt.conversation.study_upload import load_study_upload, parse_view_names, view_from_filename
from xraygpt.datasets.image_io import load_medical_image, load_medical_views


def _dicom(path, frames: np.ndarray, **elements):
    """A synthetic DX DICOM (several frames when ``frames`` is [N, H, W]), written by pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if frames.ndim == 3:
        ds.NumberOfFrames = frames.shape[0]
    ds.Rows, ds.Columns = frames.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = frames.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def _three_frames() -> np.ndarray:
    """Three 32x32 frames over the same 0..300 range, each with its own flat level (0, 100, 200)."""
    frames = np.stack([np.full((32, 32), level, np.uint16) for level in (0, 100, 200)])
    frames[:, 0, 0], frames[:, 0, 1] = 300, 0
    return frames


def _png(path, value: int = 90) -> str:
    Image.fromarray(np.full((32, 32), value, np.uint8)).save(path)
    return str(path)


# ------------------------------------------------------------------ loading
def test_a_multi_frame_dicom_gives_every_frame_named_by_its_header(tmp_path):
    path = _dicom(tmp_path / "multi.dcm", _three_frames(), ViewPosition="PA ")
    views = load_medical_views(path)
    assert [v.frame for v in views] == [0, 1, 2] and {v.view for v in views} == {"PA"}
    assert [np.asarray(v.image)[5, 5, 0] for v in views] == [0, round(100 / 300 * 255), round(200 / 300 * 255)]
    assert np.array_equal(np.asarray(load_medical_image(path)), np.asarray(views[1].image))  # datasets: the middle one
    single = load_medical_views(_dicom(tmp_path / "one.dcm", _three_frames()[1]))
    assert [(v.frame, v.view) for v in single] == [(None, None)]
    png = load_medical_views(_png(tmp_path / "a.png"))
    assert len(png) == 1 and png[0].view is None and png[0].image.size == (32, 32)


def test_view_names_from_file_names_and_from_the_user():
    assert view_from_filename("chest_PA.png") == "PA"
    assert view_from_filename("/x/2024-01 lateral.dcm") == "LATERAL"
    assert view_from_filename("study_lat_2.jpg") == "LATERAL"
    assert view_from_filename("paper.png") is None  # whole words only
    assert view_from_filename("pa_and_lat.png") is None  # two different views: no guess
    assert parse_view_names(None) == [] and parse_view_names("  ") == []
    assert parse_view_names("PA, , Lateral") == ["PA", None, "Lateral"]
    with pytest.raises(DataError, match=r"^view name '<ImageHere>' is not allowed: use up to 24 letters"):
        parse_view_names("PA, <ImageHere>")


def test_three_frames_are_three_views_and_a_cap_gives_one_line(tmp_path):
    path = _dicom(tmp_path / "multi.dcm", _three_frames(), ViewPosition="AP")
    views = load_study_upload([path], max_images=3)
    assert [(v.label, v.view) for v in views] == [("multi.dcm frame 1", "AP"), ("multi.dcm frame 2", "AP"),
                                                  ("multi.dcm frame 3", "AP")]
    lateral = _png(tmp_path / "lat.png")
    with pytest.raises(DataError) as error:
        load_study_upload([path, lateral], max_images=3)
    assert str(error.value) == ("the upload (multi.dcm: 3 frames, lat.png) holds 4 images, but this model reads at "
                                "most 3 per study (model.max_images): upload fewer files or frames")
    assert "\n" not in str(error.value)


def test_the_header_names_first_then_the_choice_then_the_file_name(tmp_path):
    headed = _dicom(tmp_path / "x_lat.dcm", _three_frames()[0], ViewPosition="PA")
    plain = _png(tmp_path / "chest_lateral.png")
    other = _png(tmp_path / "scan.png")
    assert [v.view for v in load_study_upload([headed, plain, other], 3)] == ["PA", "LATERAL", None]
    chosen = load_study_upload([headed, plain, other], 3, ["AP", "LL", "Frontal"])
    assert [v.view for v in chosen] == ["PA", "LL", "Frontal"]
    assert [v.view for v in load_study_upload([headed, plain, other], 3, [None, None, "AP"])] == ["PA", "LATERAL", "AP"]
    with pytest.raises(DataError, match=r"^2 view names given for 3 images: give one per image in upload order"):
        load_study_upload([headed, plain, other], 3, ["AP", "LL"])


# ----------------------------------------------------- demo -> chat -> tokens
@pytest.fixture(scope="module")
def study_handlers(repo_root, seed_reference_dir):
    from xraygpt.conversation.chat import Chat
    from xraygpt.conversation.loading import load_model_and_processor
    from xraygpt.demo import DemoHandlers

    cfg = Config({"cfg_path": str(repo_root / "eval_configs" / "seed_reference_tiny.yaml"),
                  "options": ["model.max_images=3"]})
    model, processor = load_model_and_processor(cfg, "cpu")
    return DemoHandlers(Chat(model, processor), max_file_size=20 * 1024**2)


def _text_between_images(model, prompt: str, count: int):
    """The prompt's tokens as the model reads them, decoded piece by piece around the image slots."""
    from xraygpt.models.prompting import build_generation_batch

    batch = build_generation_batch(model.tokenizer, [prompt], model.config.num_query_token, [count])
    ids, slots = batch.input_ids[0].tolist(), batch.image_mask[0].tolist()
    pieces, current = [], []
    for token, is_slot in zip(ids[1:], slots[1:]):  # after BOS
        if is_slot and current:
            pieces.append(current)
            current = []
        elif not is_slot:
            current.append(token)
    return [model.tokenizer.decode(p) for p in [*pieces, current]], sum(slots)


def test_uploaded_views_carry_their_names_into_the_prompt_tokens(study_handlers, tmp_path):
    frontal = _dicom(tmp_path / "study1.dcm", _three_frames()[2], ViewPosition="PA")
    lateral = _png(tmp_path / "study1_lateral.png")
    state, preview, history, status = study_handlers.upload([frontal, lateral])
    assert status == "**study1.dcm (PA), study1_lateral.png (LATERAL)** loaded. Ask a question about the study."
    assert state.conversation.messages[0][1] == "PA: <Img><ImageHere></Img> LATERAL: <Img><ImageHere></Img>"
    study_handlers.chat.ask("Describe the study.", state)
    model = study_handlers.chat.model
    pieces, slots = _text_between_images(model, state.conversation.prompt(), 2)
    assert slots == 2 * model.config.num_query_token
    assert pieces[0].endswith("PA: <Img>") and pieces[1] == "</Img> LATERAL: <Img>"
    assert pieces[2].startswith("</Img> Describe the study.")
    # The user's choice names what neither the header nor the file name does; one image keeps today's prompt.
    state = study_handlers.upload([frontal, _png(tmp_path / "b.png")], "AP, LL")[0]
    assert state.conversation.messages[0][1] == "PA: <Img><ImageHere></Img> LL: <Img><ImageHere></Img>"
    state = study_handlers.upload([frontal])[0]
    assert state.conversation.messages[0][1] == "<Img><ImageHere></Img>"


def test_a_three_frame_dicom_upload_is_a_three_view_study(study_handlers, tmp_path):
    path = _dicom(tmp_path / "series.dcm", _three_frames(), ViewPosition="AP")
    state, preview, _, status = study_handlers.upload(str(path))
    assert status == ("**series.dcm frame 1 (AP), series.dcm frame 2 (AP), series.dcm frame 3 (AP)** loaded. "
                      "Ask a question about the study.")
    assert state.image_features.shape == (3, 8, 64) and preview.size == (32, 32)
    features = state.image_features
    assert not torch.allclose(features[0], features[1]) and not torch.allclose(features[1], features[2])
    assert state.conversation.messages[0][1] == " ".join(["AP: <Img><ImageHere></Img>"] * 3)
    state, preview, history, status = study_handlers.upload([path, _png(tmp_path / "extra.png")])
    assert (state, preview, history) == (None, None, [])
    assert status == ("**Error:** the upload (series.dcm: 3 frames, extra.png) holds 4 images, but this model reads at "
                      "most 3 per study (model.max_images): upload fewer files or frames")
    status = study_handlers.upload([path], "AP, LL")[3]
    assert status.startswith("**Error:** 2 view names given for 3 images")
