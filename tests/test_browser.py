"""Real browser: Debian's chromium, headless, driven by Playwright against `streamlit run` on loopback.

Every page opens without an exception block; screenshots land in test-artifacts/ for people to look at.
"""
from __future__ import annotations


import pytest

from tests.app_support import StreamlitServer, headless_chromium

PAGES = [
    ("", "CXR Dashboard"),
    ("dataset_explorer", "Dataset explorer"),
    ("leakage_audit", "Leakage audit"),
    ("class_balance", "Class balance and weighted loss"),
    ("training", "Training"),
    ("results", "Results"),
    ("gradcam_explorer", "GradCAM explorer"),
]


@pytest.fixture(scope="module")
def server(app_data_root, artifacts_dir):
    with StreamlitServer(app_data_root, artifacts_dir / "streamlit-browser.log") as app:
        yield app


@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as chromium:
        yield chromium


def wait_until_idle(page, timeout_ms: int = 60_000) -> None:
    """Wait for Streamlit to finish running the script (no 'Running...' status widget)."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_ms)
    page.wait_for_function(
        """() => {
            const app = document.querySelector('[data-testid="stApp"]');
            return app && app.getAttribute('data-test-script-state') === 'notRunning'
                && document.querySelectorAll('[data-testid="stSkeleton"]').length === 0
                && document.querySelector('h1') !== null;
        }""", timeout=timeout_ms)
    page.wait_for_timeout(500)


@pytest.mark.parametrize("path,title", PAGES)
def test_page_opens_without_exception(server, browser, artifacts_dir, path, title):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{server.url}/{path}", wait_until="domcontentloaded")
        wait_until_idle(page)
        assert page.locator("h1", has_text=title).first.is_visible()
        exceptions = page.locator('[data-testid="stException"]')
        assert exceptions.count() == 0, exceptions.first.inner_text()
        page.screenshot(path=str(artifacts_dir / f"page-{path or 'home'}.png"), full_page=True)
    finally:
        page.close()


def test_audit_page_shows_verdict(server, browser, artifacts_dir):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{server.url}/leakage_audit", wait_until="domcontentloaded")
        wait_until_idle(page)
        page.get_by_text("Clean: no patient or image is shared between splits.").wait_for(timeout=30_000)
    finally:
        page.close()


def test_uploading_a_leaking_pair_shows_the_leak_and_a_bad_file_an_error(server, browser, artifacts_dir,
                                                                           app_data_root):
    """As a person would: upload two split files that share patients, then a malformed one."""
    mini = app_data_root / "mini"
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    try:
        page.goto(f"{server.url}/leakage_audit", wait_until="domcontentloaded")
        wait_until_idle(page)
        page.get_by_text("Upload split files").click()
        wait_until_idle(page)
        page.locator('input[type="file"]').set_input_files([str(mini / "train.csv"), str(mini / "valid_leaky.csv")])
        page.get_by_text("Leaking: 3 patient(s)").wait_for(timeout=30_000)
        page.screenshot(path=str(artifacts_dir / "audit-upload-leaking.png"))
        bad = artifacts_dir / "malformed.csv"
        bad.write_text("Image;Atelectasis;Cardiomegaly\nx.png;0;1\n")
        page.locator('input[type="file"]').set_input_files([str(mini / "train.csv"), str(bad)])
        page.get_by_text("separated by semicolons").wait_for(timeout=30_000)
        assert page.locator('[data-testid="stException"]').count() == 0
        page.screenshot(path=str(artifacts_dir / "audit-upload-malformed.png"))
    finally:
        page.close()
