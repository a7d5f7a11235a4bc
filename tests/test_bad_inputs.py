"""Every case of the bad-input corpus (tests/bad_inputs.py) through the CLI, the pages and a live server.

CLI: exit 2 with exactly one `error:` line on stderr (captured at the file-descriptor level, so lines
C libraries print count too) for rejected inputs, the right result for accepted ones, and nothing
written anywhere but the output folder (the case folder, the shared good inputs and the working
folder are snapshotted before and after). A few cases also run as real `python -m cxrcore` processes.
Pages: the same files uploaded (Home, Results, GradCAM) or put under models/ show one st.error and the
page keeps working. Server: a live `streamlit run` fed bad datasets, models and uploads stays healthy.
What each case did is written to test-artifacts/bad_inputs.json (docs/reliability.md is made from it).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from cxrcore.cli import main
from cxrcore.data.labels import LABELS
from tests.bad_inputs import (ACCEPTED, BY_ID, CAM_UPLOAD, CASES, HOME_UPLOAD, MODELS_ROOT, REJECTED,
                              RESULTS_UPLOAD, Case, Outcome, World, make_world, page_cases, png_claiming)

ROOT = Path(__file__).resolve().parent.parent
#: What each case did, by id: {"cli": ..., "page": ...}; written to test-artifacts/bad_inputs.json.
OBSERVED: dict[str, dict[str, str]] = {}
LABEL_SET = set(LABELS)
_HIDDEN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


#: pytest's temporary folder, replaced by <tmp> in what is recorded for the doc.
_BASE: list[Path] = []


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    _BASE[:] = [tmp_path_factory.getbasetemp()]
    return make_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module", autouse=True)
def record_observations(artifacts_dir) -> Iterator[None]:
    yield
    path = artifacts_dir / "bad_inputs.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    for case_id, seen in OBSERVED.items():
        old.setdefault(case_id, {}).update(seen)
    path.write_text(json.dumps(old, indent=1, sort_keys=True) + "\n")


def observe(case_id: str, where: str, text: str) -> None:
    for base in _BASE:
        text = re.sub(re.escape(str(base)) + r"/[^/\s]+", "<tmp>", text)
    OBSERVED.setdefault(case_id, {})[where] = text


# ---------------------------------------------------------------------------------------------
# CLI, in process


def snapshot(*roots: Path, skip: Path) -> dict[str, tuple[int, ...]]:
    """Every entry under roots (links not followed) with its type, and size and mtime for non-folders."""
    seen: dict[str, tuple[int, ...]] = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if Path(folder, d) != skip]
            for name in dirs + files:
                info = os.lstat(os.path.join(folder, name))
                is_dir = os.path.isdir(os.path.join(folder, name)) and name in dirs
                seen[os.path.join(folder, name)] = (info.st_mode,) if is_dir else \
                    (info.st_mode, info.st_size, info.st_mtime_ns)
    return seen


@contextmanager
def decoders_forbidden(active: bool) -> Iterator[None]:
    """Fail the test if a pixel decoder (OpenCV's, or cxrcore's fast PNG path) is handed a file whose header
    claims more than the pixel limit: decompression bombs must be refused from the header alone."""
    if not active:
        yield
        return
    import cv2

    from cxrcore.data import images

    def guarded(decode):
        def decode_unless_bomb(data, *args, **kwargs):
            try:
                width, height = images.image_size(bytes(data))
            except Exception:  # not a PNG/JPEG header: not a bomb
                width = height = 0
            assert width * height <= images.DEFAULT_MAX_PIXELS, f"a {width}x{height} file reached the decoder"
            return decode(data, *args, **kwargs)
        return decode_unless_bomb

    patched = [(cv2, "imdecode")] + ([(images, "decode_png_fast")] if hasattr(images, "decode_png_fast") else [])
    originals = [getattr(module, name) for module, name in patched]
    for (module, name), original in zip(patched, originals):
        setattr(module, name, guarded(original))
    try:
        yield
    finally:
        for (module, name), original in zip(patched, originals):
            setattr(module, name, original)


def run_in_process(case: Case, folder: Path, world: World, capfd, monkeypatch) -> tuple[Outcome, list[str], Path]:
    """Build the case under folder/in, run its CLI command with folder/cwd as the working folder; returns what
    happened, the arguments and the input handed over."""
    inputs, out, cwd = folder / "in", folder / "out", folder / "cwd"
    inputs.mkdir(parents=True)
    cwd.mkdir()
    target = case.build(inputs, world)
    argv = case.argv(target, out, world)
    capfd.readouterr()
    before = snapshot(folder, world.root, skip=out)
    monkeypatch.chdir(cwd)
    with warnings.catch_warnings(record=True) as caught, decoders_forbidden(case.no_decoding):
        warnings.simplefilter("always")
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse usage errors
            code = int(exit_.code or 0)
    captured = capfd.readouterr()
    # Python prints these on stderr in a real run (pytest records them instead)
    shown = [f"{w.category.__name__}: {w.message}\n" for w in caught if not issubclass(w.category, _HIDDEN_WARNINGS)]
    stderr = captured.err + "".join(shown)
    after = snapshot(folder, world.root, skip=out)
    changed = sorted(set(before.items()) ^ set(after.items()))
    assert not changed, f"written outside the output folder: {changed}"
    assert list(cwd.iterdir()) == [], "written into the working folder"
    return Outcome(code, captured.out, stderr, inputs, out, world), argv, target


def short(text: str, *folders: Path) -> str:
    """A message with the test's temporary folders replaced by short names (for the doc)."""
    for folder, name in zip(folders, ("<in>", "<out>", "<world>")):
        text = text.replace(str(folder), name)
    return text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli(case: Case, world: World, tmp_path, capfd, monkeypatch):
    run, argv, target = run_in_process(case, tmp_path, world, capfd, monkeypatch)
    assert "Traceback" not in run.stderr, run.stderr
    assert run.code == case.exit, (run.code, run.stderr)
    if case.outcome == REJECTED:
        lines = run.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
        assert re.search(case.reason, lines[0]), lines[0]
        assert target.stem in lines[0], f"the message does not name the input {target.name}"
        assert run.stdout == ""
        observe(case.id, "cli", short(f"exit {run.code}: {lines[0]}", run.inputs, run.out, world.root))
    else:
        warned = [line for line in run.stderr.splitlines() if line.startswith("warning: ")]
        assert len(warned) == len(run.stderr.splitlines()), run.stderr
        result = (case.check.__doc__ or "correct result").strip().splitlines()[0].rstrip(".") if case.check else ""
        observe(case.id, "cli", f"exit {run.code}: {result[:1].lower()}{result[1:]}")
    observe(case.id, "command", " ".join(["python -m cxrcore", *[short(a, run.inputs, run.out, world.root)
                                                                  for a in argv]]))
    if case.check:
        case.check(run)


def test_the_corpus_covers_the_issue():
    """At least 45 cases, every kind, and the valid-but-unusual inputs are accepted, not refused."""
    assert len(CASES) >= 45
    kinds = {c.kind for c in CASES}
    assert kinds == {"csv", "image", "model", "predictions", "json", "output"}
    accepted = {c.id for c in CASES if c.outcome == ACCEPTED}
    assert {"csv_bom", "csv_extra_columns", "image_16bit", "image_rgba", "csv_million_rows"} <= accepted


def test_the_lambda_marker_fires_when_safe_mode_is_off(tmp_path):
    """Control for the Lambda cases: the marker file does appear when Keras is allowed to run the code,
    so its absence in those cases means the code never ran."""
    import keras

    from tests.bad_inputs import lambda_model

    model = lambda_model(tmp_path)
    model.save(tmp_path / "risky.keras")
    assert not (tmp_path / "LAMBDA_RAN").exists()
    keras.saving.load_model(tmp_path / "risky.keras", safe_mode=False)
    assert (tmp_path / "LAMBDA_RAN").exists()


# ---------------------------------------------------------------------------------------------
# CLI, real processes


def _user_env() -> dict[str, str]:
    """The environment of someone running the CLI: no test-only TensorFlow quieting."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
    return {**env, "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize("case_id", ["csv_latin1", "image_damaged_idat", "model_lambda_keras", "pred_nan"])
def test_real_process_prints_one_line(case_id: str, world: World, tmp_path):
    case = BY_ID[case_id]
    inputs, out, cwd = tmp_path / "in", tmp_path / "out", tmp_path / "cwd"
    inputs.mkdir()
    cwd.mkdir()
    argv = case.argv(case.build(inputs, world), out, world)
    result = subprocess.run([sys.executable, "-m", "cxrcore", *argv], cwd=cwd, env=_user_env(),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(case.reason, lines[0]), lines[0]
    assert list(cwd.iterdir()) == [] and not out.exists()
    if case.check:
        case.check(Outcome(result.returncode, result.stdout, result.stderr, inputs, out, world))


# ---------------------------------------------------------------------------------------------
# Pages (AppTest): the same files through the uploaders and the models folder


def open_page(monkeypatch, page: str, *, data: Path, models: Path, runs: Path, cache: Path,
              state: dict | None = None):
    from tests.app_support import open_app_page

    return open_app_page(monkeypatch, page, state=state, data=data, models=models, runs=runs, cache=cache)


def built(case: Case, folder: Path, world: World) -> Path:
    folder.mkdir(parents=True)
    return case.build(folder, world)


def expect_page_error(at, case: Case, surface: str) -> None:
    """Rejected: the page shows exactly one st.error matching the case's reason, no exception block."""
    assert not at.exception, [e.value for e in at.exception]
    shown = [e.value for e in at.error]
    assert len(shown) == 1 and re.search(case.reason, shown[0]), (case.id, shown)
    observe(case.id, "page", f"{surface}: st.error \"{shown[0]}\"")


def overlay_captions(at) -> list[str]:
    return [c for image in at.image for c in image.captions if " · p=" in c and c.split(" · ")[0] in LABEL_SET]


def test_home_upload_shows_one_error_per_bad_csv_then_loads_a_good_one(world, tmp_path, monkeypatch):
    at = open_page(monkeypatch, "pages/home.py", data=tmp_path / "no-data", models=tmp_path / "no-models",
                   runs=tmp_path / "runs", cache=tmp_path / "cache")
    uploader = "home_uploads"
    for case in page_cases(HOME_UPLOAD):
        file = built(case, tmp_path / case.id, world)
        at.file_uploader(key=uploader).set_value([(file.name, file.read_bytes(), "text/csv")]).run()
        if case.outcome == REJECTED:
            expect_page_error(at, case, HOME_UPLOAD)
        else:
            assert not at.exception and not at.error, [e.value for e in at.error]
            loaded = [s.value for s in at.success if s.value.startswith("Loaded 1 split(s)")]
            assert loaded, [s.value for s in at.success]
            observe(case.id, "page", f"{HOME_UPLOAD}: loaded (\"{loaded[0]}\")")
    good = world.dataset / "train.csv"
    at.file_uploader(key=uploader).set_value([(good.name, good.read_bytes(), "text/csv")]).run()
    assert not at.error and any(s.value == "Loaded 1 split(s): train (train)." for s in at.success)
    next(b for b in at.button if b.label == "Work on the uploaded files").click().run()
    assert not at.exception and at.sidebar.selectbox[0].value == "Uploaded files"


def test_results_upload_shows_one_error_per_bad_prediction_file_then_evaluates_a_good_one(world, tmp_path,
                                                                                          monkeypatch):
    at = open_page(monkeypatch, "pages/results.py", data=world.data, models=tmp_path / "no-models",
                   runs=tmp_path / "runs", cache=tmp_path / "cache", state={"results_bootstrap": 20})
    assert at.selectbox(key="results_split").value == "test"
    for case in page_cases(RESULTS_UPLOAD):
        file = built(case, tmp_path / case.id, world)
        at.file_uploader(key="results_uploads").set_value([(file.name, file.read_bytes(), "text/csv")]).run()
        if case.outcome == REJECTED:
            expect_page_error(at, case, RESULTS_UPLOAD)
        else:
            assert not at.exception and not at.error, [e.value for e in at.error]
            summary = next(d.value for d in at.dataframe if "mean AUROC" in d.value.columns)
            assert list(summary["images"]) == [6]
            observe(case.id, "page", f"{RESULTS_UPLOAD}: evaluated (6 images)")
    at.file_uploader(key="results_uploads").set_value(
        [("good.csv", world.predictions.read_bytes(), "text/csv")]).run()
    assert not at.exception and not at.error
    summary = next(d.value for d in at.dataframe if "mean AUROC" in d.value.columns)
    assert list(summary["model"]) == ["good"] and list(summary["images"]) == [6]


def test_gradcam_upload_shows_one_error_per_bad_image_then_explains_a_good_one(world, tmp_path, monkeypatch):
    at = open_page(monkeypatch, "pages/gradcam_explorer.py", data=world.data, models=world.model.parent,
                   runs=tmp_path / "runs", cache=tmp_path / "cache")
    at.segmented_control(key="cam_source").set_value("Upload an image").run()
    for case in page_cases(CAM_UPLOAD):
        file = built(case, tmp_path / case.id, world)
        with decoders_forbidden(case.no_decoding):
            at.file_uploader(key="cam_upload").set_value((file.name, file.read_bytes(), "image/png")).run()
        if case.outcome == REJECTED:
            expect_page_error(at, case, CAM_UPLOAD)
        else:
            assert not at.exception and not at.error, [e.value for e in at.error]
            assert len(overlay_captions(at)) == 4
            observe(case.id, "page", f"{CAM_UPLOAD}: 4 class maps drawn")
    at.file_uploader(key="cam_upload").set_value(("good.png", world.gray.read_bytes(), "image/png")).run()
    assert not at.exception and not at.error and len(overlay_captions(at)) == 4


def test_bad_model_files_under_models_show_an_error_and_a_good_model_still_works(world, tmp_path, monkeypatch):
    """Each bad model file alone under models/, a good model as a training run: the bad one, when it can
    be chosen at all, shows one st.error (its code never runs); choosing the good one draws the maps."""
    runs = tmp_path / "runs"
    (runs / "good").mkdir(parents=True)
    shutil.copy(world.model, runs / "good" / "best.keras")
    shutil.copy(world.model.with_suffix(".json"), runs / "good" / "best.json")
    at = open_page(monkeypatch, "pages/gradcam_explorer.py", data=world.data, models=tmp_path / "no-models",
                   runs=runs, cache=tmp_path / "cache")
    for case in page_cases(MODELS_ROOT):
        folder = tmp_path / case.id  # a new models root per case: model discovery is cached per root
        built(case, folder, world)
        monkeypatch.setenv("CXR_MODELS_ROOT", str(folder))
        at.run()
        picker = at.sidebar.multiselect(key="active_models")
        if "bad" in picker.options:
            picker.set_value(["bad"]).run()
            expect_page_error(at, case, "GradCAM page, model under models/")
        else:
            assert not at.exception and not at.error, [e.value for e in at.error]
            note = next(c.value for c in at.sidebar.caption if "cannot be used" in c.value)
            observe(case.id, "page", f"models/: not offered (sidebar: \"{note}\")")
        if case.check:
            case.check(Outcome(0, "", "", folder, folder, world))
    at.sidebar.multiselect(key="active_models").set_value(["run good"]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(overlay_captions(at)) == 4


def test_hostile_model_files_beside_good_ones_cost_only_themselves(world, tmp_path, monkeypatch):
    """models/ holding a good model beside a 100,000-deep sidecar, a deep config.json and a zip bomb (issue #21:
    one deep sidecar broke every page, as the sidebar reads every sidecar): each page still draws, the good
    model is offered and works, the sidebar counts the two unusable files, the bomb is refused when chosen."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(world.model, models / "good.keras")
    shutil.copy(world.model.with_suffix(".json"), models / "good.json")
    for case_id in ("json_deep_sidecar", "json_deep_keras_info", "model_zip_bomb"):
        folder = tmp_path / case_id
        model = built(BY_ID[case_id], folder, world)
        for path in (model, model.with_suffix(".json")):
            if path.exists():
                shutil.move(path, models / f"{case_id}{path.suffix}")
    at = open_page(monkeypatch, "pages/gradcam_explorer.py", data=world.data, models=models, runs=tmp_path / "runs",
                   cache=tmp_path / "cache")
    picker = at.sidebar.multiselect(key="active_models")
    assert "good" in picker.options and "json_deep_sidecar" not in picker.options, picker.options
    assert any(c.value.startswith("2 model file(s) cannot be used") for c in at.sidebar.caption)
    picker.set_value(["good"]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(overlay_captions(at)) == 4
    if "model_zip_bomb" in picker.options:  # its info is fine: refused when loaded, with the reason
        at.sidebar.multiselect(key="active_models").set_value(["model_zip_bomb"]).run()
        assert not at.exception and any("decompression bomb" in e.value for e in at.error)
    for page in ("pages/home.py", "pages/results.py", "pages/training.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])


# ---------------------------------------------------------------------------------------------
# A live server fed bad datasets, models and uploads


def bad_roots(world: World, root: Path) -> dict[str, Path]:
    """Data root: the good dataset with a bomb and a truncated image, then a Latin-1 one and one naming
    ../../etc/passwd; models root: a Lambda model (chosen first), a truncated .h5, a text file, with info JSONs."""
    data, models = root / "data", root / "models"
    shutil.copytree(world.dataset, data / "mini")
    images = sorted((data / "mini" / "images").iterdir())
    images[0].write_bytes(png_claiming(30000, 30000))
    images[1].write_bytes(images[1].read_bytes()[:100])
    for name, case_id in (("x_latin1", "csv_latin1"), ("y_dotdot", "csv_dotdot_name")):
        (data / name).mkdir()
        BY_ID[case_id].build(data / name, world).rename(data / name / "train.csv")
    models.mkdir()
    for case_id in ("model_lambda_keras", "model_truncated_h5", "model_text_file"):
        folder = root / case_id
        folder.mkdir()
        model = BY_ID[case_id].build(folder, world)
        for path in (model, model.with_suffix(".json")):
            shutil.move(path, models / f"{case_id}{path.suffix}")
    return {"data": data, "models": models, "runs": root / "runs", "cache": root / "cache"}


def healthy(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=10) as response:
        return response.status == 200 and response.read().strip() == b"ok"


def test_a_live_server_fed_bad_inputs_stays_up(world, tmp_path, artifacts_dir):
    from tests.app_support import StreamlitServer, headless_chromium
    from tests.test_browser import wait_until_idle

    roots = bad_roots(world, tmp_path)
    server = StreamlitServer(roots["data"], artifacts_dir / "streamlit-bad-inputs.log",
                             extra_env={"CXR_MODELS_ROOT": str(roots["models"]), "CXR_RUNS_ROOT": str(roots["runs"]),
                                        "CXR_CACHE_ROOT": str(roots["cache"])})
    try:
        server.wait()
        with headless_chromium() as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            alerts = page.locator('[data-testid="stAlertContentError"]')
            # the good dataset, whose image folder holds a bomb and a truncated PNG: the grid still renders
            page.goto(f"{server.url}/dataset_explorer", wait_until="domcontentloaded")
            wait_until_idle(page)
            assert page.locator('[data-testid="stException"]').count() == 0
            # the Lambda model is the active model: refused, never run
            page.goto(f"{server.url}/gradcam_explorer", wait_until="domcontentloaded")
            wait_until_idle(page, timeout_ms=180_000)
            alerts.filter(has_text="Lambda layer").first.wait_for(timeout=180_000)
            assert not list(tmp_path.rglob("LAMBDA_RAN"))
            # choosing the Latin-1 dataset in the sidebar: one error, the page still renders
            page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
            page.get_by_role("option", name="x_latin1").click()
            alerts.filter(has_text="is not UTF-8 text").first.wait_for(timeout=60_000)
            observe("csv_latin1", "server", "live server, as a dataset folder: st.error, server healthy")
            observe("model_lambda_keras", "server", "live server, under models/: st.error, marker absent, healthy")
            # bad uploads on Home
            page.goto(server.url, wait_until="domcontentloaded")
            wait_until_idle(page)
            page.get_by_text("Use your own split files (upload)").click()
            for case_id, text in (("csv_semicolons", "separated by semicolons"),
                                  ("csv_dotdot_name", "not a plain file name")):
                file = built(BY_ID[case_id], tmp_path / "uploads" / case_id, world)
                page.locator('input[type="file"]').set_input_files(str(file))
                alerts.filter(has_text=text).first.wait_for(timeout=60_000)
                observe(case_id, "server", "live server, uploaded on Home: st.error, server healthy")
            assert healthy(server.url)
            page.goto(f"{server.url}/leakage_audit", wait_until="domcontentloaded")
            wait_until_idle(page)
            assert page.locator("h1", has_text="Leakage audit").first.is_visible()
            assert page.locator('[data-testid="stException"]').count() == 0
            page.screenshot(path=str(artifacts_dir / "bad-inputs-server.png"), full_page=True)
        assert server.process.poll() is None and healthy(server.url)
    finally:
        server.stop()


def test_the_reliability_doc_lists_every_case():
    """docs/reliability.md is made from this corpus: every case has its row (python -m tests.bad_inputs)."""
    doc = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    missing = [case.id for case in CASES if f"| `{case.id}` |" not in doc]
    assert not missing, f"add these cases to docs/reliability.md: {missing}"
    assert "## Faults" in doc and "## Security" in doc
