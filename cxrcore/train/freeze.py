"""The model a run trains: built from its config, with the frozen layers the config asks for.
"""
from __future__ import annotations

from typing import Any

from cxrcore.errors import CxrError, ModelError
from cxrcore.train.trainconfig import TrainConfig


def _blocks(backbone: str, model: Any = None) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Per block, first to last: (layer-name prefixes, exact layer names) of the backbone's layers (see
    cxrcore.train.model.backbone_layers). A DenseNet block includes the transition layers before it, and the
    last one the final "bn"/"relu"; ResNet50's are its stages conv2..conv5, EfficientNetV2-S's its stages
    block1..block6 (the last with the top conv), the ViT's its transformer layers (the last with the final
    norm; counted on `model`, so a smaller test ViT has fewer)."""
    if backbone == "densenet121":
        return [(("conv2_block",), ()), (("pool2_", "conv3_block"), ()), (("pool3_", "conv4_block"), ()),
                (("pool4_", "conv5_block"), ("bn", "relu"))]
    if backbone == "resnet50":
        return [((f"conv{i}_",), ()) for i in range(2, 6)]
    if backbone == "efficientnetv2_s":
        return [((f"block{i}",), ("top_conv", "top_bn", "top_activation") if i == 6 else ()) for i in range(1, 7)]
    if backbone == "vit_b16":
        from cxrcore.train.model import VIT_CONFIGS, VIT_LAYER

        n = (model.get_layer(VIT_LAYER).num_layers if model is not None
             else VIT_CONFIGS["vit_b16"].num_layers)
        return [((), (f"transformer_block_{i}",) + (("ln",) if i == n else ())) for i in range(1, n + 1)]
    return [((f"block{i}_",), ("features",) if i == 4 else ()) for i in range(1, 5)]


def apply_freeze(model: Any, freeze: str, backbone: str) -> int:
    """Set trainable for "head" / "last:N" / "first:N" / "none"; returns the number of trainable weight tensors.

    "head" freezes every backbone layer, "last:N" all but the last N blocks, "first:N" the first N
    backbone layers in order (cxrcore.train.model.backbone_layers, input layer included, as the course's
    references froze `base_model.layers[:50]`). The head is always trained. Frozen BatchNormalization
    layers run in inference mode (Keras 3), as fine-tuning needs.
    """
    from cxrcore.train.model import backbone_layers

    _set_trainable(model, True)  # every layer and nested layer first; then the frozen ones
    if freeze == "none":
        return len(model.trainable_weights)
    layers = backbone_layers(model)
    mode, _, number = freeze.partition(":")
    if mode == "first":
        n = int(number)
        if not 1 <= n <= len(layers):
            raise ModelError(f"freeze = {freeze!r}, but this {backbone} has {len(layers)} backbone layers.",
                             fix=f"use first:1 to first:{len(layers)}.")
        frozen = layers[:n]
    else:
        prefixes: tuple[str, ...] = ()
        exact: set[str] = set()
        if mode == "last":
            blocks = _blocks(backbone, model)
            if not 1 <= int(number) <= len(blocks):
                raise ModelError(f"freeze = {freeze!r}, but this {backbone} has {len(blocks)} blocks.",
                                 fix=f"use last:1 to last:{len(blocks)}.")
            for block_prefixes, names in blocks[-int(number):]:
                prefixes += block_prefixes
                exact.update(names)
        frozen = [layer for layer in layers
                  if not (layer.name in exact or (bool(prefixes) and layer.name.startswith(prefixes)))]
    for layer in frozen:
        _set_trainable(layer, False)
    return len(model.trainable_weights)


def _set_trainable(layer: Any, value: bool) -> None:
    """trainable = value for the layer and every layer nested in it, each set on its own: Keras' setter does
    nothing when the layer already has that value, so sublayers frozen earlier would stay frozen."""
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        sub.trainable = value


def build_models(config: TrainConfig, labels: tuple[str, ...], *, pretrained: bool = True):
    """(model with sigmoid outputs, logits model sharing its weights); call inside strategy.scope()."""
    from cxrcore.train.model import build_model, logits_model

    weights: str | None = None
    if pretrained and config.initial_weights != "none":
        weights = config.initial_weights
    try:
        model = build_model(labels, config.input_size, weights, backbone=config.backbone,
                            name=f"{config.backbone}_cxr")
    except CxrError:
        raise
    except Exception as err:  # a failed ImageNet download surfaces as URLError/HTTPError/OSError/ValueError
        if weights == "imagenet":
            raise ModelError(f"the ImageNet weights could not be downloaded ({type(err).__name__}: {err}).",
                             fix='connect to the internet once (Keras keeps them in ~/.keras/models), or set '
                                 'initial_weights = "none" or a local .h5 weights file.') from None
        raise
    apply_freeze(model, config.freeze, config.backbone)
    return model, logits_model(model)
