"""What a person sees on a fresh offline machine (#19 points 3 and 6), in Debian's chromium: the Training page
opens without a red box and Start is usable; the leakage audit's before/after report renders as tables."""
from __future__ import annotations

import pytest

from tests.app_support import StreamlitServer, headless_chromium
from tests.test_browser import wait_until_idle


@pytest.fixture(scope="module")
def fresh_server(app_data_root, artifacts_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("fresh-home")  # no ~/.keras/models: no ImageNet weights cached
    env = {"HOME": str(home), "CXR_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "-1",
           "CXR_MODELS_ROOT": str(home / "models"), "CXR_RUNS_ROOT": str(home / "runs"),
           "CXR_CACHE_ROOT": str(home / "cache")}
    with StreamlitServer(app_data_root, artifacts_dir / "streamlit-first-visit.log", extra_env=env) as app:
        yield app


@pytest.fixture(scope="module")
def page():
    with headless_chromium() as chromium:
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        yield page
        page.close()


def test_training_first_visit_offline_suggests_a_preset_that_runs(fresh_server, page, artifacts_dir):
    page.goto(f"{fresh_server.url}/training", wait_until="domcontentloaded")
    wait_until_idle(page)
    page.get_by_text("New training run").first.wait_for(timeout=30_000)
    wait_until_idle(page)
    page.screenshot(path=str(artifacts_dir / "training-first-visit-offline.png"), full_page=True)
    preset = page.get_by_label("Preset", exact=True).first
    assert "demo (suggested for this machine)" in (preset.input_value() if preset.evaluate("e => e.tagName")
                                                   == "INPUT" else preset.inner_text())
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    assert page.get_by_role("button", name="Start training").is_enabled()
    assert page.get_by_text("The demo preset (a small CNN trained from scratch) was chosen").count() == 1


def test_the_before_after_balance_report_renders_as_tables(fresh_server, page, artifacts_dir):
    page.goto(f"{fresh_server.url}/leakage_audit", wait_until="domcontentloaded")
    wait_until_idle(page)
    page.get_by_label("Splits", exact=True).first.click()
    page.get_by_role("option", name="valid_leaky", exact=True).first.click()
    page.keyboard.press("Escape")
    wait_until_idle(page)
    report = page.locator('[data-testid="stExpander"]', has_text="Before/after balance report").first
    report.get_by_text("Before/after balance report").click()
    report.locator("table").first.wait_for(timeout=30_000)
    page.screenshot(path=str(artifacts_dir / "leakage-balance-report.png"), full_page=True)
    text = report.inner_text()
    assert "| split |" not in text and "max |dev|" in text  # the header cell, in a real table
    assert report.locator("table").count() >= 3  # before, after, prevalence (moves too when any)
    assert report.locator("h1").count() == 0  # the report's title is not a page-sized heading in the expander
