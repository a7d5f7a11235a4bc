"""The whole teaching story in one browser session, as a person would click through it.

Demo data -> Leakage audit (the leaky split leaks) -> Fix the split (the re-split keeping sizes; the
fixed files audit clean) -> Training (a quick demo-preset CPU run, followed live) -> Results (the new model's AUROC
table and ROC curves) -> GradCAM explorer (one image's heatmaps). Debian's chromium, headless,
against `streamlit run Home.py`; a full-page screenshot per step in test-artifacts/story/.
"""
from __future__ import annotations

import io
import re
import time
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import expect

from cxrcore.train.trainconfig import PRESETS

from tests.app_support import StreamlitServer, headless_chromium

#: Small enough to render in a few seconds, big enough that every split has positives of most classes.
DEMO_IMAGES, DEMO_SIZE = 240, 128
#: Epochs of the quick run (the demo preset's 6 would take several times longer on a loaded CI machine).
QUICK_EPOCHS = 2
TRAINING_TIMEOUT_MS = 150_000


@pytest.fixture(scope="module")
def story_roots(tmp_path_factory) -> dict[str, Path]:
    """Fresh data, models, runs and cache roots: the demo dataset only, no model yet."""
    from cxrcore.demo import DemoConfig, generate_demo_dataset

    base = tmp_path_factory.mktemp("story")
    roots = {name: base / name for name in ("data", "models", "runs", "cache")}
    for folder in roots.values():
        folder.mkdir()
    generate_demo_dataset(roots["data"] / "demo", DemoConfig(images=DEMO_IMAGES, size=DEMO_SIZE, seed=0), workers=2)
    return roots


@pytest.fixture(scope="module")
def story_server(story_roots, artifacts_dir):
    env = {"CXR_MODELS_ROOT": str(story_roots["models"]), "CXR_RUNS_ROOT": str(story_roots["runs"]),
           "CXR_CACHE_ROOT": str(story_roots["cache"]), "CUDA_VISIBLE_DEVICES": "-1"}
    with StreamlitServer(story_roots["data"], artifacts_dir / "streamlit-story.log", extra_env=env) as app:
        yield app


@pytest.fixture(scope="module")
def story_page(artifacts_dir):
    """One headless chromium page (one Streamlit session) for the whole story."""
    with headless_chromium() as browser:
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        yield context.new_page()
        context.close()


class Story:
    """The steps' shared moves: wait for the app, go to a page, screenshot, check for exceptions."""

    def __init__(self, page, folder: Path) -> None:
        self.page, self.folder = page, folder
        self.step = 0
        self.clock = time.monotonic()
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()

    def settle(self, timeout_ms: int = 60_000) -> None:
        """Wait until the script is not running and nothing is loading (no 'Running...', no skeleton, no
        stale element). The short pause first lets a rerun that a click just asked for begin."""
        self.page.wait_for_timeout(300)
        self.page.wait_for_function(
            """() => {
                const app = document.querySelector('[data-testid="stApp"]');
                return app && app.getAttribute('data-test-script-state') === 'notRunning'
                    && document.querySelectorAll('[data-testid="stSkeleton"]').length === 0
                    && document.querySelector('[data-testid="stStatusWidget"]') === null
                    && document.querySelectorAll('[data-stale="true"]').length === 0;
            }""", timeout=timeout_ms)
        self.page.wait_for_timeout(300)

    def see(self, text: str | re.Pattern, timeout_ms: int = 60_000):
        """The first visible element with this text, once it is there."""
        locator = self.page.get_by_text(text).filter(visible=True).first
        locator.wait_for(state="visible", timeout=timeout_ms)
        return locator

    def open(self, link: str, title: str) -> None:
        """Follow a sidebar navigation link (same session: choices carry over) and wait for the page."""
        self.page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=link, exact=True).click()
        self.page.locator("h1", has_text=title).first.wait_for(timeout=60_000)
        self.settle()

    def no_exception(self) -> None:
        exceptions = self.page.locator('[data-testid="stException"]')
        assert exceptions.count() == 0, exceptions.first.inner_text()

    def shot(self, name: str, *, check: bool = True) -> Path:
        """Full-page screenshot NN-name.png (after checking for exceptions). Streamlit scrolls inside its
        main container, not the document, so the viewport is stretched to the container's height."""
        if check:
            self.no_exception()
        self.step += 1
        path = self.folder / f"{self.step:02d}-{name}.png"
        size = self.page.viewport_size
        height = self.page.evaluate(
            "() => Math.max(...['stMain', 'stSidebar'].map(id => "
            "document.querySelector(`[data-testid=\"${id}\"]`)?.scrollHeight || 0))")
        self.page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(height, 12_000))})
        self.page.wait_for_timeout(300)
        self.page.screenshot(path=str(path), full_page=True)
        self.page.set_viewport_size(size)
        now = time.monotonic()
        print(f"{path.name}: {now - self.clock:.1f} s")  # shown with the failure report, or with -s
        self.clock = now
        return path

    def choose(self, label: str, option: "str | re.Pattern") -> None:
        """Pick `option` in the selectbox or multiselect labelled `label`."""
        self.page.get_by_label(label, exact=True).first.click()
        self.page.get_by_role("option", name=option, exact=True).first.click()
        self.page.keyboard.press("Escape")  # a multiselect keeps its list open
        self.settle()


def test_the_teaching_story_from_demo_data_to_heatmaps(story_server, story_page, artifacts_dir, tmp_path):
    story = Story(story_page, artifacts_dir / "story")
    try:
        story.page.goto(story_server.url, wait_until="domcontentloaded")
        story.page.locator("h1", has_text="CXR Dashboard").first.wait_for(timeout=60_000)
        story.settle()
        story.shot("home")
        see_the_leak(story)
        fix_the_split(story, tmp_path / "fixed")
        run_id = train_a_quick_model(story)
        evaluate_the_model(story, f"run {run_id}")
        open_heatmaps(story)
    except BaseException:
        story.shot("failure", check=False)
        raise


def see_the_leak(story: Story) -> None:
    """Leakage audit: the default splits are clean; adding the leaky validation split leaks patients."""
    story.open("Leakage audit", "Leakage audit")
    story.see("Clean: no patient or image is shared between splits.")
    story.choose("Splits", "valid_leaky")
    story.see(re.compile(r"Leaking: \d+ patient\(s\) with \d+ image\(s\) appear in more than one split"))
    story.see("Leaked patients")
    story.shot("audit-leaking")


def fix_the_split(story: Story, folder: Path) -> None:
    """Fix the split: the fewest-moves repair would drain valid_leaky, so the page proposes the re-split that
    keeps every split's name and size; download it, upload it for a new audit: clean."""
    page = story.page
    story.see("Fix the split")
    page.get_by_role("tab", name="Repair with the fewest moves").click()
    story.see(re.compile(r"The fewest-moves repair would drain a split: valid_leaky would keep \d+ of its \d+ images"))
    story.see(re.compile(r"Split \d+ images of \d+ patients into train .*valid_leaky .*; no patient is in two splits"))
    with page.expect_download(timeout=30_000) as download:
        page.get_by_role("button", name="Download the fixed split files (zip)").first.click()
    assert download.value.suggested_filename == "resplit_same_sizes.zip"
    with zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes())) as archive:
        archive.extractall(folder)
    story.shot("fix-resplit")
    # every split keeps its name (and about its size)
    files = sorted(p.name for p in folder.glob("*.csv"))
    assert files == ["test.csv", "train.csv", "valid.csv", "valid_leaky.csv"], files
    page.get_by_text("Upload split files", exact=True).click()
    story.settle()
    page.locator('input[type="file"]').set_input_files([str(folder / name) for name in files])
    story.see("Clean: no patient or image is shared between splits.")
    story.see("Nothing to repair: no patient is in two of these splits.")
    story.shot("fix-audited-clean")


def train_a_quick_model(story: Story) -> str:
    """Training: the demo preset with fewer epochs, started from the settings form, followed live; the run id."""
    page = story.page
    story.open("Training", "Training")
    # offline without ImageNet weights (as tests run), demo is the suggested preset: its label says so
    story.choose("Preset", re.compile(r"^demo( \(suggested for this machine\))?$"))
    epochs = page.get_by_label("Epochs", exact=True)
    expect(epochs).to_have_count(1, timeout=60_000)  # the previous preset's settings are gone
    expect(epochs).to_have_value(str(PRESETS["demo"]["epochs"]), timeout=60_000)
    epochs.fill(str(QUICK_EPOCHS))
    epochs.press("Enter")
    story.settle()
    story.shot("training-settings")
    page.get_by_role("button", name="Start training").click()
    started = story.see(re.compile(r"Started run \d{8}-\d{6}-")).inner_text()
    run_id = re.search(r"Started run (\S+)", started).group(1)
    story.see(re.compile(r"^(running|finished)$"), timeout_ms=TRAINING_TIMEOUT_MS)
    story.see(re.compile(rf"epoch \d/{QUICK_EPOCHS}"))
    story.shot("training-live")
    story.see(re.compile(r"^finished$"), timeout_ms=TRAINING_TIMEOUT_MS)
    story.see(f"{QUICK_EPOCHS}/{QUICK_EPOCHS}")
    story.settle()
    story.shot("training-finished")
    return run_id


def evaluate_the_model(story: Story, model: str) -> None:
    """Results: the new model, active in the sidebar, predicts the test split; its AUROC table and ROC curves."""
    page = story.page
    story.open("Results", "Results")
    page.locator('[data-testid="stSidebar"]').get_by_text(model).first.wait_for(timeout=30_000)
    table = page.locator('[data-testid="stDataFrame"]', has_text=f"{model}: AUROC [95% CI]")
    table.wait_for(timeout=120_000)
    assert table.locator('[role="gridcell"]', has_text="Mean AUROC").count() == 1
    assert table.locator('[role="gridcell"]', has_text="Cardiomegaly").count() == 1
    story.see("ROC and precision-recall curves")
    roc = page.locator('[data-testid="stPlotlyChart"]', has_text="ROC curves of every class")
    roc.wait_for(timeout=60_000)
    assert roc.locator("text", has_text="Cardiomegaly").count() >= 1  # one small ROC plot per class
    story.settle()
    story.shot("results")


def open_heatmaps(story: Story) -> None:
    """GradCAM explorer: open the second image of the grid; its heatmaps (one overlay per class) appear."""
    page = story.page
    story.open("GradCAM explorer", "GradCAM explorer")
    grid = page.locator('[data-testid="stExpander"]', has_text="sorted by the probability of")
    second = grid.locator('[data-testid="stImageCaption"]').nth(1)
    second.wait_for(timeout=120_000)
    name = second.inner_text().split(" · ")[0]
    grid.get_by_role("button", name="Open").nth(1).click()
    story.see(re.compile(rf"^{re.escape(name)} · true: "), timeout_ms=60_000)
    story.settle()
    overlays = page.locator('[data-testid="stImage"]', has=page.get_by_text(re.compile(r" · p=\d\.\d\d( · true)?$")))
    assert overlays.count() >= 1
    assert overlays.first.locator("img").evaluate("img => img.complete && img.naturalWidth > 0")
    story.see("maps normalized per class")
    story.shot("gradcam-heatmaps")
