"""Gradient saliency (gradient, SmoothGrad, Integrated Gradients): known answers on a model whose evidence
is known, shapes, seeds, batching, non-convolutional models, faithfulness curves, agreement, the cam CLI."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import pytest

from cxrcore.data.labels import LABELS
from cxrcore.data.pipeline import Normalization
from cxrcore.errors import ConfigError
from cxrcore.explain import cam, saliency
from cxrcore.explain.localization import faithfulness_curves, map_agreement, score_map
from cxrcore.explain.saliency import SaliencyOptions
from cxrcore.train.model import LoadedModel, ModelInfo, build_model

SIZE = 24
#: Region R_k (y0, y1, x0, x1) read by output k of the region model; the other outputs read nothing.
REGIONS = {0: (2, 8, 3, 10), 1: (14, 22, 12, 20), 2: (5, 12, 15, 23)}
WEIGHTS = {0: 0.08, 1: -0.05, 2: 0.03}
LABELS3 = LABELS[:3]


def _loaded(model, size: int, labels=LABELS, backbone: str = "small_cnn") -> LoadedModel:
    return LoadedModel(model, ModelInfo(labels=labels, input_size=size, normalization=Normalization.sample(),
                                        backbone=backbone))


def _region_mask(k: int, size: int = SIZE) -> np.ndarray:
    y0, y1, x0, x1 = REGIONS[k]
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def region_model(*, nonlinear: bool = False, scale: float = 1.0):
    """Not convolutional (Flatten + Dense): output k = sigmoid(w_k * sum of the pixels of R_k + b_k).

    nonlinear=True squares the input first (an elementwise layer), so the gradient varies with x but
    is still zero outside R_k. scale multiplies the weights (small: probabilities away from 0 and 1)."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Multiply(name="square")([inputs, inputs]) if nonlinear else inputs
    flat = keras.layers.Flatten(name="flat")(x)
    logits = keras.layers.Dense(3, name="logits")(flat)
    out = keras.layers.Activation("sigmoid", name="predictions")(logits)
    model = keras.Model(inputs, out, name="regions")
    kernel = np.zeros((SIZE * SIZE * 3, 3), np.float32)
    for k in REGIONS:
        kernel[:, k] = np.repeat(_region_mask(k).ravel(), 3) * WEIGHTS[k] * scale
    model.get_layer("logits").set_weights([kernel, np.array([0.2, -0.1, 0.0], np.float32)])
    return model


@pytest.fixture(scope="module")
def regions():
    return _loaded(region_model(), SIZE, labels=LABELS3, backbone="flat")


@pytest.fixture(scope="module")
def squared():
    return _loaded(region_model(nonlinear=True), SIZE, labels=LABELS3, backbone="flat")


@pytest.fixture(scope="module")
def small():
    import keras

    keras.utils.set_random_seed(3)
    model = build_model(input_size=32, backbone="small_cnn")
    dense = model.get_layer("logits")
    rng = np.random.default_rng(3)
    dense.kernel.assign(rng.normal(0, 0.5, dense.kernel.shape).astype("float32"))
    return _loaded(model, 32)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    out = []
    for h, w in ((SIZE, SIZE), (40, 30)):
        img = rng.random((h, w)).astype(np.float32) * 0.5
        cv2.circle(img, (w // 3, h // 2), max(h, w) // 6, 1.0, -1)
        out.append(img)
    return out


def _mass_inside(maps: np.ndarray, k: int) -> float:
    m = np.maximum(maps, 0)
    return float(m[_region_mask(k)].sum() / m.sum())


# --------------------------------------------------------------------------------------------
# Known answers
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["regions", "squared"])
@pytest.mark.parametrize("method", cam.GRADIENT_METHODS)
def test_the_saliency_of_each_output_lies_in_the_region_it_reads(which, method, request, images):
    loaded = request.getfixturevalue(which)
    x = loaded.prepare(images[:1])
    maps, out = saliency.raw_maps(loaded, x, [0, 1, 2], method=method, options=SaliencyOptions(samples=8, steps=16))
    assert maps.shape == (1, 3, SIZE, SIZE) and out.shape == (1, 3)
    for k in range(3):
        assert _mass_inside(np.abs(maps[0, k]), k) > 0.95, (method, k)
    # through cam.explain: upsampled to the image, normalized, the peak in the region
    result = cam.explain(loaded, images[0], list(LABELS3), method=method,
                         saliency_options=SaliencyOptions(samples=8, steps=16))
    assert result.layer == "input" and result.maps.shape == (3, SIZE, SIZE)
    for k in range(3):
        if result.maps[k].max() > 0:  # IG of a negative weight on a bright region is all negative: no evidence
            assert _mass_inside(result.maps[k], k) > 0.95
            y, x_ = np.unravel_index(np.argmax(result.maps[k]), result.maps[k].shape)
            assert _region_mask(k)[y, x_]


def test_the_gradient_of_the_linear_logit_is_its_weight_exactly(regions, images):
    x = regions.prepare(images[:1])
    attr, _ = saliency.attributions(regions, x, [0, 1, 2], method="gradient")
    for k in range(3):
        expected = np.where(_region_mask(k)[..., None], WEIGHTS[k], 0.0) * np.ones((1, 1, 3))
        np.testing.assert_allclose(attr[0, k], expected, atol=1e-6)
    # of the probability: sigma'(z) = p (1 - p) times the weight
    attr_p, out = saliency.attributions(regions, x, [0, 1, 2], method="gradient", target="probability")
    for k in range(3):
        factor = out[0, k] * (1 - out[0, k])
        np.testing.assert_allclose(attr_p[0, k], attr[0, k] * factor, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("target", ["logit", "probability"])
@pytest.mark.parametrize("which", ["regions", "squared", "small"])
def test_integrated_gradients_attributions_sum_to_the_score_difference(which, target, request, images):
    """Completeness (Sundararajan et al. 2017): sum of attributions = f(x) - f(baseline)."""
    loaded = request.getfixturevalue(which)
    x = loaded.prepare(images[:2])
    classes = [0, 1, 2]
    attr, _ = saliency.attributions(loaded, x, classes, method="integrated-gradients", target=target,
                                    options=SaliencyOptions(steps=64))
    at_x, at_base = saliency.baseline_scores(loaded, x, classes, target=target)
    total = attr.sum(axis=(2, 3, 4))
    tolerance = 1e-2 if target == "probability" else 1e-2 * max(1.0, float(np.abs(at_x - at_base).max()))
    np.testing.assert_allclose(total, at_x - at_base, atol=tolerance)
    # and the map is the per-pixel sum over the channels
    maps, _ = saliency.raw_maps(loaded, x, classes, method="integrated-gradients", target=target,
                                options=SaliencyOptions(steps=64))
    np.testing.assert_allclose(maps.sum(axis=(2, 3)), total, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Shapes, seeds, batching
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", cam.GRADIENT_METHODS)
def test_shapes_and_ranges_on_a_conv_model_for_any_class(small, images, method):
    options = SaliencyOptions(samples=4, steps=8)
    results = cam.explain_batch(small, images, ["Mass", "Edema"], method=method, saliency_options=options)
    probs = small.predict(images)
    for img, result, p in zip(images, results, probs):
        assert result.maps.shape == (2, *img.shape) and result.maps.dtype == np.float32
        assert 0 <= result.maps.min() and result.maps.max() <= 1 + 1e-6
        np.testing.assert_allclose(result.probs, p, atol=1e-5)
        assert result.method == method and result.layer == "input"
    maps, out, used = cam.raw_maps(small, small.prepare(images), [9, 1, 4], method=method, saliency_options=options)
    assert maps.shape == (2, 3, 32, 32) and out.shape == (2, 14) and used == "input"
    empty, _, _ = cam.raw_maps(small, small.prepare(images), [], method=method)
    assert empty.shape == (2, 0, 32, 32)


def test_smoothgrad_is_deterministic_with_a_seed_and_changes_with_another(small, images):
    x = small.prepare(images[:1])

    def run(seed: int, chunk: int = 32) -> np.ndarray:
        return saliency.raw_maps(small, x, [9], method="smoothgrad", options=SaliencyOptions(samples=6, seed=seed),
                                 chunk=chunk)[0]

    first = run(0)
    np.testing.assert_array_equal(first, run(0))
    np.testing.assert_allclose(first, run(0, chunk=4), rtol=1e-4, atol=1e-6)  # batching does not change the noise
    assert not np.allclose(first, run(1))
    for method in ("gradient", "integrated-gradients"):  # no randomness at all
        a = saliency.raw_maps(small, x, [9], method=method)[0]
        np.testing.assert_array_equal(a, saliency.raw_maps(small, x, [9], method=method)[0])


def test_batched_over_classes_and_images_equals_one_at_a_time(small, images):
    x = small.prepare(images)
    for method in cam.GRADIENT_METHODS:
        options = SaliencyOptions(samples=5, steps=6)
        batched, _ = saliency.raw_maps(small, x, [9, 1, 4], method=method, options=options, chunk=100)
        for j, k in enumerate([9, 1, 4]):
            for i in range(len(x)):
                single, _ = saliency.raw_maps(small, x[i:i + 1], [k], method=method, options=options, chunk=1)
                np.testing.assert_allclose(batched[i, j], single[0, 0], rtol=2e-4,
                                           atol=1e-6 * float(np.abs(batched[i, j]).max()) + 1e-9)


def test_smoothgrad_with_zero_noise_and_one_sample_is_the_gradient(small, images):
    x = small.prepare(images[:1])
    plain, _ = saliency.raw_maps(small, x, [3], method="gradient")
    smooth, _ = saliency.raw_maps(small, x, [3], method="smoothgrad", options=SaliencyOptions(samples=1, noise=0.0))
    np.testing.assert_allclose(plain, smooth, rtol=1e-5, atol=1e-8)


def test_bad_settings_are_domain_errors(small, images):
    for kwargs, match in (({"samples": 0}, "samples"), ({"samples": 2.5}, "samples"), ({"noise": 1.5}, "noise"),
                          ({"noise": -0.1}, "noise"), ({"steps": 0}, "steps"), ({"seed": -1}, "seed")):
        with pytest.raises(ConfigError, match=match):
            SaliencyOptions(**kwargs)
    x = small.prepare(images[:1])
    with pytest.raises(ConfigError, match="target"):
        saliency.raw_maps(small, x, [0], target="softmax")
    with pytest.raises(ConfigError, match="class indices"):
        saliency.raw_maps(small, x, [14])
    with pytest.raises(ConfigError, match="input pixels, not on layer"):
        cam.explain(small, images[0], ["Mass"], method="smoothgrad", layer="block2_conv")
    assert cam.describe_method("smoothgrad", SaliencyOptions(samples=10, noise=0.2)) == \
        "SmoothGrad (10 samples, noise 0.2)"


# --------------------------------------------------------------------------------------------
# Which model supports which method
# --------------------------------------------------------------------------------------------

def test_supported_methods_of_a_conv_model_and_of_a_flat_one(small, regions):
    assert cam.supported_methods(small) == cam.METHODS
    assert all(reason is None for reason in cam.method_support(small).values())
    assert cam.supported_methods(regions) == cam.GRADIENT_METHODS
    reasons = cam.method_support(regions)
    assert all("GlobalAveragePooling2D" in reasons[m] for m in cam.CAM_METHODS)
    with pytest.raises(Exception, match="GlobalAveragePooling2D"):
        cam.explain(regions, np.zeros((SIZE, SIZE), np.float32), method="cam")


def test_a_token_model_with_a_sigmoid_dense_head_has_gradient_maps(images):
    """A ViT-like model: patches -> tokens (3-D) -> pooled -> Dense(sigmoid); no 4-D map after the patching."""
    import keras

    keras.utils.set_random_seed(5)
    inputs = keras.Input((SIZE, SIZE, 3))
    patches = keras.layers.Conv2D(16, 4, strides=4, name="patchify")(inputs)  # (6, 6, 16)
    tokens = keras.layers.Reshape((36, 16))(patches)
    mixed = keras.layers.Dense(16, activation="gelu")(keras.layers.LayerNormalization()(tokens))
    pooled = keras.layers.GlobalAveragePooling1D()(mixed)
    out = keras.layers.Dense(14, activation="sigmoid", name="head")(pooled)
    loaded = _loaded(keras.Model(inputs, out), SIZE, backbone="vit")
    assert cam.supported_methods(loaded) == cam.GRADIENT_METHODS
    sm = saliency.saliency_model(loaded.model)
    assert "head" in sm.logit_source
    x = loaded.prepare(images[:1])
    logits, probs = sm.scores(x, range(14))
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), probs, atol=1e-5)
    for method in cam.GRADIENT_METHODS:
        result = cam.explain(loaded, images[1], ["Mass"], method=method, saliency_options=SaliencyOptions(samples=3))
        assert result.maps.shape == (1, 40, 30) and result.maps.max() == pytest.approx(1.0, abs=1e-5)


def test_a_keras_hub_vit_has_every_gradient_method_and_completeness(images):
    """The project's ViT backbone (tiny): no CAM, and the gradients through attention work for several classes
    at once (GradientTape.batch_jacobian's vectorization crashed TensorFlow on this graph)."""
    pytest.importorskip("keras_hub")
    from cxrcore.train.model import ViTConfig

    model = build_model(input_size=32, backbone="vit_b16",
                        vit_config=ViTConfig(patch_size=8, num_layers=1, hidden_dim=16, num_heads=2, mlp_dim=32))
    loaded = _loaded(model, 32, backbone="vit_b16")
    assert cam.supported_methods(loaded) == cam.GRADIENT_METHODS
    x = loaded.prepare(images[:1])
    for method in cam.GRADIENT_METHODS:
        maps, _ = saliency.raw_maps(loaded, x, [0, 9], method=method, options=SaliencyOptions(samples=3, steps=8))
        assert maps.shape == (1, 2, 32, 32) and np.isfinite(maps).all() and np.abs(maps).max() > 0
    attr, _ = saliency.attributions(loaded, x, [0, 9], method="integrated-gradients", options=SaliencyOptions(steps=64))
    at_x, at_base = saliency.baseline_scores(loaded, x, [0, 9])
    np.testing.assert_allclose(attr.sum(axis=(2, 3, 4)), at_x - at_base, atol=1e-2)


def test_the_logit_is_found_through_a_final_sigmoid_or_recovered_from_the_probability(regions, images):
    import keras

    assert "predictions" in saliency.saliency_model(regions.model).logit_source
    inputs = keras.Input((SIZE, SIZE, 3))
    out = keras.layers.Lambda(lambda t: keras.ops.sigmoid(keras.ops.mean(t, axis=(1, 2))))(inputs)  # 3 outputs
    odd = _loaded(keras.Model(inputs, out), SIZE, labels=LABELS3, backbone="odd")
    sm = saliency.saliency_model(odd.model)
    assert "log(p / (1 - p))" in sm.logit_source
    x = odd.prepare(images[:1])
    logits, probs = sm.scores(x, [0, 1, 2])
    np.testing.assert_allclose(logits, x.mean(axis=(1, 2)), atol=1e-4)


# --------------------------------------------------------------------------------------------
# Faithfulness, pointing and agreement for every method
# --------------------------------------------------------------------------------------------

def test_faithfulness_curves_rank_the_true_map_above_a_wrong_one():
    regions = _loaded(region_model(scale=0.05), SIZE, labels=LABELS3, backbone="flat")  # p(x) about 0.85
    image = np.full((SIZE, SIZE), 0.2, np.float32)
    image[_region_mask(0)] = 1.0  # bright in the region output 0 reads (positive weight)
    truth = cam.explain(regions, image, [LABELS3[0]], method="gradient").maps[0]
    wrong = np.zeros_like(truth)
    wrong[_region_mask(1)] = 1.0
    good = faithfulness_curves(regions, image, truth, LABELS3[0], steps=8, grid=8)
    bad = faithfulness_curves(regions, image, wrong, LABELS3[0], steps=8, grid=8)
    assert len(good.fractions) == 9 and good.fractions[0] == 0 and good.fractions[-1] == 1
    assert good.deletion[0] == pytest.approx(regions.predict([image])[0, 0], abs=1e-5)
    assert good.deletion_auc < bad.deletion_auc and good.insertion_auc > bad.insertion_auc
    assert good.deletion_auc < good.random_deletion_auc
    assert set(good.summary()) == {"deletion AUC", "insertion AUC", "deletion AUC (random)", "insertion AUC (random)"}
    assert list(good.table().columns)[:3] == ["fraction", "p deletion", "p insertion"]
    with pytest.raises(ConfigError, match="steps"):
        faithfulness_curves(regions, image, truth, LABELS3[0], steps=0)


@pytest.mark.parametrize("method", cam.GRADIENT_METHODS)
def test_the_pointing_game_scores_gradient_maps_on_the_region_box(regions, method):
    image = np.full((SIZE, SIZE), 0.2, np.float32)
    image[_region_mask(0)] = 1.0
    heat = cam.explain(regions, image, [LABELS3[0]], method=method, saliency_options=SaliencyOptions(samples=4)).maps[0]
    y0, y1, x0, x1 = REGIONS[0]
    score = score_map(heat, (x0, y0, x1 - x0, y1 - y0))
    assert score["hit"] and score["iobb"] > 0.9


def test_map_agreement_spearman_and_top_overlap():
    rng = np.random.default_rng(0)
    a = rng.random((40, 50)).astype(np.float32)
    same = map_agreement(a, a)
    assert same["spearman"] == pytest.approx(1.0) and same["top IoU"] == pytest.approx(1.0)
    flipped = map_agreement(a, 1 - a)
    assert flipped["spearman"] == pytest.approx(-1.0) and flipped["top IoU"] == 0.0
    monotone = map_agreement(a, a ** 3)  # ranks unchanged by a monotone transform
    assert monotone["spearman"] == pytest.approx(1.0) and monotone["top IoU"] == pytest.approx(1.0)
    independent = map_agreement(a, rng.random((40, 50)).astype(np.float32))
    assert abs(independent["spearman"]) < 0.1 and independent["top IoU"] < 0.15
    half = map_agreement(a, cv2.resize(a, (25, 20)))  # resized to a's size
    assert half["spearman"] > 0.3
    assert np.isnan(map_agreement(a, np.zeros_like(a))["spearman"])
    with pytest.raises(ConfigError):
        map_agreement(a, a, top=0)


def test_agreement_of_gradcam_and_smoothgrad_on_a_conv_model_is_in_range(small, images):
    """The agreement of two methods on a real conv model is a number in range (no NaN for non-flat maps)."""
    one = cam.explain(small, images[1], ["Mass"], method="gradcam").maps[0]
    two = cam.explain(small, images[1], ["Mass"], method="smoothgrad", saliency_options=SaliencyOptions(samples=4)).maps[0]
    agreement = map_agreement(one, two)
    assert -1 <= agreement["spearman"] <= 1 and 0 <= agreement["top IoU"] <= 1


# --------------------------------------------------------------------------------------------
# The cam CLI
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from cxrcore.train.model import save_model

    root = tmp_path_factory.mktemp("saliency-cli")
    model = build_model(input_size=32, backbone="small_cnn")
    path = save_model(model, ModelInfo(input_size=32, normalization=Normalization.sample(), name="tiny",
                                       backbone="small_cnn"), root / "tiny.keras")
    image = np.zeros((48, 40), np.uint8)
    cv2.circle(image, (20, 24), 8, 255, -1)
    cv2.imwrite(str(root / "scan.png"), image)
    return root, path


def test_cam_cli_draws_the_gradient_methods(saved, capsys):
    from cxrcore.cli import main

    root, model = saved
    for method, extra in (("smoothgrad", ["--samples", "4", "--noise", "0.1", "--seed", "2"]),
                          ("integrated-gradients", ["--steps", "8"]), ("gradient", [])):
        out = root / f"{method}.png"
        assert main(["cam", "--model", str(model), "--image", str(root / "scan.png"), "--class", "Mass",
                     "--method", method, *extra, "--out", str(out)]) == 0
        assert cv2.imread(str(out)) is not None
        err = capsys.readouterr().err
        assert cam.METHOD_TITLES[method] in err


@pytest.mark.parametrize("argv, match", [
    (["--method", "smoothgrad", "--samples", "0"], "--samples"),
    (["--method", "smoothgrad", "--noise", "2"], "--noise"),
    (["--method", "integrated-gradients", "--steps", "-3"], "--steps"),
    (["--method", "smoothgrad", "--seed", "-1"], "--seed"),
    (["--method", "gradient", "--layer", "block2_conv"], "input pixels"),
])
def test_cam_cli_refuses_bad_saliency_settings_with_one_line(saved, capsys, argv, match):
    from cxrcore.cli import main

    root, model = saved
    code = main(["cam", "--model", str(model), "--image", str(root / "scan.png"), *argv, "--out",
                 str(root / "bad.png"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and match in err and len(err.splitlines()) == 1, err


def test_the_cli_lists_every_method():
    from cxrcore.commands import cam as command

    assert command.METHOD_CHOICES == cam.METHODS


def test_cam_cli_refuses_cam_on_a_model_without_the_pooled_head(tmp_path, capsys):
    import keras

    from cxrcore.cli import main
    from cxrcore.train.model import save_model

    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    logits = keras.layers.Dense(14, name="logits")(keras.layers.Flatten()(inputs))
    flat = keras.Model(inputs, keras.layers.Activation("sigmoid", name="predictions")(logits))
    path = save_model(flat, ModelInfo(input_size=SIZE, normalization=Normalization.sample(), backbone="flat"),
                      tmp_path / "flat.keras")
    cv2.imwrite(str(tmp_path / "scan.png"), np.full((30, 30), 128, np.uint8))
    argv = ["cam", "--model", str(path), "--image", str(tmp_path / "scan.png"), "--class", "Mass", "--quiet"]
    assert main([*argv, "--method", "cam", "--out", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "GlobalAveragePooling2D" in err and len(err.splitlines()) == 1
    assert main([*argv, "--method", "integrated-gradients", "--out", str(tmp_path / "b.png")]) == 0


def test_cam_cli_split_with_boxes_and_faithfulness_for_a_gradient_method(saved, tmp_path, capsys):
    import pandas as pd

    from cxrcore.cli import main
    from cxrcore.data.boxes import write_boxes

    _, model = saved
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    rng = np.random.default_rng(1)
    for i in range(3):
        name = f"{i + 1:08d}_000.png"
        img = (rng.random((40, 40)) * 80).astype(np.uint8)
        cv2.circle(img, (12 + 8 * i, 20), 6, 255, -1)
        cv2.imwrite(str(images / name), img)
        rows.append([name, *([0] * 14), i + 1])
    frame = pd.DataFrame(rows, columns=["Image", *LABELS, "PatientId"])
    frame.loc[:, "Mass"] = 1
    frame.to_csv(tmp_path / "test.csv", index=False)
    write_boxes(pd.DataFrame({"Image": frame["Image"], "Label": "Mass", "x": [6.0, 14.0, 22.0], "y": 14.0,
                              "w": 12.0, "h": 12.0}), tmp_path / "bbox.csv")
    out = tmp_path / "out"
    assert main(["cam", "--model", str(model), "--split", str(tmp_path / "test.csv"), "--images", str(images),
                 "--method", "smoothgrad", "--samples", "3", "--faithfulness", "--out", str(out), "--quiet"]) == 0
    records = pd.read_csv(out / "localization.csv")
    assert len(records) == 3 and set(records["hit"]) <= {True, False}
    areas = pd.read_csv(out / "faithfulness_auc.csv")
    assert list(areas["Image"]) == list(frame["Image"])
    assert ((areas["deletion AUC"] >= 0) & (areas["insertion AUC"] <= 1)).all()
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "Method: SmoothGrad (3 samples, noise 0.15)" in report and "deletion / insertion curves" in report
