"""Real browser (#20): a prediction file uploaded on the Results page is still evaluated after a visit to
another page of the same session (Streamlit drops a file uploader's files when its page is left)."""
from __future__ import annotations

import numpy as np
import pytest

from cxrcore.data.dataset import load_split
from cxrcore.data.predictions import write_predictions
from tests.app_support import StreamlitServer, headless_chromium
from tests.test_browser import wait_until_idle


@pytest.fixture(scope="module")
def server(app_data_root, artifacts_dir):
    with StreamlitServer(app_data_root, artifacts_dir / "streamlit-uploads-kept.log") as app:
        yield app


def test_uploaded_predictions_survive_leaving_the_results_page(server, app_data_root, artifacts_dir, tmp_path):
    split = load_split(app_data_root / "mini" / "test.csv")
    preds = write_predictions(tmp_path / "elsewhere.csv", split.images,
                              np.clip(0.2 + 0.6 * split.labels + 0.05, 0, 1))
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        try:
            page.goto(f"{server.url}/results", wait_until="domcontentloaded")
            wait_until_idle(page)
            page.locator('[data-testid="stFileUploader"]', has_text="Upload prediction CSVs") \
                .locator('input[type="file"]').set_input_files(str(preds))
            table = page.locator('[data-testid="stDataFrame"]', has_text="elsewhere: AUROC [95% CI]")
            table.wait_for(timeout=60_000)
            page.get_by_role("link", name="Class balance").first.click()
            page.locator("h1", has_text="Class balance").wait_for(timeout=60_000)
            wait_until_idle(page)
            page.get_by_role("link", name="Results").first.click()
            page.locator("h1", has_text="Results").wait_for(timeout=60_000)
            wait_until_idle(page)
            page.get_by_text("Kept from earlier in this session: elsewhere.csv").wait_for(timeout=60_000)
            table.wait_for(timeout=60_000)
            assert page.locator('[data-testid="stException"]').count() == 0
            page.screenshot(path=str(artifacts_dir / "results-uploads-kept.png"), full_page=True)
        finally:
            page.close()
