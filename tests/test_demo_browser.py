"""The demo in a real browser: headless Debian Chromium driven by Playwright.

Starts ``python -m xraygpt.demo`` with the tiny seed-reference model on a free
127.0.0.1 port, uploads an x-ray, asks a question and reads the streamed
answer, uploads a corrupt file and reads the friendly error, then loads an
example phantom.  Screenshots
and the server log go to ``test-artifacts/`` (git-ignored) for a human to look at.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"
STARTUP_SECONDS = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_serving(url, process, log_path):
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the demo exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the demo did not answer on {url} within {STARTUP_SECONDS} s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture
def demo_url(seed_reference_dir):
    ARTIFACTS.mkdir(exist_ok=True)
    port = _free_port()
    log_path = ARTIFACTS / "demo_server.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("XRAYGPT_DEMO_AUTH", None)
    command = [
        sys.executable, "-m", "xraygpt.demo", "--cfg-path", "eval_configs/seed_reference_tiny.yaml",
        "--device", "cpu", "--port", str(port),
    ]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_until_serving(url, process, log_path)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "Traceback" not in log_path.read_text(), f"the server logged an error; see {log_path}"


@pytest.fixture
def page(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def _upload(page, path):
    page.wait_for_selector("#upload input[type=file]", state="attached", timeout=30_000).set_input_files(str(path))


def test_upload_ask_stream_and_corrupt_file(demo_url, page, seed_reference_dir, tmp_path):
    from playwright.sync_api import expect

    page.goto(demo_url)
    disclaimer = page.locator("#disclaimer")
    expect(disclaimer).to_contain_text("not a medical device", timeout=30_000)
    status = page.locator("#status")

    _upload(page, seed_reference_dir / "images" / "xray_0.png")
    expect(status).to_contain_text("xray_0.png loaded", timeout=30_000)

    # Short greedy answers keep the test quick; the slider's number box takes typed values.
    for slider, value in (("#max-new-tokens", "48"), ("#temperature", "0")):
        box = page.locator(f"{slider} input[type=number]")
        box.fill(value)
        box.press("Enter")
    question = page.locator("#question textarea")
    question.fill("What are the key findings?")
    question.press("Enter")
    expect(page.locator("#chatbot [data-testid=user]")).to_contain_text("What are the key findings?", timeout=30_000)
    answer = page.locator("#chatbot [data-testid=bot]").last
    expect(answer).not_to_be_empty(timeout=30_000)
    expect(status).to_contain_text("Done.", timeout=60_000)
    assert answer.inner_text().strip()
    page.screenshot(path=str(ARTIFACTS / "demo_answer.png"), full_page=True)

    corrupt = tmp_path / "corrupt_scan.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really an image")
    page.locator("#upload button[aria-label=Clear]").click()
    expect(status).to_contain_text("Upload a chest x-ray", timeout=30_000)
    _upload(page, corrupt)
    expect(status).to_contain_text("Could not read corrupt_scan.png", timeout=30_000)
    expect(page.locator("#chatbot [data-testid=bot]")).to_have_count(0)
    assert "Traceback" not in page.content()
    expect(disclaimer).to_be_in_viewport()
    page.screenshot(path=str(ARTIFACTS / "demo_corrupt_upload.png"), full_page=True)

    # The synthetic example images are drawn at start-up and load with one click.
    page.locator("#upload button[aria-label=Clear]").click()
    page.get_by_text("phantom_0.png", exact=True).click()
    expect(status).to_contain_text("phantom_0.png loaded", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "demo_example_phantom.png"), full_page=True)
