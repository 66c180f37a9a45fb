"""The demo's findings table and JSON, from the handlers (no browser)."""
from __future__ import annotations

import json
import types

from xraygpt.demo import DemoHandlers
from xraygpt.structured import schema_errors
from xraygpt.structured.table import findings_table_html

ANSWER = "There is a small left pleural effusion and right lower lobe consolidation. No pneumothorax."


def _handlers():
    chat = types.SimpleNamespace(model=types.SimpleNamespace(config=types.SimpleNamespace(ckpt=None)))
    return DemoHandlers(chat, max_file_size=1024, model_name="tiny")


def test_structure_renders_the_last_answer_as_table_and_json():
    history = [{"role": "user", "content": "Findings?"}, {"role": "assistant", "content": "Normal heart."},
               {"role": "user", "content": "More?"},
               {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]}]  # as the browser sends it back
    html, text = _handlers().structure(history, 1, 0.0, 64)
    report = json.loads(text)
    assert schema_errors(report) == []
    assert [f["observation"] for f in report["findings"]] == ["Pleural Effusion", "Consolidation", "Pneumothorax"]
    assert report["generator"]["model"] == "tiny" and report["generator"]["settings"]["max_new_tokens"] == 64
    assert html == findings_table_html(report)
    assert html.count('<tr class="finding"') == 3
    assert html.count('class="status status-present"') == 2 and html.count('class="status status-absent"') == 1
    assert f'title="{ANSWER.split(". ")[0]}."' in html  # the evidence sentence shows on hover
    assert "<td>right lower lobe</td>" in html and "<td>small</td>" in html


def test_structure_without_an_answer_and_an_answer_without_findings():
    assert _handlers().structure([], 1, 0.0, 64) == ("", "")
    html, text = _handlers().structure([{"role": "assistant", "content": "Xyz <b>bold</b>."}], 1, 0.0, 64)
    assert html == '<p class="findings-empty">No finding (no pathology mentioned).</p>'  # the labeler's No Finding rule
    assert json.loads(text)["findings"] == [] and json.loads(text)["no_finding"] is True


def test_table_escapes_model_text():
    report = {"findings": [{"observation": "Edema", "status": "present", "laterality": None, "location": "<script>",
                            "severity": None, "evidence": 'say "hi" <img>'}], "impression": "", "no_finding": False}
    html = findings_table_html(report)
    assert "<script>" not in html and "&lt;script&gt;" in html and 'title="say &quot;hi&quot; &lt;img&gt;"' in html


def test_upload_of_several_files_opens_a_study(seed_reference_dir):
    calls, names = [], []

    class FakeChat:
        model = types.SimpleNamespace(config=types.SimpleNamespace(ckpt=None, max_images=2))

        def new_state(self):
            return "state"

        def upload_img(self, images, state, views=None):
            calls.append(images)
            names.append(views)

    handlers = DemoHandlers(FakeChat(), max_file_size=20 * 1024**2)
    paths = [str(seed_reference_dir / "images" / n) for n in ("xray_0.png", "xray_1.png")]
    state, preview, history, status = handlers.upload(paths)
    assert state == "state" and len(calls[0]) == 2 and preview.size == calls[0][0].size
    assert status == "**xray_0.png, xray_1.png** loaded. Ask a question about the study."
    assert names[0] == [None, None]  # PNGs with no view in their names
    _, _, _, status = handlers.upload(paths + [paths[0]])
    assert status == "**Error:** 3 files uploaded, but this model reads at most 2 image(s) per study."
    handlers.upload([paths[0]])
    assert not isinstance(calls[-1], list)  # one file: today's single-image upload
