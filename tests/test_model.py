"""cxrcore.train.model: architecture, info, saving/loading, and the course's Keras 2 files loaded topologically."""
from __future__ import annotations

import json
import os
import warnings
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from cxrcore.data.labels import COURSE_LABEL_ORDER, LABELS
from cxrcore.data.pipeline import Normalization
from cxrcore.errors import ConfigError, ModelError
from cxrcore.train import model as M

SIZE = 64


def _inputs(n: int = 3, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, (n, size, size, 3)).astype(np.float32)


def _run(model, x: np.ndarray) -> np.ndarray:
    """One eager forward pass (cheaper than tracing model.predict for a single call)."""
    return np.asarray(model(x, training=False))


def _randomize(model, seed: int = 0) -> None:
    """Random weights AND batch-norm statistics, so a wrong layer assignment changes predictions."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for w in layer.weights:
            shape = tuple(w.shape)
            if "variance" in w.name:
                values.append(rng.uniform(0.5, 1.5, shape).astype("float32"))
            else:
                values.append(rng.normal(0, 0.1, shape).astype("float32"))
        if values:
            layer.set_weights(values)


# ---------------------------------------------------------------- legacy golden test

@pytest.fixture(scope="module")
def legacy_files(tmp_path_factory):
    """Keras 2 (tf-keras) files shaped like the course's: backbone weights, full model, weights-only,
    and a newer-Keras-2 variant whose head sits on the final 'relu', with golden predictions."""
    import tf_keras

    folder = tmp_path_factory.mktemp("legacy")
    base = tf_keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    _randomize(base, seed=1)
    pooled = tf_keras.layers.GlobalAveragePooling2D()(base.get_layer("bn").output)
    course = tf_keras.Model(base.input, tf_keras.layers.Dense(14, activation="sigmoid")(pooled))
    rng = np.random.default_rng(2)
    dense = course.layers[-1]
    dense.set_weights([rng.normal(0, 0.5, (1024, 14)).astype("float32"), rng.normal(0, 0.5, 14).astype("float32")])
    pooled_relu = tf_keras.layers.GlobalAveragePooling2D()(base.output)
    relu_model = tf_keras.Model(base.input, tf_keras.layers.Dense(14, activation="sigmoid")(pooled_relu))
    relu_model.layers[-1].set_weights(dense.get_weights())
    x = _inputs()
    files = {
        "backbone": folder / "densenet.hdf5",
        "full": folder / "pretrained_model.h5",
        "weights_only": folder / "pretrained_weights.h5",
        "relu": folder / "relu_model.h5",
    }
    with warnings.catch_warnings():  # "HDF5 is legacy": exactly the format under test
        warnings.simplefilter("ignore", UserWarning)
        base.save_weights(str(files["backbone"]))
        course.save(str(files["full"]))
        course.save_weights(str(files["weights_only"]))
        relu_model.save(str(files["relu"]))
    bn_features = _run(tf_keras.Model(base.input, base.get_layer("bn").output), x)
    return {"x": x, "course": _run(course, x), "relu": _run(relu_model, x), "bn": bn_features, "files": files}


def test_course_full_model_loads_topologically_with_golden_predictions(legacy_files):
    info = M.course_model_info(Normalization.dataset(0.5, 0.25), input_size=SIZE)
    loaded = M.load_model(legacy_files["files"]["full"], info=info)
    got = _run(loaded.model, legacy_files["x"])
    np.testing.assert_allclose(got, legacy_files["course"], atol=1e-5)
    assert float(np.std(legacy_files["course"])) > 0.05  # the golden outputs are not all ~0.5
    # outputs come in COURSE_LABEL_ORDER; reordered to canonical LABELS order for everything else
    canonical = M.reorder_outputs(got, loaded.info.labels)
    for j, label in enumerate(LABELS):
        np.testing.assert_allclose(canonical[:, j], got[:, COURSE_LABEL_ORDER.index(label)], atol=1e-6)
    assert M.cam_layers(loaded.model) == ("bn", "logits")


def test_course_file_without_info_defaults_to_course_order_and_needs_fitted_normalization(legacy_files):
    loaded = M.load_model(legacy_files["files"]["full"])  # no sidecar: Keras 2 DenseNet with 14 outputs
    assert loaded.info.origin == "course"
    assert loaded.info.labels == COURSE_LABEL_ORDER and loaded.info.input_size == 320
    assert loaded.info.normalization.mode == "dataset"
    with pytest.raises(ModelError, match="mean/std are unknown"):
        loaded.predict(np.zeros((1, 80, 80), np.float32))


def test_weights_only_file_and_final_relu_variant(legacy_files):
    info = M.course_model_info(Normalization.dataset(0.5, 0.25), input_size=SIZE)
    loaded = M.load_model(legacy_files["files"]["weights_only"], info=info)
    np.testing.assert_allclose(_run(loaded.model, legacy_files["x"]), legacy_files["course"], atol=1e-5)
    relu = M.load_model(legacy_files["files"]["relu"], info=info)
    assert M.cam_layers(relu.model)[0] == "relu"
    np.testing.assert_allclose(_run(relu.model, legacy_files["x"]), legacy_files["relu"], atol=1e-5)


def test_backbone_weights_file_fills_the_backbone(legacy_files):
    model = M.build_model(input_size=SIZE, weights=legacy_files["files"]["backbone"])
    features = _run(keras.Model(model.input, model.get_layer("bn").output), legacy_files["x"])
    np.testing.assert_allclose(features, legacy_files["bn"], atol=1e-4)
    with pytest.raises(ModelError, match="backbone weights only"):
        M.load_model(legacy_files["files"]["backbone"], info=M.course_model_info(input_size=SIZE))


def test_course_backbone_in_the_models_root_is_found_offline(legacy_files, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("CXR_OFFLINE", "1")
    assert M.keras_cache_dirs()[0] == tmp_path / "keras" / "models"
    monkeypatch.setattr(M, "keras_cache_dirs", lambda: [tmp_path / "keras" / "models"])
    root = tmp_path / "models"
    assert M.find_imagenet_weights(root).source == "unavailable"
    (root / "nih").mkdir(parents=True)
    (root / "nih" / "densenet.hdf5").write_text("not HDF5")  # a stray text file is not the backbone
    assert M.course_backbone(root) is None
    (root / "nih" / "densenet.hdf5").write_bytes(legacy_files["files"]["backbone"].read_bytes())
    found = M.find_imagenet_weights(root)
    assert found.source == "course file" and found.path == (root / "nih" / "densenet.hdf5").resolve()
    assert "no download" in found.note  # build_model(weights=found.path) loads it: see the test above


def test_weights_of_another_architecture_are_refused(legacy_files, tmp_path):
    small = M.build_model(input_size=32, backbone="small_cnn")
    with pytest.raises(ModelError, match="different architecture"):
        M.load_weights_topological(small, legacy_files["files"]["full"])
    with pytest.raises(ModelError, match="does not fit"):
        M.load_weights_topological(M.build_model(LABELS[:3], input_size=SIZE), legacy_files["files"]["full"])


# ---------------------------------------------------------------- architecture

def test_densenet_head_sits_on_bn_and_small_cnn_names_its_features():
    model = M.build_model(input_size=32)
    assert model.output.shape[1:] == (14,) and model.input.shape[1:] == (32, 32, 3)
    assert M.cam_layers(model) == ("bn", "logits")  # ("relu", "logits") with final_relu: see the relu test
    assert model.get_layer("logits").dtype_policy.compute_dtype == "float32"
    assert model.get_layer("predictions").dtype_policy.compute_dtype == "float32"
    assert "relu" not in [layer.name for layer in model.layers]
    small = M.build_model(LABELS[:5], input_size=32, backbone="small_cnn")
    assert small.output.shape[1:] == (5,)
    assert M.cam_layers(small) == ("features", "logits")
    with pytest.raises(ConfigError, match="unknown backbone"):
        M.build_model(backbone="resnet")


def test_logits_model_shares_weights():
    model = M.build_model(input_size=32, backbone="small_cnn")
    x = _inputs(2, 32)
    probs = _run(model, x)
    logits = _run(M.logits_model(model), x)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), atol=1e-6)


def test_cam_layers_needs_global_pooling():
    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ModelError, match="GlobalAveragePooling2D"):
        M.cam_layers(plain)


# ---------------------------------------------------------------- info, save, load

def _constant_model(labels, size=32):
    """small_cnn whose outputs are fixed per label (zero kernel, known bias): order is checkable."""
    model = M.build_model(labels, input_size=size, backbone="small_cnn")
    dense = model.get_layer("logits")
    bias = np.linspace(-3, 3, len(labels)).astype("float32")
    dense.set_weights([np.zeros_like(dense.get_weights()[0]), bias])
    return model, 1 / (1 + np.exp(-bias))


def test_info_json_round_trip_and_validation():
    info = M.ModelInfo(labels=COURSE_LABEL_ORDER, input_size=224, normalization=Normalization.dataset(0.5, 0.2),
                       name="x", origin="trained", metadata={"auc": 0.8})
    assert M.ModelInfo.from_json(info.to_json()) == info
    assert M.ModelInfo(labels=["Infiltrate"]).labels == ("Infiltration",)
    with pytest.raises(ConfigError, match="unknown label"):
        M.ModelInfo(labels=["Broken Leg"])
    with pytest.raises(ConfigError, match="repeats"):
        M.ModelInfo(labels=["Mass", "Mass"])
    with pytest.raises(ModelError, match="not valid JSON"):
        M.ModelInfo.from_json("{", file="x.json")


def test_save_load_round_trip_with_info_beside_and_inside(tmp_path):
    model, probs = _constant_model(COURSE_LABEL_ORDER)
    info = M.ModelInfo(labels=COURSE_LABEL_ORDER, input_size=32, backbone="small_cnn", name="tiny")
    path = M.save_model(model, info, tmp_path / "tiny.keras")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json", "tiny.keras"]  # no temp files left
    assert json.loads((tmp_path / "tiny.json").read_text())["labels"] == list(COURSE_LABEL_ORDER)
    loaded = M.load_model(path)
    assert loaded.info == info
    out = loaded.predict(np.random.default_rng(0).uniform(0, 1, (2, 50, 40)).astype(np.float32))
    assert out.shape == (2, 14)
    for j, label in enumerate(LABELS):  # canonical order, whatever the model's order
        np.testing.assert_allclose(out[:, j], probs[COURSE_LABEL_ORDER.index(label)], atol=1e-6)
    import cv2  # the same answers from files, decoded by the tf.data pipeline
    files = []
    for i in range(3):
        files.append(tmp_path / f"x{i}.png")
        cv2.imwrite(str(files[-1]), np.random.default_rng(i).integers(0, 255, (70, 60), dtype=np.uint8))
    np.testing.assert_allclose(loaded.predict_paths(files), out[:1].repeat(3, axis=0), atol=1e-6)
    (tmp_path / "tiny.json").unlink()
    assert M.load_model(path).info == info  # the copy inside the .keras file
    assert M.read_model_info(path) == info


def test_predict_marks_labels_the_model_lacks_as_nan(tmp_path):
    model, probs = _constant_model(["Mass", "Nodule"])
    info = M.ModelInfo(labels=("Nodule", "Mass"), input_size=32, backbone="small_cnn")
    out = M.LoadedModel(model, info).predict(np.zeros((1, 32, 32), np.float32))
    assert np.isnan(out[0, [LABELS.index(x) for x in LABELS if x not in ("Mass", "Nodule")]]).all()
    np.testing.assert_allclose(out[0, LABELS.index("Nodule")], probs[0], atol=1e-6)
    np.testing.assert_allclose(M.reorder_outputs(np.array([[0.1, 0.2]]), ["Nodule", "Mass"], ["Mass"]), [[0.2]])


def test_label_count_and_input_size_mismatches_are_model_errors(tmp_path):
    model, _ = _constant_model(LABELS[:3])
    with pytest.raises(ModelError, match="3 outputs but its label list has 14"):
        M.save_model(model, M.ModelInfo(input_size=32), tmp_path / "m.keras")
    M.save_model(model, M.ModelInfo(labels=LABELS[:3], input_size=32), tmp_path / "m.keras")
    with pytest.raises(ModelError, match="3 outputs but its label list has 14"):
        M.load_model(tmp_path / "m.keras", info=M.ModelInfo(input_size=32))
    with pytest.raises(ModelError, match="takes 32x32 images but its info says 64x64"):
        M.load_model(tmp_path / "m.keras", info=M.ModelInfo(labels=LABELS[:3], input_size=64))
    with pytest.raises(ModelError, match=".keras suffix"):
        M.save_model(model, M.ModelInfo(labels=LABELS[:3], input_size=32), tmp_path / "m.h5")


def test_bad_model_files_are_model_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        M.load_model(tmp_path / "none.keras")
    (tmp_path / "empty.keras").write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        M.load_model(tmp_path / "empty.keras")
    (tmp_path / "notes.h5").write_text("not a model")
    with pytest.raises(ModelError, match="not a Keras model file"):
        M.load_model(tmp_path / "notes.h5")
    model, _ = _constant_model(LABELS)
    good = M.save_model(model, M.ModelInfo(input_size=32, backbone="small_cnn"), tmp_path / "good.keras")
    data = good.read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated or damaged"):
        M.load_model(tmp_path / "cut.keras", info=M.ModelInfo(input_size=32))
    import h5py
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        f.create_group("dense").attrs["weight_names"] = [b"dense/kernel:0"]
        f["dense"].create_dataset("dense/kernel:0", data=np.zeros((3, 14), "float32"))
    h5 = (tmp_path / "w.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(h5[: len(h5) // 3])
    with pytest.raises(ModelError, match="truncated or damaged"):
        M.load_model(tmp_path / "cut.h5", info=M.ModelInfo())
    with pytest.raises(ModelError, match="unknown architecture"):
        M.load_model(tmp_path / "w.h5", info=M.ModelInfo())
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ModelError, match="not a Keras model"):
        M.load_model(tmp_path / "other.keras")


def test_lambda_layers_are_refused_and_missing_info_is_explained(tmp_path):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    risky = keras.Model(inputs, keras.layers.Dense(14, activation="sigmoid")(x))
    risky.save(tmp_path / "risky.keras")
    with pytest.raises(ModelError, match="Lambda layer.*refused"):
        M.load_model(tmp_path / "risky.keras", info=M.ModelInfo(input_size=32))
    plain, _ = _constant_model(LABELS)
    plain.save(tmp_path / "bare.keras")  # saved by plain Keras: no info anywhere
    with pytest.raises(ModelError, match="no label list") as err:
        M.load_model(tmp_path / "bare.keras")
    assert "bare.json" in str(err.value)


def test_predict_on_arrays_and_on_files_agree(tmp_path):
    """UI path (cv2 decode + numpy) and evaluation path (tf.data) feed the model the same pixels."""
    import cv2

    from cxrcore.data.images import read_image

    model = M.build_model(input_size=32, backbone="small_cnn")
    _randomize(model, seed=3)
    loaded = M.LoadedModel(model, M.ModelInfo(input_size=32, backbone="small_cnn"))
    files = []
    for i in range(4):
        files.append(tmp_path / f"x{i}.png")
        arr = cv2.GaussianBlur(np.random.default_rng(i).integers(0, 255, (90, 80), dtype=np.uint8), (5, 5), 0)
        cv2.imwrite(str(files[-1]), arr)
    from_files = loaded.predict_paths(files)
    from_arrays = loaded.predict([read_image(f) for f in files])
    assert float(np.std(from_files)) > 1e-3
    np.testing.assert_allclose(from_files, from_arrays, atol=1e-4)
