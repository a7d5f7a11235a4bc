"""The ImageNet backbones beside DenseNet121 (ResNet50, EfficientNetV2-S, ViT-B/16) on tiny random models:
shapes, seeded determinism, input scaling, freezing (head, last:N, first:N), saving and loading with
ModelInfo, predictions, CAM availability, and where their pretrained weights come from (never downloaded:
CXR_OFFLINE=1). The ViT is a tiny keras-hub ViTBackbone (2 layers, width 32, patch 8) unless a test
needs ViT-B/16's shape."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from cxrcore.data.pipeline import IMAGENET_MEAN, IMAGENET_STD, Normalization
from cxrcore.errors import ConfigError, ModelError
from cxrcore.train import model as M
from cxrcore.train import trainconfig

SIZE = 32
LABELS3 = ("Mass", "Edema", "Nodule")
TINY_VIT = M.ViTConfig(patch_size=8, num_layers=2, hidden_dim=32, num_heads=2, mlp_dim=64)
NEW_BACKBONES = ("resnet50", "efficientnetv2_s", "vit_b16")


@pytest.fixture
def tiny_vit(monkeypatch) -> M.ViTConfig:
    """backbone "vit_b16" builds the tiny ViT in this test (training, presets and apply_freeze read it too)."""
    monkeypatch.setitem(M.VIT_CONFIGS, "vit_b16", TINY_VIT)
    return TINY_VIT


def _images(n: int = 3, size: int = 40, seed: int = 0) -> np.ndarray:
    """[0, 1] grayscale images (another size than the model's: predict() resizes)."""
    return np.random.default_rng(seed).random((n, size, size)).astype(np.float32)


def _build(backbone: str, seed: int = 0, size: int = SIZE) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return M.build_model(LABELS3, size, backbone=backbone)


@pytest.mark.parametrize("backbone", NEW_BACKBONES)
def test_each_backbone_has_the_shared_head_and_is_deterministic_with_a_seed(backbone, tiny_vit):
    model = _build(backbone, seed=3)
    assert model.input.shape[1:] == (SIZE, SIZE, 3) and model.output.shape[1:] == (len(LABELS3),)
    assert model.get_layer(M.LOGITS_LAYER).dtype_policy.compute_dtype == "float32"
    assert model.get_layer(M.INPUT_SCALING_LAYER) is model.layers[1]  # right after the input
    x = Normalization("imagenet").apply(np.repeat(_images(2, SIZE)[..., None], 3, axis=-1))
    probs = np.asarray(model(x, training=False))
    assert probs.shape == (2, 3) and np.all((probs > 0) & (probs < 1))
    weights = model.get_weights()
    same, other = _build(backbone, seed=3).get_weights(), _build(backbone, seed=4).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(weights, same))  # same seed, same model
    assert not all(np.array_equal(a, b) for a, b in zip(weights, other))


def test_input_scaling_gives_each_backbone_the_scale_its_weights_expect():
    p = np.linspace(0.0, 1.0, 11, dtype=np.float32)
    x = (np.stack([p] * 3, axis=-1) - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)  # 'imagenet' normalization
    caffe_bgr = np.array([103.939, 116.779, 123.68])
    expected = {"resnet50": 255 * p[:, None] - caffe_bgr,  # gray: BGR and RGB are the same image
                "efficientnetv2_s": np.repeat((255 * p / 128 - 1)[:, None], 3, axis=1),
                "vit_b16": np.repeat((2 * p - 1)[:, None], 3, axis=1)}
    for backbone, want in expected.items():
        scale, offset = M.input_scaling(backbone)
        np.testing.assert_allclose(x * np.array(scale) + np.array(offset), want, atol=1e-3, err_msg=backbone)
    assert M.input_scaling("densenet121") is None and M.input_scaling("small_cnn") is None


def test_layer_counts_for_first_n_match_the_built_backbones(monkeypatch):
    # ViT-B/16's count depends on its depth only: 12 narrow layers stand in for the 86M-weight model
    monkeypatch.setitem(M.VIT_CONFIGS, "vit_b16", dataclasses.replace(TINY_VIT, patch_size=16, num_layers=12))
    for backbone in M.BACKBONES:
        built = M.build_model(LABELS3, SIZE, backbone=backbone)
        layers = M.backbone_layers(built)
        assert len(layers) == trainconfig.N_LAYERS[backbone], backbone
        assert isinstance(layers[0], keras.layers.InputLayer)  # counted as the references' layers[:50] did
        assert not {M.LOGITS_LAYER, M.OUTPUT_LAYER, M.POOL_LAYER} & {layer.name for layer in layers}
    assert trainconfig.BACKBONES == M.BACKBONES and set(trainconfig.N_BLOCKS) == set(M.BACKBONES)


def _trainable(model: keras.Model) -> set[str]:
    return {layer.name for layer in M.backbone_layers(model) if layer.trainable and layer.weights}


def test_freezing_first_n_layers_and_last_blocks_per_backbone(tiny_vit):
    from cxrcore.train.freeze import apply_freeze

    resnet = _build("resnet50")
    n_all = len(resnet.trainable_weights)
    assert apply_freeze(resnet, "head", "resnet50") == 2 and _trainable(resnet) == set()
    apply_freeze(resnet, "last:1", "resnet50")
    assert _trainable(resnet) and all(name.startswith("conv5_") for name in _trainable(resnet))
    apply_freeze(resnet, "first:50", "resnet50")
    layers = M.backbone_layers(resnet)
    assert not any(layer.trainable for layer in layers[:50]) and all(layer.trainable for layer in layers[50:])
    assert resnet.get_layer(M.LOGITS_LAYER).trainable
    assert apply_freeze(resnet, "none", "resnet50") == n_all

    effnet = _build("efficientnetv2_s")
    apply_freeze(effnet, "last:1", "efficientnetv2_s")
    assert {"block6a_expand_conv", "top_conv", "top_bn"} <= _trainable(effnet)
    assert not any(name.startswith(("stem_", "block5")) for name in _trainable(effnet))

    vit = _build("vit_b16")
    total = len(vit.trainable_weights)
    apply_freeze(vit, "last:1", "vit_b16")
    assert _trainable(vit) == {"transformer_block_2", "ln"}
    apply_freeze(vit, "first:3", "vit_b16")  # input, input scaling, patch embedding
    assert _trainable(vit) == {"transformer_block_1", "transformer_block_2", "ln"}
    head = vit.get_layer(M.LOGITS_LAYER).trainable_weights
    embedding = vit.get_layer(M.VIT_LAYER).get_layer("vit_patching_and_embedding").weights
    assert len(vit.trainable_weights) == total - len(embedding) and len(head) == 2
    with pytest.raises(ModelError, match="has 2 blocks"):
        apply_freeze(vit, "last:3", "vit_b16")
    with pytest.raises(ModelError, match="has 6 backbone layers"):
        apply_freeze(vit, "first:7", "vit_b16")


@pytest.mark.parametrize("backbone", ["resnet50", pytest.param("efficientnetv2_s", marks=pytest.mark.slow), "vit_b16"])
def test_saved_with_model_info_loads_back_and_predicts_the_same(backbone, tiny_vit, tmp_path):
    model = _build(backbone, seed=1)
    info = M.ModelInfo(labels=LABELS3, input_size=SIZE, normalization=Normalization("imagenet"), backbone=backbone,
                       name=f"tiny-{backbone}")
    path = M.save_model(model, info, tmp_path / f"{backbone}.keras")
    loaded = M.load_model(path)
    assert loaded.info == info and M.read_model_info(path) == info
    images = _images()
    probs = loaded.predict(images)
    assert probs.shape == (3, 14) and np.isnan(probs).sum() == 3 * 11  # 11 labels this model does not predict
    reference = M.LoadedModel(model, info).predict(images)
    np.testing.assert_allclose(probs, reference, atol=1e-5)
    if backbone == "vit_b16":
        assert not M.has_feature_map(loaded.model)
        with pytest.raises(ModelError, match="no convolutional feature map"):
            M.cam_layers(loaded.model)
    else:
        assert M.has_feature_map(loaded.model)
        feature, dense = M.cam_layers(loaded.model)
        assert dense == M.LOGITS_LAYER and len(loaded.model.get_layer(feature).output.shape) == 4


def test_a_saved_model_naming_other_keras_hub_classes_is_refused(tiny_vit, tmp_path):
    model = _build("vit_b16")
    path = M.save_model(model, M.ModelInfo(labels=LABELS3, input_size=SIZE, backbone="vit_b16"),
                        tmp_path / "vit.keras")
    forged = tmp_path / "forged.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(forged, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "config.json":
                data = data.replace(b'"class_name": "ViTBackbone"', b'"class_name": "ViTImageClassifier"')
                data = data.replace(b"keras_hub.src.models.vit.vit_backbone", b"keras_hub.src.models.vit.vit_image_classifier")
            dst.writestr(item, data)
    with pytest.raises(ModelError, match="only keras-hub's ViTBackbone"):
        M.load_model(forged)


def test_vit_input_size_must_be_a_multiple_of_the_patch(tiny_vit):
    with pytest.raises(ConfigError, match="multiple of 8"):
        M.build_model(LABELS3, 36, backbone="vit_b16")


# ---------------------------------------------------------------- where pretrained weights come from

@pytest.fixture
def offline_roots(monkeypatch, tmp_path) -> Path:
    """Empty Keras and keras-hub caches and models root, offline; returns the models root."""
    monkeypatch.setattr(M, "keras_cache_dirs", lambda: [tmp_path / "keras" / "models"])
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.setenv("CXR_OFFLINE", "1")
    monkeypatch.setattr(M, "_REACHABLE", {})
    return tmp_path / "models"


def _vit_preset(folder: Path, size: int = SIZE, seed: int = 5) -> keras.Model:
    """A keras-hub preset folder (config.json, model.weights.h5) of the current vit_b16 config; returns it."""
    import keras_hub

    keras.utils.set_random_seed(seed)
    config = M.VIT_CONFIGS["vit_b16"]
    backbone = keras_hub.models.ViTBackbone(image_shape=(size, size, 3), patch_size=config.patch_size,
                                            num_layers=config.num_layers, num_heads=config.num_heads,
                                            hidden_dim=config.hidden_dim, mlp_dim=config.mlp_dim)
    backbone.save_to_preset(str(folder))
    return backbone


def test_keras_applications_weights_are_found_per_backbone(offline_roots, monkeypatch, tmp_path):
    found = M.find_imagenet_weights(offline_roots, backbone="resnet50")
    assert found.source == "unavailable" and M.IMAGENET_FILES["resnet50"].file in found.note
    assert "densenet.hdf5" not in found.note  # the course's file stands in for DenseNet121 only
    spec = M.IMAGENET_FILES["efficientnetv2_s"]
    cached = tmp_path / "keras" / "models" / spec.file
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"partial")
    assert M.cached_imagenet_weights("efficientnetv2_s") is None  # wrong checksum
    monkeypatch.setitem(M.IMAGENET_FILES, "efficientnetv2_s",
                        dataclasses.replace(spec, md5=hashlib.md5(b"partial").hexdigest()))
    assert M.find_imagenet_weights(offline_roots, backbone="efficientnetv2_s").source == "cache"
    assert M.cached_imagenet_weights("resnet50") is None and M.cached_imagenet_weights("vit_b16") is None
    urls = {M.weights_url(b) for b in ("densenet121", "resnet50", "efficientnetv2_s", "vit_b16")}
    assert len(urls) == 4 and M.weights_url("small_cnn") is None


def test_each_backbone_is_checked_at_its_own_url(offline_roots, monkeypatch):
    from tests.app_support import answer_every_url

    asked = answer_every_url(monkeypatch)
    monkeypatch.setenv("CXR_OFFLINE", "0")
    assert M.find_imagenet_weights(offline_roots, backbone="resnet50").source == "download"
    assert M.find_imagenet_weights(offline_roots, backbone="vit_b16").source == "download"
    assert [url for _, url, _ in asked] == [M.IMAGENET_FILES["resnet50"].url, M.VIT_PRESET_URL]


def test_vit_pretrained_weights_offline_are_refused_before_launch_naming_the_preset_folder(offline_roots):
    from tests.test_training import make_shapes_dataset

    data = make_shapes_dataset(offline_roots.parent / "shapes", counts=(("train", 8), ("valid", 4)), size=32)
    with pytest.raises(ConfigError) as err:
        trainconfig.config_from_dict({"dataset": str(data), "backbone": "vit_b16", "input_size": 224},
                                     models_root=offline_roots)
    text = str(err.value)
    assert "setting 'initial_weights'" in text and "ViT-B/16" in text and "no internet" in text
    assert str(offline_roots / M.VIT_PRESET_DIR) in text and M.VIT_PRESET in text and 'initial_weights = "none"' in text
    with pytest.raises(ConfigError, match="copy resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        trainconfig.config_from_dict({"dataset": str(data), "backbone": "resnet50"}, models_root=offline_roots)


def test_a_vit_preset_folder_in_the_models_root_is_used_offline_and_fills_the_model(offline_roots, tiny_vit):
    from tests.test_training import make_shapes_dataset

    folder = offline_roots / M.VIT_PRESET_DIR
    preset = _vit_preset(folder)
    assert M.vit_preset_problem(folder) is None
    found = M.find_imagenet_weights(offline_roots, backbone="vit_b16")
    assert found.source == "preset folder" and found.path == folder.resolve()
    data = make_shapes_dataset(offline_roots.parent / "shapes", counts=(("train", 8), ("valid", 4)), size=32)
    config = trainconfig.config_from_dict({"dataset": str(data), "backbone": "vit_b16", "input_size": SIZE},
                                          models_root=offline_roots)
    assert config.initial_weights == str(folder.resolve())
    assert trainconfig.config_from_dict(json.loads(config.to_json())) == config  # the run folder's copy reads back
    model = M.build_model(LABELS3, SIZE, config.initial_weights, backbone="vit_b16")
    for part in ("vit_patching_and_embedding", "vit_encoder"):
        for want, got in zip(preset.get_layer(part).weights, model.get_layer(M.VIT_LAYER).get_layer(part).weights):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # another input size: the position embeddings are resized on the patch grid (4x4 -> 6x6 patches)
    bigger = M.build_model(LABELS3, 48, str(folder), backbone="vit_b16")
    table = bigger.get_layer(M.VIT_LAYER).get_layer("vit_patching_and_embedding").position_embedding.embeddings
    assert tuple(table.shape) == (1 + 36, TINY_VIT.hidden_dim)
    source = np.asarray(preset.get_layer("vit_patching_and_embedding").position_embedding.embeddings)
    np.testing.assert_array_equal(np.asarray(table)[0], source[0])  # the class token's position is kept


def test_a_preset_of_another_vit_or_a_file_is_refused(offline_roots, tiny_vit, tmp_path, monkeypatch):
    _vit_preset(tmp_path / "preset")
    with pytest.raises(ModelError, match="not as a single file"):
        M.build_model(LABELS3, SIZE, tmp_path / "preset" / "config.json", backbone="vit_b16")
    monkeypatch.setitem(M.VIT_CONFIGS, "vit_b16", dataclasses.replace(TINY_VIT, hidden_dim=64))
    problem = M.vit_preset_problem(tmp_path / "preset")
    assert problem and "another ViT" in problem
    with pytest.raises(ModelError, match="another ViT"):
        M.build_model(LABELS3, SIZE, tmp_path / "preset", backbone="vit_b16")
    assert "not a keras-hub preset folder" in M.vit_preset_problem(tmp_path)


# ---------------------------------------------------------------- training

def test_one_epoch_of_a_tiny_vit_trains_with_first_n_frozen_and_saves_a_loadable_model(tiny_vit, tmp_path):
    from cxrcore.train import jobs
    from cxrcore.train.job import run_job
    from tests.test_training import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "shapes", counts=(("train", 32), ("valid", 16)), size=SIZE)
    config = trainconfig.config_from_dict({
        "dataset": str(data), "backbone": "vit_b16", "input_size": SIZE, "initial_weights": "none",
        "freeze": "first:3", "labels": ["Mass"], "epochs": 1, "batch_size": 16, "augmentation": False,
        "predict_test": False, "normalization": "imagenet", "cache": "none"})
    run_dir = jobs.create_run(tmp_path / "runs", config)
    lines: list[str] = []
    result = run_job(run_dir, config, log=lines.append)
    assert result.state == "finished" and result.epochs_done == 1, lines
    assert any("vit_b16 at 32 px, freeze first:3" in line for line in lines)
    loaded = M.load_model(run_dir / "best.keras")
    assert loaded.info.backbone == "vit_b16" and loaded.info.labels == ("Mass",)
    assert loaded.info.metadata["freeze"] == "first:3"
    assert loaded.predict(_images(2)).shape == (2, 14)


def test_the_model_list_shows_weights_files_as_backbones_and_hides_preset_folders(offline_roots, tiny_vit):
    from cxrcore.train.registry import KIND_BACKBONE, discover_models

    _vit_preset(offline_roots / M.VIT_PRESET_DIR)
    keras_file = offline_roots / "imagenet" / M.IMAGENET_FILES["resnet50"].file
    keras_file.parent.mkdir(parents=True)
    keras_file.write_bytes(b"\x89HDF\r\n\x1a\n")
    entries = discover_models(offline_roots)
    assert [(e.name, e.kind) for e in entries] == [(f"imagenet/{keras_file.stem}", KIND_BACKBONE)]
