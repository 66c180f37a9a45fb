"""The findings table in a real browser: after an answer it shows the answer's structured report, and
"Copy JSON" puts that schema-valid JSON on the clipboard."""
import json

import pytest

from tests.test_demo_browser import ARTIFACTS, _upload, demo_url, page  # noqa: F401  (fixtures)
from xraygpt.structured import extract_report, schema_errors

pytestmark = pytest.mark.browser


def test_findings_table_follows_the_answer_and_copy_json(demo_url, page, seed_reference_dir):  # noqa: F811
    from playwright.sync_api import expect

    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=demo_url.rstrip("/"))
    page.goto(demo_url)
    status = page.locator("#status")
    _upload(page, seed_reference_dir / "images" / "xray_1.png")
    expect(status).to_contain_text("xray_1.png loaded", timeout=30_000)
    for slider, value in (("#max-new-tokens", "64"), ("#temperature", "0")):
        box = page.locator(f"{slider} input[type=number]")
        box.fill(value)
        box.press("Enter")
    question = page.locator("#question textarea")
    question.fill("What are the key findings in this chest x-ray?")  # its greedy answer names two findings
    question.press("Enter")
    expect(status).to_contain_text("Done.", timeout=90_000)
    table = page.locator("#findings-table")
    expect(table.locator("table")).to_have_count(1, timeout=30_000)

    page.locator("#copy-json").click()
    copied = page.wait_for_function("navigator.clipboard.readText()", timeout=10_000).json_value()
    report = json.loads(copied)
    assert schema_errors(report) == []
    answer = page.locator("#chatbot [data-testid=bot]").last.inner_text().strip()
    assert report["findings"] == extract_report(answer, report["generator"])["findings"]
    assert report["findings"], f"the tiny model's answer mentions no finding, so the table has no row: {answer!r}"

    rows = table.locator("tr.finding")
    expect(rows).to_have_count(len(report["findings"]))
    for index, finding in enumerate(report["findings"]):
        row = rows.nth(index)
        assert row.get_attribute("title") == finding["evidence"]
        expect(row.locator("td.status")).to_have_class(f"status status-{finding['status']}")
    page.screenshot(path=str(ARTIFACTS / "demo_findings_table.png"), full_page=True)
