"""Boxes (NIH BBox_List_2017 format), box scores of maps, faithfulness, the pointing game on demo data, the cam CLI."""
from __future__ import annotations

import gzip
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import pytest

from cxrcore.data.boxes import boxes_for, read_boxes, scale_box, write_boxes
from cxrcore.data.labels import LABELS
from cxrcore.errors import DatasetError
from cxrcore.explain import localization as loc

NIH_TEXT = """Image Index,Finding Label,Bbox [x,y,w,h],,,
00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661
00014716_007.png,Infiltrate,686.101694915254,131.543498411017,185.491525423729,313.491525423729,,,
00014716_007.png,Mass,10,20,30,40
"""


# --------------------------------------------------------------------------------------------
# Box files
# --------------------------------------------------------------------------------------------

def test_reads_nihs_header_with_the_box_spread_over_four_columns(tmp_path):
    path = tmp_path / "BBox_List_2017.csv.gz"
    path.write_bytes(gzip.compress(NIH_TEXT.encode()))
    boxes = read_boxes(path)
    assert list(boxes.columns) == ["Image", "Label", "x", "y", "w", "h"]
    assert list(boxes["Label"]) == ["Atelectasis", "Infiltration", "Mass"]  # Infiltrate -> Infiltration
    assert boxes.loc[1, ["x", "y", "w", "h"]].tolist() == pytest.approx([686.1016949, 131.5434984, 185.4915254,
                                                                          313.4915254])
    assert len(boxes_for(boxes, "images/00014716_007.png")) == 2
    assert boxes_for(boxes, "nothing.png").empty and boxes_for(None, "x.png").empty


@pytest.mark.parametrize("text", [
    'Image Index,Finding Label,"Bbox [x,y,w,h]",,,\na.png,Mass,1,2,3,4\n',
    "Image,Label,x,y,w,h\na.png,Mass,1,2,3,4\n",
    "\ufeffImage Index,Finding Label,w,h,x,y\na.png,Mass,3,4,1,2\n",
])
def test_other_spellings_of_the_header(text):
    boxes = read_boxes(text.encode(), name="b.csv")
    assert boxes.iloc[0].tolist() == ["a.png", "Mass", 1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("text,match,rows", [
    ("", "empty", []),
    ("Image Index,Bbox [x,y,w,h],,,\na.png,1,2,3,4\n", "Finding Label", [1]),
    ("Image Index,Finding Label,Score\na.png,Mass,1\n", "no box columns", [1]),
    ("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Mass,1,2,3,4\nb.png,Broken,1,2,3,4\n", "Broken", [3]),
    ("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Mass,1,2,3\nb.png,Mass,1,x,3,4\n", "not a number", [2, 3]),
    ("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Mass,1,2,0,4\n", "zero or negative", [2]),
])
def test_bad_box_files_name_the_lines(text, match, rows):
    with pytest.raises(DatasetError, match=match) as info:
        read_boxes(text.encode(), name="bbox.csv")
    assert info.value.rows == rows
    assert "bbox.csv" in str(info.value)


def test_write_boxes_round_trips_in_nih_layout(tmp_path):
    boxes = read_boxes(NIH_TEXT.encode())
    path = write_boxes(boxes, tmp_path / "bbox.csv")
    assert path.read_text().splitlines()[0] == "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    again = read_boxes(path)
    pd.testing.assert_frame_equal(again, boxes, check_like=True)
    assert scale_box((10, 20, 30, 40), (100, 200), (50, 100)) == (5, 10, 15, 20)


# --------------------------------------------------------------------------------------------
# Scores of one map
# --------------------------------------------------------------------------------------------

def _two_blobs() -> np.ndarray:
    heat = np.zeros((100, 120), np.float32)
    heat[20:40, 30:60] = 0.8
    heat[25:30, 40:45] = 1.0      # the peak, inside the first blob
    heat[70:90, 90:110] = 0.7     # a second, separate blob above the threshold
    return heat


def test_pointing_game_and_the_map_box_of_the_peaks_region():
    heat = _two_blobs()
    assert loc.peak(heat) == (40, 25)
    assert loc.pointing_hit(heat, (35, 20, 10, 10))
    assert not loc.pointing_hit(heat, (80, 60, 30, 30))
    assert loc.pointing_hit(heat, (42, 27, 10, 10), tolerance=3)
    assert loc.map_box(heat, 0.5) == (30, 20, 30, 20)  # only the region holding the maximum
    assert loc.map_box(heat, 0.9) == (40, 25, 5, 5)
    assert loc.map_box(np.zeros((5, 5)), 0.5) is None


def test_iou_iobb_and_the_random_baseline():
    assert loc.iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert loc.iobb((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(0.5)
    assert loc.iobb((2, 2, 2, 2), (0, 0, 10, 10)) == 1.0  # a small map box inside a big one: IoBB 1, IoU small
    assert loc.iou((2, 2, 2, 2), (0, 0, 10, 10)) == pytest.approx(0.04)
    assert loc.iou((0, 0, 1, 1), (5, 5, 1, 1)) == 0.0
    assert loc.box_fraction((0, 0, 50, 25), (100, 100)) == pytest.approx(0.125)
    assert loc.box_fraction((90, 90, 50, 50), (100, 100)) == pytest.approx(0.01)  # clipped to the image
    assert loc.box_fraction([(0, 0, 10, 10), (5, 5, 10, 10)], (100, 100)) == pytest.approx(175 / 10000)


def test_score_map_against_several_boxes_of_a_class():
    heat = _two_blobs()
    score = loc.score_map(heat, [(80, 60, 40, 40), (28, 18, 34, 24)])
    assert score["hit"] and score["boxes"] == 2
    assert score["iobb"] == pytest.approx(1.0) and score["iou"] == pytest.approx(600 / (34 * 24))
    assert score["box_fraction"] == pytest.approx((40 * 40 + 34 * 24) / 12000, abs=0.01)
    miss = loc.score_map(heat, (80, 60, 40, 40))
    assert not miss["hit"] and miss["iou"] == 0.0 and (miss["peak_x"], miss["peak_y"]) == (40, 25)


def test_summary_per_class_with_accuracy_at_iobb_thresholds():
    records = pd.DataFrame({
        "Image": ["a", "b", "c", "d"], "Label": ["Mass", "Mass", "Effusion", "Effusion"],
        "prob": [0.9, 0.8, 0.3, 0.4], "boxes": [1, 1, 2, 1], "hit": [True, False, True, True],
        "iou": [0.5, 0.0, 0.2, 0.4], "iobb": [0.8, 0.05, 0.3, 0.6], "box_fraction": [0.1, 0.1, 0.2, 0.3]})
    summary = loc.summarize_localization(records).set_index("class")
    assert list(summary.index) == ["Effusion", "Mass", "all"]
    assert summary.loc["Mass", "pointing"] == 0.5 and summary.loc["Mass", "random baseline"] == pytest.approx(0.1)
    assert summary.loc["Mass", "lift"] == pytest.approx(5.0)
    assert summary.loc["Effusion", "boxes"] == 3 and summary.loc["all", "findings"] == 4
    assert summary.loc["all", "IoBB>=0.1"] == 0.75 and summary.loc["all", "IoBB>=0.7"] == 0.25
    assert summary.loc["Effusion", "IoBB>=0.3"] == 1.0 and summary.loc["Effusion", "IoBB>=0.4"] == 0.5
    assert [c for c in summary.columns if c.startswith("IoBB>=")] == [f"IoBB>={t:g}" for t in loc.IOBB_THRESHOLDS]
    assert loc.summarize_localization(records.iloc[:0]).empty


class _RegionModel:
    """A stand-in classifier: the Mass probability is the mean brightness of one region."""

    def predict(self, images):
        out = np.zeros((len(images), len(LABELS)))
        for i, img in enumerate(images):
            out[i, LABELS.index("Mass")] = float(np.asarray(img)[20:40, 20:40].mean())
        return out


def test_deletion_of_salient_cells_drops_the_probability_more_than_random_cells():
    image = np.full((64, 64), 0.2, np.float32)
    image[20:40, 20:40] = 1.0
    heat = np.zeros((64, 64), np.float32)
    heat[20:40, 20:40] = 1.0
    table = loc.deletion_test(_RegionModel(), image, heat, "Mass", fractions=(0.05, 0.1), grid=16, repeats=5)
    assert list(table["fraction"]) == [0.05, 0.1]
    assert (table["p"] == 1.0).all()
    assert (table["drop salient"] > table["drop random"] + 0.2).all()
    assert table["drop salient"].iloc[1] > table["drop salient"].iloc[0]
    masked = loc.mask_cells(image, [0, 17], 16, 0.5)
    assert masked[0:4, 0:4].max() == 0.5 and masked[4:8, 4:8].max() == 0.5 and masked[0:4, 4:8].min() == 0.2


# --------------------------------------------------------------------------------------------
# On demo data with a briefly trained model
# --------------------------------------------------------------------------------------------

DISTINCT = ("Cardiomegaly", "Effusion", "Pneumothorax")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 300-image demo set at 96 px (the distinct findings made common) and a small CNN trained on its
    train and valid splits for ~30 s with plain keras fit (from logits, small random shifts)."""
    import keras

    from cxrcore.data.dataset import load_split
    from cxrcore.data.images import read_image
    from cxrcore.data.pipeline import Normalization
    from cxrcore.demo import DemoConfig, generate_demo_dataset
    from cxrcore.train.model import LoadedModel, ModelInfo, build_model, logits_model, save_model

    root = tmp_path_factory.mktemp("cam-demo")
    config = DemoConfig(images=300, size=96, seed=3).with_prevalence(
        {"Cardiomegaly": 0.3, "Effusion": 0.3, "Mass": 0.3, "Pneumothorax": 0.25})
    data = generate_demo_dataset(root / "demo", config, workers=1)
    keras.utils.set_random_seed(0)
    splits = [load_split(data / name) for name in ("train.csv", "valid.csv")]
    names = np.concatenate([s.images for s in splits])
    y = np.concatenate([s.labels for s in splits]).astype(np.float32)
    info = ModelInfo(input_size=96, normalization=Normalization.sample(), name="demo-cnn", backbone="small_cnn")
    model = build_model(input_size=96, backbone="small_cnn")
    loaded = LoadedModel(model, info)
    x = loaded.prepare([read_image(data / "images" / n) for n in names])
    train = keras.Sequential([keras.Input((96, 96, 3)), keras.layers.RandomTranslation(0.06, 0.06), logits_model(model)])
    train.compile(optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    train.fit(x, y, batch_size=16, epochs=18, verbose=0)
    path = save_model(model, info, root / "models" / "demo-cnn.keras")
    return {"data": data, "loaded": loaded, "model_path": path, "test": load_split(data / "test.csv")}


@pytest.mark.slow
def test_pointing_game_on_demo_data_beats_the_random_baseline_for_distinct_findings(trained):
    data, loaded = trained["data"], trained["loaded"]
    boxes = read_boxes(data / "bbox.csv")
    records = loc.localize_images(loaded, list(trained["test"].images), boxes, image_root=str(data / "images"))
    assert set(records.columns) >= {"Image", "Label", "hit", "iou", "iobb", "box_fraction"}
    summary = loc.summarize_localization(records).set_index("class")
    print("\n" + summary.round(3).to_string())
    for label in DISTINCT:
        row = summary.loc[label]
        assert row["findings"] >= 8, row
        assert row["pointing"] >= 3 * row["random baseline"], (label, row)
        assert row["pointing"] >= row["random baseline"] + 0.3, (label, row)
    # Grad-CAM on the last layer scores exactly as CAM (same maps up to a positive factor)
    grad = loc.localize_images(loaded, list(trained["test"].images)[:15], boxes, image_root=str(data / "images"),
                               method="gradcam")
    same = records.set_index(["Image", "Label"]).loc[grad.set_index(["Image", "Label"]).index]
    np.testing.assert_array_equal(same["hit"].to_numpy(), grad["hit"].to_numpy())


@pytest.mark.slow
def test_cam_cli_on_one_image_and_on_a_split(trained, tmp_path, capsys):
    import cv2

    from cxrcore.cli import main

    data, model = trained["data"], str(trained["model_path"])
    boxes = read_boxes(data / "bbox.csv")
    name = next(n for n in trained["test"].images if n in set(boxes["Image"]))
    out = tmp_path / "one.png"
    assert main(["cam", "--model", model, "--image", str(data / "images" / name), "--top", "3",
                 "--boxes", str(data / "bbox.csv"), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 3 and all(line.split("\t")[0] in LABELS for line in printed)
    probs = [float(line.split("\t")[1]) for line in printed]
    assert probs == sorted(probs, reverse=True)
    figure = cv2.imread(str(out))
    assert figure.shape[1] == 4 * 320 + 5 * 6  # original + 3 overlays

    assert main(["cam", "--model", model, "--image", str(data / "images" / name), "--class", "Mass",
                 "--method", "gradcam++", "--out", str(tmp_path / "pp.png"), "--quiet"]) == 0
    assert cv2.imread(str(tmp_path / "pp.png")).shape[1] == 2 * 320 + 3 * 6

    report = tmp_path / "report"
    assert main(["cam", "--model", model, "--split", str(data / "test.csv"), "--images", str(data / "images"),
                 "--limit", "12", "--faithfulness", "--out", str(report), "--quiet"]) == 0  # bbox.csv found beside
    records = pd.read_csv(report / "localization.csv")
    assert records["Image"].nunique() == 12
    summary = pd.read_csv(report / "localization_summary.csv")
    assert summary["class"].iloc[-1] == "all" and summary["findings"].iloc[-1] == len(records)
    assert len(list((report / "maps").glob("*.png"))) == 12
    text = (report / "report.md").read_text()
    assert "| Cardiomegaly |" in text or "| Effusion |" in text
    assert "Faithfulness" in text
    faith = pd.read_csv(report / "faithfulness.csv")
    assert len(faith) == 3 * len(records)

    alone = tmp_path / "alone"  # a split file with no box file beside it: maps of the top classes only
    alone.mkdir()
    (alone / "test.csv").write_bytes((data / "test.csv").read_bytes())
    assert main(["cam", "--model", model, "--split", str(alone / "test.csv"), "--images", str(data / "images"),
                 "--limit", "3", "--top", "2", "--out", str(tmp_path / "plain"), "--quiet"]) == 0
    maps = pd.read_csv(tmp_path / "plain" / "maps.csv")
    assert len(maps) == 6 and maps["Image"].nunique() == 3
    assert not (tmp_path / "plain" / "localization.csv").exists()

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["cam", "--model", model, "--image", str(bad), "--out", str(tmp_path / "o.png")]) == 2
    assert "not a PNG, JPEG or DICOM" in capsys.readouterr().err
    assert main(["cam", "--model", model, "--image", str(data / "images" / name), "--method", "cam",
                 "--layer", "block2_conv", "--out", str(tmp_path / "o.png")]) == 2
    assert "Grad-CAM" in capsys.readouterr().err
    assert main(["cam", "--model", model, "--image", str(data / "images" / name), "--out", str(tmp_path / "o.jpg")]) == 2
    assert main(["cam", "--model", model, "--split", str(data / "test.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "--images" in capsys.readouterr().err
