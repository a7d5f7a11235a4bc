"""Class activation maps: shapes, normalization, the CAM fast path against Grad-CAM, overlays."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import pytest

from cxrcore.data.labels import LABELS
from cxrcore.data.pipeline import Normalization
from cxrcore.errors import ConfigError, ModelError
from cxrcore.explain import cam
from cxrcore.train.model import LoadedModel, ModelInfo, build_model


def _loaded(model, size: int, labels=LABELS, backbone: str = "small_cnn") -> LoadedModel:
    return LoadedModel(model, ModelInfo(labels=labels, input_size=size, normalization=Normalization.sample(),
                                        backbone=backbone))


def _randomize_head(model, seed: int) -> None:
    """Spread the Dense weights so that every class map has positive and negative parts."""
    dense = model.get_layer("logits")
    rng = np.random.default_rng(seed)
    dense.kernel.assign(rng.normal(0, 0.5, dense.kernel.shape).astype("float32"))
    dense.bias.assign(rng.normal(0, 0.5, dense.bias.shape).astype("float32"))


@pytest.fixture(scope="module")
def small():
    import keras

    keras.utils.set_random_seed(1)
    model = build_model(input_size=48, backbone="small_cnn")
    _randomize_head(model, 1)
    return _loaded(model, 48)


@pytest.fixture(scope="module")
def densenet():
    """DenseNet121 as the course builds it: the head on the final 'bn' (no ReLU), so maps can be negative."""
    import keras

    keras.utils.set_random_seed(2)
    model = build_model(input_size=96, backbone="densenet121")
    _randomize_head(model, 2)
    return _loaded(model, 96, backbone="densenet121")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    out = []
    for h, w in ((70, 90), (64, 64), (120, 80)):
        img = rng.random((h, w)).astype(np.float32) * 0.3
        cv2.circle(img, (w // 3, h // 2), max(h, w) // 8, 1.0, -1)
        out.append(img)
    return out


# --------------------------------------------------------------------------------------------
# Shapes and normalization
# --------------------------------------------------------------------------------------------

def test_maps_come_back_at_each_images_size_normalized_to_unit_range(small, images):
    results = cam.explain_batch(small, images, ["Mass", "Infiltrate", "Cardiomegaly"])
    probs = small.predict(images)
    for img, result, p in zip(images, results, probs):
        assert result.labels == ("Mass", "Infiltration", "Cardiomegaly")
        assert result.maps.shape == (3, *img.shape) and result.maps.dtype == np.float32
        assert result.probs.shape == (14,)
        np.testing.assert_allclose(result.probs, p, atol=1e-5)
        for heat in result.maps:
            assert heat.min() == pytest.approx(0.0, abs=1e-6)
            assert heat.max() == pytest.approx(1.0, abs=1e-6)
        assert result.method == "cam" and result.layer == "features"
    display = cam.explain(small, images[0], ["Mass"], size=(35, 45))
    assert display.maps.shape == (1, 35, 45)


def test_all_classes_by_default_and_top_labels(small, images):
    result = cam.explain(small, images[0])
    assert result.labels == LABELS and result.maps.shape[0] == 14
    top = cam.top_labels(result.probs, 4)
    assert len(top) == 4 and result.prob(top[0]) == pytest.approx(float(np.max(result.probs)))
    assert all(result.prob(a) >= result.prob(b) for a, b in zip(top, top[1:]))


def test_normalize_maps_is_relu_then_min_max_and_flat_maps_are_zero():
    maps = np.array([[[-1.0, 0.0], [1.0, 3.0]], [[2.0, 2.0], [2.0, 2.0]], [[-5.0, -1.0], [-2.0, -3.0]]])
    out = cam.normalize_maps(maps)
    np.testing.assert_allclose(out[0], [[0.0, 0.0], [1 / 3, 1.0]], atol=1e-6)
    assert not out[1].any() and not out[2].any()  # flat, and all-negative (no evidence for the class)
    assert out.dtype == np.float32


def test_upsampling_keeps_the_hot_cell_where_it_was_and_smoothing_stays_in_range():
    low = np.zeros((1, 4, 4), np.float32)
    low[0, 1, 2] = 1.0  # row 1, column 2 of a 4x4 grid -> pixels y 25-50, x 50-75 of 100x100
    up = cam.postprocess(low, (100, 100))
    y, x = np.unravel_index(np.argmax(up[0]), up[0].shape)
    assert 25 <= y < 50 and 50 <= x < 75
    smooth = cam.postprocess(low, (100, 100), smooth=0.05)
    assert smooth.min() >= 0 and smooth.max() == pytest.approx(1.0)
    assert (smooth[0] > 0.5).sum() > (up[0] > 0.5).sum()  # blurred: a wider hot area
    assert cam.upsample_maps(np.zeros((0, 4, 4)), (10, 12)).shape == (0, 10, 12)


# --------------------------------------------------------------------------------------------
# The fast path is Grad-CAM for the standard head
# --------------------------------------------------------------------------------------------

def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("which", ["small", "densenet"])
def test_cam_equals_gradcam_of_the_logit_up_to_the_positive_factor_one_over_hw(which, request, images):
    loaded = request.getfixturevalue(which)
    cm = cam.cam_model(loaded.model)
    x = loaded.prepare(images[:2])
    fast, out_fast = cm.class_maps(x)
    grad, out_grad = cm.grad_maps(x, range(14), target="logit")
    assert fast.shape == grad.shape == (2, 14, *fast.shape[2:])
    np.testing.assert_allclose(out_fast, out_grad, atol=1e-6)
    h, w = fast.shape[2:]
    for i in range(2):
        for k in range(14):
            assert _corr(fast[i, k], grad[i, k]) > 0.999
    signed = sum((m < 0).any() and (m > 0).any() for m in fast.reshape(-1, h, w))
    assert signed >= 10  # maps with positive and negative parts: ReLU does not hide a sign error
    # the factor is exactly 1 / (h w): d logit / d A = W / (h w) everywhere
    np.testing.assert_allclose(grad, fast / (h * w), rtol=2e-3, atol=1e-5 * np.abs(fast).max() / (h * w))
    # after ReLU and normalization the maps are the same
    for i in range(2):
        np.testing.assert_allclose(cam.postprocess(fast[i], (40, 50)), cam.postprocess(grad[i], (40, 50)), atol=1e-3)


def test_gradcam_of_the_probability_differs_by_the_positive_factor_sigmoid_prime(small, images):
    cm = cam.cam_model(small.model)
    x = small.prepare(images[:2])
    fast, probs = cm.class_maps(x)
    grad, _ = cm.grad_maps(x, range(14), target="probability")
    h, w = fast.shape[2:]
    for i in range(2):
        for k in range(14):
            factor = probs[i, k] * (1 - probs[i, k]) / (h * w)  # sigma'(z) = p (1 - p) > 0
            assert factor > 0
            assert _corr(fast[i, k], grad[i, k]) > 0.999
            np.testing.assert_allclose(grad[i, k], fast[i, k] * factor, rtol=5e-3,
                                       atol=1e-4 * np.abs(fast[i, k]).max() * factor)


def test_densenet_with_a_final_relu_uses_it_as_the_cam_layer(images):
    model = build_model(input_size=32, backbone="densenet121", final_relu=True)
    _randomize_head(model, 3)
    loaded = _loaded(model, 32, backbone="densenet121")
    cm = cam.cam_model(model)
    assert cm.feature_layer == "relu"
    x = loaded.prepare(images[:1])
    fast, _ = cm.class_maps(x, [1, 9])
    grad, _ = cm.grad_maps(x, [1, 9])
    for k in range(2):
        if np.ptp(fast[0, k]) > 0:
            assert _corr(fast[0, k], grad[0, k]) > 0.999


def test_batched_gradcam_equals_looping_class_by_class(small, images):
    cm = cam.cam_model(small.model)
    x = small.prepare(images)
    classes = [9, 1, 4]
    batched, out = cm.grad_maps(x, classes, layer="block3_conv", chunk=100)  # 3 images x 3 classes, one call
    np.testing.assert_allclose(out, small.model.predict_on_batch(x), atol=1e-5)
    for j, k in enumerate(classes):
        single, _ = cm.grad_maps(x, [k], layer="block3_conv", chunk=1)  # one image, one class per call
        np.testing.assert_allclose(batched[:, j], single[:, 0], rtol=1e-4, atol=1e-6)
    empty, _ = cm.grad_maps(x, [], layer="block3_conv")
    assert empty.shape == (3, 0, 12, 12)


def test_gradcam_on_an_earlier_layer_has_that_layers_resolution(small, images):
    layers = cam.map_layers(small.model)
    assert layers[-1] == "features" and "block2_conv" in layers and "logits" not in layers
    result = cam.explain(small, images[0], ["Mass"], method="gradcam", layer="block2_conv")
    assert result.layer == "block2_conv" and result.maps.shape == (1, 70, 90)
    maps, _, used = cam.raw_maps(small, small.prepare(images[:1]), [9], method="gradcam", layer="block2_conv")
    assert used == "block2_conv" and maps.shape[2:] == (24, 24)  # 48 / 2 after one pooling


def test_gradcam_plus_plus_matches_its_closed_form_for_the_linear_head(small, images):
    """For GAP + Dense the gradient is W / (h w) per channel, so Grad-CAM++'s weights have the closed form
    w_c = sum_ab alpha ReLU(g_c) with alpha = g_c^2 / (2 g_c^2 + S_c g_c^3), S_c = sum_ab A_c."""
    cm = cam.cam_model(small.model)
    x = small.prepare(images[:1])
    feats, _ = cm.forward(x)
    pp, _ = cm.grad_maps(x, [3, 9], plus_plus=True)
    h, w = feats.shape[1:3]
    for j, k in enumerate([3, 9]):
        g = cm.kernel[:, k] / (h * w)
        s = feats[0].sum(axis=(0, 1))
        denom = 2 * g ** 2 + s * g ** 3
        alpha = np.where(np.abs(denom) > 1e-12, g ** 2 / np.where(denom == 0, 1, denom), 0)
        weights = h * w * alpha * np.maximum(g, 0)
        expected = np.einsum("hwc,c->hw", feats[0], weights)
        np.testing.assert_allclose(pp[0, j], expected, rtol=1e-3, atol=1e-6 * np.abs(expected).max())
    result = cam.explain(small, images[0], ["Edema"], method="gradcam++")
    assert result.maps.shape == (1, 70, 90) and 0 <= result.maps.min() and result.maps.max() <= 1


# --------------------------------------------------------------------------------------------
# Caching and errors
# --------------------------------------------------------------------------------------------

def test_the_cam_model_is_built_once_and_sees_later_weight_changes(images):
    model = build_model(input_size=32, backbone="small_cnn")
    loaded = _loaded(model, 32)
    first = cam.cam_model(model)
    assert cam.cam_model(model) is first
    before = cam.explain(loaded, images[1], ["Mass"]).probs
    _randomize_head(model, 7)  # e.g. training after the first map
    after = cam.explain(loaded, images[1], ["Mass"])
    assert not np.allclose(before, after.probs)
    np.testing.assert_allclose(after.probs, loaded.predict([images[1]])[0], atol=1e-5)
    assert cam.cam_model(build_model(input_size=32, backbone="small_cnn")) is not first


def test_bad_requests_are_domain_errors(small, images):
    with pytest.raises(ConfigError, match="CAM is defined only on the layer"):
        cam.explain(small, images[0], ["Mass"], method="cam", layer="block2_conv")
    with pytest.raises(ConfigError, match="no layer named"):
        cam.explain(small, images[0], ["Mass"], method="gradcam", layer="nope")
    with pytest.raises(ConfigError, match="no 4-D"):
        cam.explain(small, images[0], ["Mass"], method="gradcam", layer="avg_pool")
    with pytest.raises(ConfigError, match="unknown map method"):
        cam.explain(small, images[0], ["Mass"], method="lime")
    with pytest.raises(ConfigError, match="unknown class"):
        cam.explain(small, images[0], ["Pneumothorax", "Broken leg"])
    with pytest.raises(ConfigError, match="target"):
        cam.cam_model(small.model).grad_maps(small.prepare(images[:1]), [0], target="softmax")
    three = _loaded(build_model(labels=LABELS[:3], input_size=32, backbone="small_cnn"), 32, labels=LABELS[:3])
    with pytest.raises(ModelError, match="does not predict Mass"):
        cam.explain(three, images[0], ["Mass"])
    result = cam.explain(three, images[0])
    assert result.labels == LABELS[:3] and np.isnan(result.probs[3:]).all()


def test_a_foreign_model_with_the_sigmoid_inside_its_dense_layer(images):
    """Models not built here: Dense(14, activation='sigmoid') right after the pooling, no 'logits' layer."""
    import keras

    keras.utils.set_random_seed(4)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="c2")(x)
    out = keras.layers.Dense(14, activation="sigmoid", name="head")(keras.layers.GlobalAveragePooling2D()(x))
    loaded = _loaded(keras.Model(inputs, out), 32)
    cm = cam.cam_model(loaded.model)
    assert (cm.feature_layer, cm.dense_layer) == ("c2", "head")
    x_in = loaded.prepare(images[:1])
    fast, probs = cm.class_maps(x_in)
    grad, _ = cm.grad_maps(x_in, range(14))  # the logit is rebuilt from the pooled features
    np.testing.assert_allclose(probs, loaded.model.predict_on_batch(x_in), atol=1e-6)
    for k in range(14):
        assert _corr(fast[0, k], grad[0, k]) > 0.999
    np.testing.assert_allclose(grad, fast / (16 * 16), rtol=2e-3, atol=1e-7)


def test_a_model_without_global_average_pooling_has_no_cam():
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    out = keras.layers.Dense(14, activation="sigmoid")(keras.layers.Flatten()(x))
    with pytest.raises(ModelError, match="GlobalAveragePooling2D"):
        cam.cam_model(keras.Model(inputs, out))


# --------------------------------------------------------------------------------------------
# Overlays and figures
# --------------------------------------------------------------------------------------------

def test_overlay_blends_the_colormap_with_the_opacity():
    image = np.linspace(0, 1, 40 * 50, dtype=np.float32).reshape(40, 50)
    heat = np.zeros((40, 50), np.float32)
    heat[10:20, 10:20] = 1.0
    gray = cam.overlay(image, heat, opacity=0.0)
    assert gray.shape == (40, 50, 3) and gray.dtype == np.uint8
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    full = cam.overlay(image, heat, opacity=1.0)
    np.testing.assert_array_equal(full, cam.colorize(heat))
    jet = cam.colorize(np.array([[0.0, 1.0]], np.float32))
    assert jet[0, 0, 2] > 100 and jet[0, 0, 0] < 10  # jet: 0 is blue
    assert jet[0, 1, 0] > 100 and jet[0, 1, 2] < 10  # 1 is red (RGB order)
    half = cam.overlay(image, heat, opacity=0.5).astype(int)
    np.testing.assert_allclose(half, (gray.astype(int) + full.astype(int)) / 2, atol=1)
    small_heat = cv2.resize(heat, (25, 20))
    assert cam.overlay(image, small_heat, 0.3).shape == (40, 50, 3)  # resized to the image
    with pytest.raises(ConfigError):
        cam.overlay(image, heat, opacity=1.5)
    with pytest.raises(ConfigError, match="colormap"):
        cam.colorize(heat, "rainbowish")


def test_explanation_figure_has_one_titled_panel_per_class_and_encodes_as_png(small, images):
    result = cam.explain(small, images[2], ["Mass", "Nodule", "Edema"])
    fig = cam.explanation_figure(images[2], result, boxes=[("Mass", (10, 20, 30, 40))], truth=["Mass"],
                                 panel_size=100, columns=2)
    # 4 panels in 2 columns of 100 px (+ gaps); each 150 px tall (120x80 image) + a 28 px title
    assert fig.shape == (2 * (150 + 28) + 3 * 6, 2 * 100 + 3 * 6, 3)
    decoded = cv2.imdecode(np.frombuffer(cam.png_bytes(fig), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == fig.shape
    boxed = cam.draw_boxes(cam.gray_rgb(np.zeros((50, 50), np.float32)), [("Mass", (10, 10, 20, 20))])
    assert (boxed[10, 11:29, 1] > 150).all() and boxed[25, 20].sum() == 0  # outline only


# --------------------------------------------------------------------------------------------
# Gradient methods in the method list (cxrcore.explain.saliency; details in tests/test_saliency.py)
# --------------------------------------------------------------------------------------------

def test_every_method_is_registered_with_a_title_and_dispatched(small, images):
    assert cam.METHODS == cam.CAM_METHODS + cam.GRADIENT_METHODS
    assert set(cam.METHOD_TITLES) == set(cam.METHODS)
    x = small.prepare(images[:1])
    for method in cam.METHODS:
        assert cam.check_method(method) == method
        maps, out, used = cam.raw_maps(small, x, [9], method=method)
        expected = (6, 6) if method in cam.CAM_METHODS else (48, 48)  # the CAM layer (48 / 8), or the input
        assert maps.shape == (1, 1, *expected) and out.shape == (1, 14)
        assert used == ("features" if method in cam.CAM_METHODS else "input")
        result = cam.explain(small, images[0], ["Mass"], method=method)
        assert result.maps.shape == (1, 70, 90) and result.extra["description"].startswith(cam.METHOD_TITLES[method])


def test_supported_methods_of_the_course_head_and_of_a_model_without_pooling(densenet):
    import keras

    assert cam.supported_methods(densenet) == cam.METHODS
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    out = keras.layers.Dense(14, activation="sigmoid")(keras.layers.Flatten()(x))
    flat = _loaded(keras.Model(inputs, out), 16)
    assert cam.supported_methods(flat) == cam.GRADIENT_METHODS
    reasons = cam.method_support(flat)
    assert all("GlobalAveragePooling2D" in reasons[m] for m in cam.CAM_METHODS)
    result = cam.explain(flat, np.random.default_rng(0).random((20, 20)).astype(np.float32), ["Mass"],
                         method="gradient")
    assert result.maps.shape == (1, 20, 20) and result.layer == "input"
