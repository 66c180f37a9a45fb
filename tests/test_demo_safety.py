"""Demo safety defaults and UI handlers, without a browser."""
import shutil

import pytest

from xraygpt import demo
from xraygpt.common.config import Config, ConfigError
from xraygpt.conversation.chat import Chat


@pytest.fixture(autouse=True)
def _no_auth_env(monkeypatch):
    monkeypatch.delenv("XRAYGPT_DEMO_AUTH", raising=False)


def _options(*extra):
    return demo.launch_options(demo.build_parser().parse_args(["--cfg-path", "x.yaml", *extra]))


def test_defaults_are_local_private_and_quiet():
    options = _options()
    assert options["server_name"] == "127.0.0.1"
    assert options["share"] is False and options["auth"] is None
    assert options["show_error"] is False  # tracebacks never reach the browser
    assert options["max_file_size"] == 20 * 1024**2


def test_exposure_needs_explicit_flags(monkeypatch):
    options = _options("--host", "0.0.0.0", "--port", "9000", "--share", "--auth", "alice:pa:ss", "--max-file-size", "5mb")
    assert (options["server_name"], options["server_port"], options["share"]) == ("0.0.0.0", 9000, True)
    assert options["auth"] == ("alice", "pa:ss") and options["max_file_size"] == 5 * 1024**2
    monkeypatch.setenv("XRAYGPT_DEMO_AUTH", "bob:secret")
    assert _options()["auth"] == ("bob", "secret")


@pytest.mark.parametrize("text", ["alice", "alice:", ":secret", ""])
def test_malformed_auth_is_refused(text):
    with pytest.raises(ConfigError, match="user:password"):
        demo.parse_auth(text)


def test_bad_flags_fail_before_the_model_loads(tmp_path):
    # The config does not even exist: the flag check must come first.
    with pytest.raises(ConfigError, match="--auth expects"):
        demo.main(["--cfg-path", str(tmp_path / "missing.yaml"), "--auth", "nopassword"])
    with pytest.raises(ConfigError, match="--max-file-size"):
        demo.main(["--cfg-path", str(tmp_path / "missing.yaml"), "--max-file-size", "big"])
    with pytest.raises(SystemExit):
        demo.build_parser().parse_args(["--cfg-path", "x.yaml", "--gpu-id", "0", "--device", "cpu"])


@pytest.mark.parametrize("text, size", [("20mb", 20 * 1024**2), ("512KB", 512 * 1024), ("1000", 1000), ("1.5gb", int(1.5 * 1024**3))])
def test_sizes_parse(text, size):
    assert demo.parse_size(text) == size


# ------------------------------------------------------------ upload errors
@pytest.fixture
def offline_handlers():
    """Handlers whose chat must never be reached: every upload below is refused first."""
    return demo.DemoHandlers(chat=None, max_file_size=1024)


def test_unsupported_file_types_get_a_message(offline_handlers, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    state, preview, history, status = offline_handlers.upload(str(path))
    assert state is None and preview is None and history == []
    assert "notes.txt" in status and "not a supported file type" in status


def test_oversized_files_get_a_message(offline_handlers, tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG" + b"0" * 4096)
    status = offline_handlers.upload(str(path))[3]
    assert "huge.png" in status and "limit is" in status


def test_corrupt_images_get_a_message_without_internals(offline_handlers, tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    status = offline_handlers.upload(str(path))[3]
    assert "Could not read **scan.png**" in status
    assert str(tmp_path) not in status and "Traceback" not in status


def test_questions_before_an_image_are_refused(offline_handlers):
    text, history, state, status = offline_handlers.ask("Is it normal?", [], None)
    assert (text, history, state) == ("Is it normal?", [], None) and "Upload an image first" in status
    assert list(offline_handlers.answer([], None, 1, 0.0, 16)) == []


# -------------------------------------------------------- sessions, streams
@pytest.fixture(scope="module")
def handlers(repo_root, seed_reference_dir):
    from xraygpt.conversation.loading import load_model_and_processor

    cfg = Config({"cfg_path": str(repo_root / "eval_configs" / "seed_reference_tiny.yaml")})
    model, processor = load_model_and_processor(cfg, "cpu")
    return demo.DemoHandlers(Chat(model, processor), max_file_size=20 * 1024**2)


def _chat_turn(handlers, state, history, question):
    _, history, state, status = handlers.ask(question, history, state)
    assert status == "Thinking…"
    updates = list(handlers.answer(history, state, 1, 0.0, 16))
    return updates


def test_sessions_are_independent_and_answers_stream(handlers, seed_reference_dir, tmp_path):
    first = tmp_path / "first.png"
    shutil.copy(seed_reference_dir / "images" / "xray_0.png", first)
    state_a, preview, history_a, status = handlers.upload(str(first))
    assert "first.png" in status and preview.size == (320, 288)

    updates = _chat_turn(handlers, state_a, history_a, "What do you see?")
    history_a, state_a, status = updates[-1]
    assert status == "Done." and len(updates) > 2
    assert history_a[0] == {"role": "user", "content": "What do you see?"}
    assert history_a[1]["role"] == "assistant" and history_a[1]["content"]

    # A second browser session has no image and cannot see the first one's chat.
    assert "Upload an image first" in handlers.ask("And now?", [], None)[3]
    state_b = handlers.upload(str(seed_reference_dir / "images" / "xray_1.png"))[0]
    assert state_b is not state_a and state_b.conversation.messages == [["Patient", "<Img><ImageHere></Img>"]]
    assert len(state_a.conversation.messages) == 2


def test_generation_failures_become_a_message_and_the_question_is_forgotten(handlers, seed_reference_dir, monkeypatch):
    state, _, history, _ = handlers.upload(str(seed_reference_dir / "images" / "xray_2.png"))

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (internal detail)")
        yield

    monkeypatch.setattr(handlers.chat, "stream_answer", broken)
    updates = _chat_turn(handlers, state, history, "Describe it.")
    history, state, status = updates[-1]
    assert history == [] and "failed" in status and "internal detail" not in status
    assert state.conversation.messages == [["Patient", "<Img><ImageHere></Img>"]]


def test_reset_forgets_everything(handlers):
    assert handlers.reset()[:4] == (None, None, None, [])


def test_example_images_are_synthetic_phantoms(tmp_path):
    from xraygpt.datasets.image_io import load_medical_image

    paths = demo.example_images(tmp_path, count=2)
    assert len(paths) == 2 and all(load_medical_image(p).size[0] >= 64 for p in paths)



def test_dicom_uploads_are_read_and_previewed(handlers, tmp_path):
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = (np.add.outer(np.arange(64), np.arange(48)) * 20).astype(np.uint16)  # 12-bit gradient
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "DX", *pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    path = tmp_path / "study.dcm"
    ds.save_as(path, enforce_file_format=True)

    state, preview, _, status = handlers.upload(str(path))
    assert "study.dcm" in status and "loaded" in status
    assert preview.size == (48, 64) and state.image_features.shape == (1, 8, 64)
