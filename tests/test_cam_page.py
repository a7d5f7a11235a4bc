"""GradCAM explorer through AppTest: a tiny saved model on a copy of the fixture dataset with boxes."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from cxrcore.data.boxes import write_boxes
from cxrcore.data.dataset import load_split
from tests.app_support import open_app_page

PAGE = "pages/gradcam_explorer.py"


@pytest.fixture(scope="module")
def world(app_data_root, tmp_path_factory):
    """A copy of 'mini' with a bbox.csv (NIH format) for two test images, and a tiny small_cnn model."""
    from cxrcore.data.pipeline import Normalization
    from cxrcore.train.model import ModelInfo, build_model, save_model

    root = tmp_path_factory.mktemp("cam-page")
    data = root / "data"
    shutil.copytree(app_data_root / "mini", data / "mini")
    test = load_split(data / "mini" / "test.csv")
    boxed = [str(n) for n in test.images[:2]]
    write_boxes(pd.DataFrame({"Image": boxed, "Label": ["Mass", "Cardiomegaly"], "x": [10.0, 20.0],
                              "y": [12.0, 30.0], "w": [16.0, 30.0], "h": [14.0, 20.0]}), data / "mini" / "bbox.csv")
    models = root / "models"
    info = ModelInfo(input_size=32, normalization=Normalization.sample(), name="tiny", backbone="small_cnn")
    save_model(build_model(input_size=32, backbone="small_cnn"), info, models / "tiny.keras")
    return {"data": data, "models": models, "runs": root / "runs", "cache": root / "cache", "boxed": boxed,
            "test": test}


def open_page(monkeypatch, world, models: Path | None = None) -> AppTest:
    return open_app_page(monkeypatch, PAGE, timeout=120, data=world["data"], models=models or world["models"],
                         runs=world["runs"], cache=world["cache"])


def captions(at: AppTest) -> list[str]:
    return [c for image in at.image for c in image.captions]


def overlays(at: AppTest) -> list[str]:
    """Captions of the overlay panels (class · p=...)."""
    return [c for c in captions(at) if " · p=" in c and c.split(" · ")[0] in
            ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
             "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax")]


@pytest.fixture
def page(world, monkeypatch) -> AppTest:
    return open_page(monkeypatch, world)


def test_page_renders_thumbnails_and_four_overlays_of_the_best_auroc_classes(page, world):
    at = page
    assert at.title[0].value == "GradCAM explorer"
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="cam_split").value == "test"
    names = [str(n) for n in world["test"].images]
    thumbs = [c for c in captions(at) if c.split(" · ")[0] in names and "p=" in c]
    assert len(thumbs) == min(12, len(names))
    shown = overlays(at)
    assert len(shown) == 4
    aurocs = next(c.value for c in at.caption if c.value.startswith("AUROC on this split"))
    assert [s.split(" · ")[0] for s in shown] == [part.strip().split(" ")[0]
                                                   for part in aurocs.split(":", 1)[1].split("(")[0].split("·")]
    assert len(at.get("plotly_chart")) == 1
    assert len(at.download_button) == 1
    # sorted by confidence: the thumbnails' probabilities never increase
    probs = [float(c.split("p=")[1].split(" ")[0]) for c in thumbs]
    assert probs == sorted(probs, reverse=True)


def test_choosing_an_image_and_next_previous(page, world):
    at = page
    options = at.selectbox(key="cam_image").options
    assert len(options) >= 3
    target = at.selectbox(key="cam_image").options[2].split(" · ")[0]
    at.selectbox(key="cam_image").set_value(target).run()
    assert not at.exception
    assert any(c.startswith(f"{target} · true:") for c in captions(at))
    at.button(key="cam_next").click().run()
    assert not at.exception
    after = at.selectbox(key="cam_image").value
    assert after != target and any(c.startswith(f"{after} · true:") for c in captions(at))
    at.button(key="cam_prev").click().run()
    assert at.selectbox(key="cam_image").value == target
    first = at.selectbox(key="cam_image").options[0].split(" · ")[0]
    at.button(key=f"cam_open_{first}").click().run()
    assert at.selectbox(key="cam_image").value == first


def test_filters_for_a_class(page, world):
    at = page
    at.selectbox(key="cam_filter_class").set_value("Mass").run()
    at.selectbox(key="cam_filter").set_value("true label").run()
    assert not at.exception
    test = world["test"]
    positives = int(test.frame["Mass"].sum())
    if positives:
        assert len(at.selectbox(key="cam_image").options) == positives
    at.slider(key="cam_threshold").set_value(1.0).run()
    at.selectbox(key="cam_filter").set_value("false positives").run()
    assert any("No image of this split matches" in i.value for i in at.info)
    assert not at.exception


def test_method_switch_to_gradcam_and_another_layer(page):
    at = page
    at.segmented_control(key="cam_method").set_value("gradcam").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    layer = at.selectbox(key="cam_layer")
    assert layer.value == "features" and "block3_conv (8x8x64)" in layer.options
    assert len(overlays(at)) == 4
    layer.set_value("block3_conv").run()
    assert not at.exception
    assert any("on layer `block3_conv`" in c.value for c in at.caption)
    at.segmented_control(key="cam_method").set_value("gradcam++").run()
    assert not at.exception and len(overlays(at)) == 4
    at.segmented_control(key="cam_show").set_value("chosen").run()
    at.multiselect(key="cam_classes").set_value(["Nodule", "Edema"]).run()
    assert not at.exception
    assert [c.split(" · ")[0] for c in overlays(at)] == ["Nodule", "Edema"]


def test_boxes_are_scored_for_the_boxed_class(page, world):
    at = page
    name = world["boxed"][0]
    at.selectbox(key="cam_image").set_value(name).run()
    at.segmented_control(key="cam_show").set_value("chosen").run()
    at.multiselect(key="cam_classes").set_value(["Mass"]).run()
    assert not at.exception
    scores = next(d.value for d in at.dataframe if "pointing" in d.value.columns)
    assert list(scores["class"]) == ["Mass"] and scores["pointing"].iloc[0] in ("hit", "miss")
    assert 0 < scores["baseline"].iloc[0] < 1
    at.button(key="cam_faith_run").click().run()
    assert not at.exception
    faith = next(d.value for d in at.dataframe if "drop salient" in d.value.columns)
    assert list(faith["fraction"]) == [0.05, 0.1, 0.2]
    at.button(key="cam_localize").click().run()
    assert not at.exception
    summary = next(d.value for d in at.dataframe if "IoBB>=0.1" in d.value.columns)
    assert set(summary["class"]) == {"Mass", "Cardiomegaly", "all"}


def _png(size: int = 80) -> bytes:
    img = np.zeros((size, size), np.uint8)
    cv2.circle(img, (size // 2, size // 2), size // 4, 255, -1)
    return cv2.imencode(".png", img)[1].tobytes()


def test_a_bad_upload_shows_an_error_and_the_page_keeps_working(page):
    at = page
    at.segmented_control(key="cam_source").set_value("Upload an image").run()
    assert not at.exception
    at.file_uploader(key="cam_upload").set_value(("scan.png", b"this is not an image", "image/png")).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "not a PNG, JPEG or DICOM" in errors[0], errors
    assert at.title[0].value == "GradCAM explorer"
    at.file_uploader(key="cam_upload").set_value(("mine.png", _png(), "image/png")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    shown = overlays(at)
    assert len(shown) == 4  # no split AUROC for an upload: the 4 top predicted classes
    probs = [float(c.split("p=")[1].split(" ")[0]) for c in shown]
    assert probs == sorted(probs, reverse=True)
    assert any(c == "mine.png · labels unknown" for c in captions(at))


def test_teaching_mode_explains_cam_and_gradcam(page):
    at = page
    at.session_state["teaching_mode"] = True
    at.run()
    assert not at.exception
    assert any("Teaching note: class activation maps" in e.label for e in at.expander)
    assert len(at.latex) == 2


def test_no_model_gives_guidance(world, monkeypatch, tmp_path):
    at = open_page(monkeypatch, world, models=tmp_path / "no-models")
    assert not at.error
    assert any("No model yet" in i.value for i in at.info)


# --------------------------------------------------------------------------------------------
# Gradient methods and two methods side by side
# --------------------------------------------------------------------------------------------

def test_smoothgrad_as_the_method_with_its_sliders(page):
    at = page
    at.segmented_control(key="cam_method").set_value("smoothgrad").run()
    at.slider(key="cam_samples").set_value(4).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(overlays(at)) == 4
    assert any("SmoothGrad (4 samples, noise 0.15) on the input pixels" in c.value for c in at.caption)
    assert at.selectbox(key="cam_layer_input").disabled
    at.segmented_control(key="cam_method").set_value("integrated-gradients").run()
    at.slider(key="cam_steps").set_value(8).run()
    assert not at.exception and len(overlays(at)) == 4
    assert any("Integrated Gradients (8 steps from a flat baseline) on the input pixels" in c.value
               for c in at.caption)


def test_compare_two_methods_side_by_side_with_agreement_faithfulness_and_pointing(page, world):
    at = page
    at.selectbox(key="cam_image").set_value(world["boxed"][0]).run()  # a Mass box on this image
    assert not [s for s in at.slider if s.key in ("cam_samples", "cam_noise", "cam_steps")]  # CAM: no such settings
    assert not any(c.startswith("SmoothGrad") for c in captions(at))
    at.toggle(key="cam_compare").set_value(True).run()
    at.slider(key="cam_samples").set_value(4).run()  # SmoothGrad is compared: its settings are there now
    assert not [s for s in at.slider if s.key == "cam_steps"]
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox(key="cam_compare_a").value == "cam"
    assert at.selectbox(key="cam_compare_b").value == "smoothgrad"
    assert at.selectbox(key="cam_compare_class").value == "Mass"  # the boxed class first
    side = [c for c in captions(at) if c.endswith(tuple(f"p={p / 100:.2f}" for p in range(101)))
            and " · Mass · " in c]
    assert [c.split(" · ")[0] for c in side] == ["CAM on layer `features`",
                                                 "SmoothGrad (4 samples, noise 0.15) on the input pixels"]
    metrics = {m.label: m.value for m in at.metric}
    rho = metrics["Spearman rank correlation"]
    assert rho == "n/a (a flat map)" or -1 <= float(rho) <= 1
    assert 0 <= float(metrics["Top 10% pixels overlap (IoU)"]) <= 1
    table = next(d.value for d in at.dataframe if "deletion AUC" in d.value.columns)
    assert list(table["method"]) == ["CAM", "SmoothGrad (4 samples, noise 0.15)"]
    assert set(table["pointing"]) <= {"hit", "miss"}
    for column in ("deletion AUC", "insertion AUC", "deletion AUC (random)", "insertion AUC (random)"):
        assert ((0 <= table[column]) & (table[column] <= 1)).all()
    assert len(at.get("plotly_chart")) == 2  # the probabilities and the curves
    # another pair: the agreement of a method with itself is perfect
    at.selectbox(key="cam_compare_b").set_value("cam").run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Top 10% pixels overlap (IoU)"] == "1.00"
    at.selectbox(key="cam_compare_a").set_value("integrated-gradients").run()
    at.selectbox(key="cam_compare_class").set_value(at.selectbox(key="cam_compare_class").options[-1]).run()
    assert not at.exception and not at.error
    table = next(d.value for d in at.dataframe if "deletion AUC" in d.value.columns)
    assert table["method"].iloc[0].startswith("Integrated Gradients")


def test_a_model_without_a_conv_feature_map_offers_only_the_gradient_methods(world, monkeypatch, tmp_path):
    import keras

    from cxrcore.data.pipeline import Normalization
    from cxrcore.train.model import ModelInfo, save_model

    inputs = keras.Input((32, 32, 3), name="image")
    logits = keras.layers.Dense(14, name="logits")(keras.layers.Flatten()(inputs))
    flat = keras.Model(inputs, keras.layers.Activation("sigmoid", name="predictions")(logits), name="flat")
    info = ModelInfo(input_size=32, normalization=Normalization.sample(), name="flat", backbone="flat")
    save_model(flat, info, tmp_path / "models" / "flat.keras")
    at = open_page(monkeypatch, world, models=tmp_path / "models")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert list(at.segmented_control(key="cam_method").options) == ["Gradient", "SmoothGrad", "Integrated Gradients"]
    assert at.segmented_control(key="cam_method").value == "gradient"
    assert any(c.value.startswith("CAM, Grad-CAM, Grad-CAM++: not offered for this model")
               and "GlobalAveragePooling2D" in c.value for c in at.caption)
    assert len(overlays(at)) == 4
    at.toggle(key="cam_compare").set_value(True).run()
    assert not at.exception and not at.error
    assert at.selectbox(key="cam_compare_b").value == "smoothgrad"
    assert at.selectbox(key="cam_compare_a").options == ["Gradient", "SmoothGrad", "Integrated Gradients"]


def test_compare_and_gradient_settings_survive_switching_to_upload_and_back(page):
    at = page
    at.toggle(key="cam_compare").set_value(True).run()
    at.slider(key="cam_samples").set_value(6).run()
    at.segmented_control(key="cam_source").set_value("Upload an image").run()  # no image yet: no comparison drawn
    assert not at.exception and not [t for t in at.toggle if t.key == "cam_compare"]
    at.segmented_control(key="cam_source").set_value("Browse a split").run()
    assert not at.exception
    assert at.toggle(key="cam_compare").value is True and at.slider(key="cam_samples").value == 6
