"""A person's click-through in a real browser: Debian's Chromium driven by Playwright, headless.

Quickstart on a tiny model: pick the model, preview the data, train (reloading
the page mid-run), chat in two panes, export a GGUF and read its report card,
evaluate base, fine-tuned, checkpoints and the GGUF on held-out rows and send the
verdict's weights to the Export tab.
Screenshots of every tab go to $SCREENSHOTS_DIR (default: a temporary folder).
The README's screenshots are this test on the built-in model:

    SCREENSHOTS_DIR=docs/screenshots BROWSER_MODEL=builtin:gemma-3-270m BROWSER_STEPS=40 \
        .venv/bin/python -m pytest tests/test_browser.py
"""

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from test_ui import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (scripts/setup.sh --dev installs it)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def page(tmp_path_factory, tiny_llama):
    from playwright.sync_api import sync_playwright

    from studio.services import Studio
    from studio.ui.app import serve

    port = free_port()
    app = serve(Studio(runs_dir=tmp_path_factory.mktemp("browser-runs")), port=port, block=False)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        tab = browser.new_page(viewport={"width": 1440, "height": 1000})
        tab.set_default_timeout(60_000)
        tab.goto(f"http://127.0.0.1:{port}/")
        yield tab
        browser.close()
    app.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("SCREENSHOTS_DIR") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def set_field(page, elem_id: str, value: str) -> None:
    field = page.locator(f"#{elem_id}").locator("input, textarea").first
    field.fill(value)
    field.press("Tab")


def settled(locator, quiet: float = 2.0, timeout: float = 120.0) -> str:
    """Wait until streamed text stops changing for `quiet` seconds."""
    text, since, deadline = locator.inner_text(), time.time(), time.time() + timeout
    while time.time() - since < quiet and time.time() < deadline:
        time.sleep(0.25)
        now = locator.inner_text()
        if now != text:
            text, since = now, time.time()
    return text


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def test_quickstart_by_clicking(page, shots, tiny_llama):
    from playwright.sync_api import expect

    model = os.environ.get("BROWSER_MODEL") or str(tiny_llama)
    steps, learning_rate = (os.environ.get("BROWSER_STEPS", "16"), "0.003" if model == str(tiny_llama) else "0.0003")
    slow = 1 if model == str(tiny_llama) else 10  # the real model trains for minutes, not seconds

    # Model: the tiny model instead of the built-in one, then check it.
    expect(page.locator("#hardware")).to_contain_text("CPU only")
    set_field(page, "model-path", model)
    page.get_by_role("button", name="Check model").click()
    expect(page.locator("#model-info")).to_contain_text("Ready", timeout=60_000 * slow)
    expect(page.locator("#fit-estimate")).to_contain_text("Fits")
    page.screenshot(path=shots / "1-model.png", full_page=True)

    # Data: the sample data, row 2 token by token, the length histogram.
    open_tab(page, "Data")
    set_field(page, "data-row", "2")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#data-summary")).to_contain_text("370 rows", timeout=10_000 * slow)
    expect(page.locator("#token-preview")).to_contain_text(re.compile(r"</s>|<eos>"))  # EOS ends the response
    expect(page.locator("#token-preview")).to_contain_text("↵")  # new lines are visible as tokens
    page.screenshot(path=shots / "2-data.png", full_page=True)

    # Train: a short run; reload mid-run and the page re-attaches to it.
    open_tab(page, "Train")
    set_field(page, "run-name", "browser")
    set_field(page, "max-steps", steps)
    set_field(page, "learning-rate", learning_rate)
    page.locator("#train-start").click()
    expect(page.locator("#train-status")).to_contain_text("step", timeout=60_000)
    page.reload()
    open_tab(page, "Train")
    expect(page.locator("#train-status")).to_contain_text("Completed", timeout=120_000 * slow)
    expect(page.locator("#memory-panel")).to_contain_text("RAM")
    time.sleep(1.5)  # let the plots draw their last points
    page.screenshot(path=shots / "3-train.png", full_page=True)

    # Chat: base and fine-tuned side by side, greedy.
    open_tab(page, "Chat")
    expect(page.locator("#chat-run input")).not_to_have_value("", timeout=10_000)
    page.locator("#chat-prompt textarea").fill("What is the capital of Peru?")
    page.locator("#chat-send").click()
    base, tuned = page.locator("#pane-base .message.bot").last, page.locator("#pane-tuned .message.bot").last
    expect(tuned).to_be_visible(timeout=60_000 * slow)
    settled(tuned)
    assert base.inner_text().strip() and tuned.inner_text().strip()
    assert base.inner_text() != tuned.inner_text()
    page.screenshot(path=shots / "4-chat.png", full_page=True)

    # Export: the type ticked for a tiny model (q8_0) with its report card, then open it in Chat.
    open_tab(page, "Export")
    expect(page.locator("#export-run input")).not_to_have_value("", timeout=10_000)
    page.locator("#export-start").click()
    expect(page.locator("#export-status")).to_contain_text("Done", timeout=180_000 * slow)
    expect(page.locator("#report-cards")).to_contain_text("PASSED")
    expect(page.locator("#modelfile")).to_contain_text("FROM ./browser-q8_0.gguf")
    expect(page.locator("#report-cards")).to_contain_text("EOS id")
    page.screenshot(path=shots / "5-export.png", full_page=True)
    page.locator("#open-in-chat").click()
    expect(page.locator("#chat-gguf input")).to_have_value(re.compile(r"browser-q8_0\.gguf$"))

    # Evaluate: every model of the run on held-out rows (the quickstart holds 10% out), the scorecard, its verdict.
    open_tab(page, "Evaluate")
    page.locator("#eval-run input").click()
    page.locator("#eval-run").get_by_role("option", name=re.compile("browser")).click()
    set_field(page, "eval-limit", "12")
    set_field(page, "eval-max-new", "32")
    page.locator("#eval-start").click()
    expect(page.locator("#eval-status")).to_contain_text("Done", timeout=180_000 * slow)
    expect(page.locator("#eval-scorecard")).to_contain_text("browser-q8_0.gguf")
    expect(page.locator("#eval-verdict")).to_contain_text("Ship ")
    page.screenshot(path=shots / "6-evaluate.png", full_page=True)
    page.locator("#eval-export-best").click()
    expect(page.locator("#export-checkpoint input")).to_have_value(re.compile(r"^(final weights|checkpoint-\d+)$"))
    expect(page.locator("#export-start")).to_be_visible()


def test_the_mapping_dropdowns_offer_the_files_columns(page, tiny_llama, tmp_path):
    from playwright.sync_api import expect

    path = tmp_path / "questions.csv"
    path.write_text("Question Text,Answer\nWhat is 2 plus 2?,4\nName a colour.,Blue.\n")
    open_tab(page, "Model")
    set_field(page, "model-path", str(tiny_llama))
    open_tab(page, "Data")
    set_field(page, "data-path", str(path))
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#data-summary")).to_contain_text("cannot tell the format from the columns")
    page.get_by_text("Column mapping (when the file's names differ)").click()
    for field, column in (("instruction", "Question Text"), ("output", "Answer")):
        page.locator(f"#map-{field} input").click()
        page.locator(f"#map-{field}").get_by_role("option", name=column, exact=True).click()
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#data-summary")).to_contain_text("2 rows · format alpaca")
    expect(page.locator("#map-instruction input")).to_have_value("Question Text")
