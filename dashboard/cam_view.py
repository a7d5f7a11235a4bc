"""GradCAM explorer sections: browse a split by prediction, one image's maps, uploads, localization,
and two methods side by side on the same image (agreement, faithfulness, pointing).

Speed: a split's predictions come from `predictions_for` (computed once, cached on disk); maps are
cached per (model, image, method, layer, classes, smoothing, SmoothGrad / IG settings) at display
size, thumbnails per file, so moving to the next image costs one forward pass (the CAM fast path) and
a few small overlays. Only the methods the model supports are offered (`cam.method_support`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cxrcore.explain import cam
from cxrcore.explain.saliency import SaliencyOptions
from cxrcore.data.dataset import IMAGE, Split
from cxrcore.errors import CxrError
from cxrcore.export import csv_text
from cxrcore.data.labels import LABELS
from cxrcore.train.model import LoadedModel
from cxrcore.data.paths import resolve_image
from cxrcore.train.registry import ModelEntry
from dashboard.charts import CLASS_COLORS, cached_figure, faithfulness_curves_chart
from dashboard.loaders import ActiveDataset, preview_jpeg
from dashboard.models import keep_compiled_functions
from dashboard.widgets import section, teaching_note, user_errors

#: Longest side of the images and maps drawn on the page (and cached).
DISPLAY_SIDE = 512
GRID_COLUMNS = 6
GRID_ROWS = 2
PAGE_SIZE = GRID_COLUMNS * GRID_ROWS
PANELS_PER_ROW = 5
OVERLAY_COLUMNS = 2
DEFAULT_SHOWN = 4
LAYERS_SHOWN = 8
#: Images listed in the image selector around the current one (Previous/Next walk the whole list).
SELECT_WINDOW = 400
FILTERS = ("all images", "true label", "predicted above threshold", "correct", "false positives",
           "false negatives")
SHOW_BEST = "best AUROC"
SHOW_TOP = "top predicted"
SHOW_CHOSEN = "chosen"
SOURCE_SPLIT, SOURCE_UPLOAD = "Browse a split", "Upload an image"
UPLOAD_TYPES = ["png", "jpg", "jpeg", "dcm", "dicom"]
IMAGE_KEY = "cam_image"
COMPARE_KEY = "cam_compare"
#: Methods whose maps depend on SmoothGrad / IG settings (the others ignore them).
_OPTION_METHODS = ("smoothgrad", "integrated-gradients")
#: Widgets drawn only some of the time (comparison, gradient settings) keep their values over the runs where
#: they are hidden, e.g. switching to "Upload an image" and back, or to CAM and back to SmoothGrad.
KEEP = "page"
NO_EVIDENCE = "no evidence (the map is zero everywhere)"
FLAT_NOTE = ("A map that is zero everywhere is drawn without colour: no region of the image raised the class "
             "score for this method, so the model found no evidence for that class here. It is not the same as "
             "a map that is low everywhere.")


@dataclass(frozen=True)
class MapSettings:
    """What the user chose for the maps (method, layer, look, which classes)."""

    method: str = "cam"
    layer: str | None = None
    opacity: float = 0.4
    colormap: str = "jet"
    smooth: float = 0.0
    show: str = SHOW_BEST
    chosen: tuple[str, ...] = ()
    samples: int = 25
    noise: float = 0.15
    steps: int = 32

    @property
    def saliency_options(self) -> SaliencyOptions:
        """SmoothGrad's samples and noise, Integrated Gradients' steps (seed 0: the same map on every run)."""
        return SaliencyOptions(samples=int(self.samples), noise=float(self.noise), steps=int(self.steps))

    def options_key(self, method: str | None = None) -> tuple:
        """What of the gradient settings shapes the maps of `method` (empty for the others: no recompute)."""
        method = method or self.method
        if method == "smoothgrad":
            return (int(self.samples), round(float(self.noise), 4))
        if method == "integrated-gradients":
            return (int(self.steps),)
        return ()

    def with_method(self, method: str, layer: str | None = None) -> "MapSettings":
        """The same look with another method (and layer)."""
        from dataclasses import replace

        return replace(self, method=method, layer=layer)


# --------------------------------------------------------------------------------------------
# Keep TensorFlow's compiled functions across script runs
# --------------------------------------------------------------------------------------------

def model_key(entry: ModelEntry, loaded: LoadedModel) -> str:
    """Identifies the model's maps: the file (path, size, mtime) and its normalization."""
    norm = repr(sorted(loaded.info.normalization.to_dict().items()))
    return f"{entry.fingerprint}-{hashlib.blake2b(norm.encode(), digest_size=4).hexdigest()}"


def display_size(shape: tuple[int, int], side: int = DISPLAY_SIDE) -> tuple[int, int]:
    """(H, W) of an image scaled so its longer side is at most `side`."""
    height, width = int(shape[0]), int(shape[1])
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


@st.cache_data(show_spinner=False, max_entries=128)
def _file_image(path: str, mtime: float, side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """An image file at display size (float32 [0, 1]) and its original (H, W)."""
    import cv2

    from cxrcore.data.images import read_image

    image = read_image(path)
    size = display_size(image.shape, side)
    shown = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA) if size != image.shape else image
    return shown, image.shape[:2]


@st.cache_data(show_spinner=False, max_entries=32)
def _upload_image(data: bytes, name: str, side: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """An uploaded image: the full image (for the model), at display size, and its original (H, W)."""
    import cv2

    from cxrcore.data.images import read_image

    image = read_image(data if not name else _Named(data, name))
    size = display_size(image.shape, side)
    shown = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA) if size != image.shape else image
    return image, shown, image.shape[:2]


class _Named:
    """Bytes with a file name (read_image uses the name for DICOM files without a preamble)."""

    def __init__(self, data: bytes, name: str) -> None:
        self._data, self.name = data, name

    def getvalue(self) -> bytes:
        return self._data


@st.cache_data(show_spinner=False, max_entries=64)
def _maps(key: str, image_key: str, method: str, layer: str | None, labels: tuple[str, ...], smooth: float,
          size: tuple[int, int], options: tuple, _loaded: LoadedModel, _read: Callable[[], np.ndarray],
          _saliency: SaliencyOptions) -> tuple[np.ndarray, np.ndarray, str]:
    """(maps (K, H, W) float16 at display size, probabilities (14,), layer used) for one image.

    options: the part of `_saliency` that shapes this method's maps (the cache key)."""
    result = cam.explain(_loaded, _read(), list(labels), method=method, layer=layer, smooth=smooth, size=size,
                         saliency_options=_saliency)
    return result.maps.astype(np.float16), result.probs, result.layer


def image_maps(key: str, image_key: str, loaded: LoadedModel, read: Callable[[], np.ndarray],
               labels: Sequence[str], settings: MapSettings, size: tuple[int, int]) -> cam.ImageMaps:
    """The maps of one image (cached), as ImageMaps at display size."""
    args = (key, image_key, settings.method, settings.layer, tuple(labels), settings.smooth, tuple(size),
            settings.options_key(), loaded, read, settings.saliency_options)
    description = cam.describe_method(settings.method, settings.saliency_options)
    if settings.method == "cam":
        maps, probs, layer = _maps(*args)
    elif settings.method in cam.GRADIENT_METHODS:
        with st.spinner(f"{description}: input gradients of {len(labels)} classes (the first use compiles the "
                        "backward pass, a few seconds)..."):
            maps, probs, layer = _maps(*args)
    else:
        with st.spinner(f"{cam.METHOD_TITLES[settings.method]}: gradients of {len(labels)} classes (the first use "
                        "of a layer compiles its backward pass, a few seconds)..."):
            maps, probs, layer = _maps(*args)
    return cam.ImageMaps(maps=maps.astype(np.float32), labels=tuple(labels), probs=probs, method=settings.method,
                         layer=layer, extra={"description": description})


@st.cache_data(show_spinner=False, max_entries=64)
def _probabilities(key: str, image_key: str, _loaded: LoadedModel, _read: Callable[[], np.ndarray]) -> np.ndarray:
    """The 14 probabilities of one image (models without the CAM fast path that gives them with the maps)."""
    return _loaded.predict([_read()])[0]


@st.cache_data(show_spinner=False, max_entries=16)
def _support(key: str, _loaded: LoadedModel) -> dict[str, str | None]:
    """cam.method_support of a model: None per supported method, else why not."""
    return cam.method_support(_loaded)


def supported(key: str, loaded: LoadedModel) -> list[str]:
    """The methods the model supports, in cam.METHODS order."""
    return [method for method, reason in _support(key, loaded).items() if reason is None]


@st.cache_data(show_spinner=False, max_entries=16)
def _layers(key: str, _loaded: LoadedModel) -> tuple[list[str], list[str], dict[str, str]]:
    """(map layers of the usual types, all 4-D layers, 'HxWxC' per layer) of a model."""
    model = _loaded.model
    typed = cam.map_layers(model)
    every = cam.map_layers(model, all_types=True)
    shapes = {}
    for name in every:
        shape = model.get_layer(name).output.shape
        shapes[name] = "x".join(str(s) for s in shape[1:])
    return typed, every, shapes


@st.cache_data(show_spinner=False, max_entries=16)
def _boxes(path: str, mtime: float) -> pd.DataFrame:
    from cxrcore.data.boxes import read_boxes

    return read_boxes(path)


def dataset_boxes(dataset: ActiveDataset) -> pd.DataFrame | None:
    """The active dataset's boxes (NIH BBox_List_2017 format), or None; a bad file is a shown error."""
    if dataset.bbox_file is None:
        return None
    path = Path(dataset.bbox_file)
    return _boxes(str(path), path.stat().st_mtime)


@st.cache_data(show_spinner=False, max_entries=32)
def _aurocs(key: str, split_key: str, _y: np.ndarray, _probs: np.ndarray) -> dict[str, float]:
    from cxrcore.evaluate.metrics import auroc

    out = {}
    for j, label in enumerate(LABELS):
        if not np.isnan(_probs[:, j]).any():
            value = auroc(_y[:, j], _probs[:, j])
            if not np.isnan(value):
                out[label] = value
    return out


def split_table(split: Split, preds) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(frame, labels (n, 14), probabilities (n, 14) with NaN for classes the model lacks), in split order."""
    index = {str(name): i for i, name in enumerate(preds.images)}
    rows = np.array([index.get(str(name), -1) for name in split.frame[IMAGE]], dtype=np.int64)
    probs = np.full((len(split), len(LABELS)), np.nan)
    found = rows >= 0
    for j, label in enumerate(preds.labels):
        probs[found, LABELS.index(label)] = preds.probs[rows[found], j]
    return split.frame[[IMAGE]].copy(), split.labels, probs


@st.cache_data(show_spinner=False, max_entries=16)
def _split_table(key: str, table_key: str, _split: Split, _preds) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    return split_table(_split, _preds)


def best_auroc_labels(aurocs: dict[str, float], k: int = DEFAULT_SHOWN) -> list[str]:
    """The k classes with the highest AUROC on the split (the course shows these four)."""
    return [label for label, _ in sorted(aurocs.items(), key=lambda item: -item[1])[:k]]


def filter_rows(labels: np.ndarray, probs: np.ndarray, label: str, mode: str, threshold: float) -> np.ndarray:
    """Row indices matching a filter for one class, sorted by that class's probability (highest first)."""
    j = LABELS.index(label)
    truth = labels[:, j].astype(bool)
    p = probs[:, j]
    known = ~np.isnan(p)
    predicted = known & (p >= threshold)
    masks = {
        "all images": np.ones(len(p), bool), "true label": truth, "predicted above threshold": predicted,
        "correct": known & (predicted == truth), "false positives": predicted & ~truth,
        "false negatives": known & ~predicted & truth,
    }
    rows = np.flatnonzero(masks[mode])
    order = np.argsort(-np.nan_to_num(p[rows], nan=-1.0), kind="stable")
    return rows[order]


def classes_to_show(settings: MapSettings, probs: np.ndarray, best: Sequence[str], available: Sequence[str]
                    ) -> list[str]:
    """The classes whose maps are drawn: the chosen ones, the top predicted, or the best-AUROC ones."""
    if settings.show == SHOW_CHOSEN and settings.chosen:
        return [c for c in settings.chosen if c in available]
    if settings.show == SHOW_BEST and best:
        return [c for c in best if c in available][:DEFAULT_SHOWN]
    return cam.top_labels(probs, DEFAULT_SHOWN, available=available)


# --------------------------------------------------------------------------------------------
# Controls
# --------------------------------------------------------------------------------------------

def teaching() -> None:
    teaching_note(
        "class activation maps and Grad-CAM",
        "The classifier ends in global average pooling and one Dense layer, so the score of class *k* is a "
        "weighted sum of the last feature map's channels. **CAM** draws that sum before the pooling: one map "
        "per class from the same forward pass. **Grad-CAM** weights each channel by the mean gradient of the "
        "class score and works on any convolutional layer; for this head the gradient of the logit is "
        "constant, w_ck / Z, so Grad-CAM on the last layer *is* CAM divided by Z (the number of positions). "
        "**Grad-CAM++** weights pixels by higher-order terms and often covers several instances better.\n\n"
        "A map shows where the evidence for a class lies *for this model*, not where the disease is. Compare "
        "it with radiologist boxes: the **pointing game** asks whether the map's maximum lies in the box "
        "(a random point hits with the box's share of the image); **IoBB** (Wang et al. 2017) is the overlap "
        "of the thresholded map's box with the truth, over the map box's area. Masking the most salient "
        "pixels should lower the probability more than masking random ones (**faithfulness**).\n\n"
        "The **gradient methods** need no feature map, so they work on any model (also a ViT): the **gradient** "
        "is how much each input pixel changes the class score; **SmoothGrad** averages it over noisy copies of "
        "the image (n samples, noise as a share of the image's range), which removes its pixel-scale flicker; "
        "**Integrated Gradients** adds the gradients up along the path from a flat image to this one, so the "
        "attributions sum to the score's change. When two methods **disagree** (Grad-CAM on the heart, "
        "SmoothGrad on the lungs for Cardiomegaly), suspect a shortcut and ask which map is more faithful: "
        "deleting its top pixels should make the probability fall fastest (low **deletion AUC**), putting them "
        "back into a blurred image should restore it fastest (high **insertion AUC**).",
        [r"M_k(x, y) = \sum_c w_{c,k}\, A_c(x, y)",
         r"\text{Grad-CAM}_k = \mathrm{ReLU}\Big(\sum_c \alpha_c^k A_c\Big),\quad "
         r"\alpha_c^k = \frac{1}{Z}\sum_{i,j} \frac{\partial y_k}{\partial A_c(i,j)} = \frac{w_{c,k}}{Z}"])


def missing_methods_caption(support: dict[str, str | None]) -> str | None:
    """One line naming the methods this model lacks and why (None when it has them all)."""
    missing = [method for method, reason in support.items() if reason is not None]
    if not missing:
        return None
    reasons = dict.fromkeys(support[m] for m in missing)
    names = ", ".join(cam.METHOD_TITLES[m] for m in missing)
    return (f"{names}: not offered for this model, because {' '.join(str(r) for r in reasons)} These methods read "
            "a convolutional feature map pooled by GlobalAveragePooling2D into the Dense head; the gradient methods "
            "work on the input pixels of any model.")


def methods_in_use(method: str, methods: Sequence[str]) -> set[str]:
    """The methods whose maps are on screen: the chosen one, and the compared pair while comparing."""
    used = {method}
    if st.session_state.get(COMPARE_KEY):
        first, second = default_pair(methods, method)
        used |= {st.session_state.get("cam_compare_a", first), st.session_state.get("cam_compare_b", second)}
    return used


def map_settings(loaded: LoadedModel, key: str) -> MapSettings:
    """Method, layer, opacity, colormap, smoothing, SmoothGrad / IG settings and class choice widgets."""
    typed, every, shapes = _layers(key, loaded)
    support = _support(key, loaded)
    methods = supported(key, loaded)
    has_cam = "cam" in methods
    cm_layer = cam.cam_model(loaded.model).feature_layer if has_cam else None
    if st.session_state.get("cam_method") not in methods:
        st.session_state["cam_method"] = methods[0]
    method = st.segmented_control("Method", methods, format_func=cam.METHOD_TITLES.get, key="cam_method",
                                  help="CAM: all classes from one forward pass (fast). Grad-CAM and Grad-CAM++: "
                                       "gradients, on any layer. Gradient, SmoothGrad, Integrated Gradients: "
                                       "gradients on the input pixels (any model).") or methods[0]
    c2, c3, c4, c7, c8 = st.columns([4, 2, 2, 2, 2], vertical_alignment="bottom")
    all_layers = c3.toggle("Every layer", key="cam_all_layers", disabled=method not in ("gradcam", "gradcam++"),
                           help=f"List every layer with a 4-D output, not only the last {LAYERS_SHOWN} "
                                "convolution/activation layers.")
    options = list(reversed(every if all_layers else typed[-LAYERS_SHOWN:]))
    if cm_layer is not None and cm_layer not in options:
        options.insert(0, cm_layer)
    if method in cam.GRADIENT_METHODS:
        side = loaded.info.input_size
        c2.selectbox("Layer", ["input"], key="cam_layer_input", disabled=True,
                     format_func=lambda n: f"input pixels ({side}x{side}x3)",
                     help="The gradient methods explain the model's input pixels: no layer to choose.")
        layer = None
    elif method == "cam":
        c2.selectbox("Layer", [cm_layer], key="cam_layer_fixed", disabled=True,
                     format_func=lambda n: f"{n} ({shapes.get(n, '?')}, the CAM layer)",
                     help="CAM exists only on the feature map that feeds the global average pooling.")
        layer = cm_layer
    else:
        if st.session_state.get("cam_layer") not in options:
            st.session_state["cam_layer"] = cm_layer
        layer = c2.selectbox("Layer", options, key="cam_layer",
                             format_func=lambda n: f"{n} ({shapes.get(n, '?')})",
                             help="Earlier layers: finer but noisier maps.")
    colormap = c4.selectbox("Colormap", list(cam.COLORMAPS), key="cam_colormap")
    opacity = c7.slider("Opacity", 0.0, 1.0, 0.4, 0.05, key="cam_opacity")
    smooth = c8.slider("Smoothing", 0.0, 0.05, 0.0, 0.005, key="cam_smooth", format="%.3f",
                       help="Gaussian blur, sigma as a share of the image side.")
    c5, c6, _ = st.columns([4, 4, 4], vertical_alignment="bottom")
    show = c5.segmented_control("Classes", (SHOW_BEST, SHOW_TOP, SHOW_CHOSEN), key="cam_show", default=SHOW_BEST,
                                help="Best-AUROC: the 4 classes the model ranks best on the split, as in the "
                                     "course (an upload has no split: its top predicted classes).") or SHOW_BEST
    chosen: list[str] = []
    available = [label for label in LABELS if label in loaded.info.labels]
    chosen = c6.multiselect("Chosen classes", available, default=available[:1], key="cam_classes",
                            disabled=show != SHOW_CHOSEN, max_selections=len(available))
    in_use = methods_in_use(method, methods)
    defaults = MapSettings()
    samples, noise, steps = (st.session_state.get("cam_samples", defaults.samples),
                             st.session_state.get("cam_noise", defaults.noise),
                             st.session_state.get("cam_steps", defaults.steps))
    if in_use & set(_OPTION_METHODS):  # only the settings of a method on screen: none while CAM is shown
        c9, c10, c11, _ = st.columns([3, 3, 3, 3], vertical_alignment="bottom")
        if "smoothgrad" in in_use:
            samples = c9.slider("SmoothGrad samples", 1, 100, defaults.samples, 1, key="cam_samples",
                                persist_state=KEEP,
                                help="Noisy copies averaged (Smilkov et al. 2017 use about 50; 25 is usually "
                                     "smooth).")
            noise = c10.slider("SmoothGrad noise", 0.0, 0.5, defaults.noise, 0.01, key="cam_noise",
                               persist_state=KEEP,
                               help="Noise sigma as a share of the image's range (the authors recommend 0.1-0.2).")
        if "integrated-gradients" in in_use:
            steps = c11.slider("Integrated Gradients steps", 4, 128, defaults.steps, 4, key="cam_steps",
                               persist_state=KEEP,
                               help="Points on the path from a flat image to this one (more: closer to "
                                    "completeness).")
    caption = missing_methods_caption(support)
    if caption:
        st.caption(caption)
    if show != SHOW_CHOSEN:
        chosen = []
    return MapSettings(method=method, layer=layer, opacity=float(opacity), colormap=colormap, smooth=float(smooth),
                       show=show, chosen=tuple(chosen), samples=int(samples), noise=float(noise), steps=int(steps))


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------

def probability_chart(probs: np.ndarray, truth: Sequence[str], threshold: float | None = None,
                      shown: Sequence[str] = ()) -> go.Figure:
    """The 14 probabilities as horizontal bars in class colours; true labels and drawn classes marked."""
    labels = [label for label in LABELS if not np.isnan(probs[LABELS.index(label)])]
    values = [float(probs[LABELS.index(label)]) for label in labels]
    names = [f"{label}{' (true)' if label in truth else ''}" for label in labels]
    fig = go.Figure(go.Bar(x=values, y=names, orientation="h", marker_color=[CLASS_COLORS[c] for c in labels],
                           marker_line_width=[3 if c in shown else 0 for c in labels], marker_line_color="#222",
                           text=[f"{v:.2f}" for v in values], textposition="outside", cliponaxis=False,
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dot", line_color="#555")
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(range=[0, 1.08], title="predicted probability")
    fig.update_layout(height=420, margin=dict(l=10, r=10, t=30, b=10), template="plotly_white",
                      title="Probabilities (bold outline: maps shown)")
    return fig


def _box_list(boxes: pd.DataFrame | None) -> list[tuple[str, tuple[float, float, float, float]]]:
    if boxes is None or boxes.empty:
        return []
    return [(r.Label, (r.x, r.y, r.w, r.h)) for r in boxes.itertuples(index=False)]


def _jpeg(rgb: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


@st.cache_data(show_spinner=False, max_entries=64)
def _panels(maps_key: tuple, name: str, labels_shown: tuple[str, ...], box_list: tuple, truth: tuple[str, ...] | None,
            opacity: float, colormap: str, scale: tuple[float, float], _shown_image: np.ndarray,
            _result: cam.ImageMaps) -> list[tuple[bytes, str]]:
    """The original (labels, boxes) and one overlay per class, as JPEG bytes with captions.

    Cached by what they are drawn from (maps_key: model, image, method, layer, smoothing), so a rerun or
    another student on the same image costs no blending and no image encoding."""
    base = cam.gray_rgb(_shown_image)
    panels = [(_jpeg(cam.draw_boxes(base, list(box_list), scale=scale) if box_list else base),
               f"{name} · " + ("labels unknown" if truth is None else
                               f"true: {', '.join(truth) if truth else 'No Finding'}"))]
    for label in labels_shown:
        heat = _result.map_for(label)
        flat = cam.is_flat(heat)  # drawn without colour: a flat blue overlay reads as "low everywhere"
        panel = base.copy() if flat else cam.overlay(_shown_image, heat, opacity, colormap)
        own = [(n, b) for n, b in box_list if n == label]
        if own:
            panel = cam.draw_boxes(panel, own, scale=scale, label=False, color=(255, 255, 255))
        mark = " · true" if label in (truth or ()) else ""
        panels.append((_jpeg(panel), f"{label} · p={_result.prob(label):.2f}{mark}" + (f" · {NO_EVIDENCE}" if flat
                                                                                      else "")))
    return panels


def method_caption(result: cam.ImageMaps) -> str:
    """'Grad-CAM on layer `x`', or 'SmoothGrad (25 samples, noise 0.15) on the input pixels'."""
    description = result.extra.get("description") or cam.METHOD_TITLES[result.method]
    if result.method in cam.GRADIENT_METHODS:
        return f"{description} on the input pixels"
    return f"{description} on layer `{result.layer}`"


def render_image(name: str, shown_image: np.ndarray, original: tuple[int, int], result: cam.ImageMaps,
                 settings: MapSettings, truth: Sequence[str] | None, boxes: pd.DataFrame | None,
                 threshold: float | None, labels_shown: Sequence[str], maps_key: tuple) -> None:
    """The original (labels, boxes) next to one overlay per class, probabilities, box scores, download.

    truth: the image's labels (empty: No Finding), or None when they are unknown (an upload).
    maps_key: identifies `result` (model, image, method, layer, smoothing) for the panel cache.
    """
    from cxrcore.explain.localization import score_map

    box_list = _box_list(boxes)
    scale = (shown_image.shape[1] / original[1], shown_image.shape[0] / original[0])
    panels = _panels(maps_key, name, tuple(labels_shown), tuple(box_list), None if truth is None else tuple(truth),
                     settings.opacity, settings.colormap, scale, shown_image, result)
    truth = list(truth or [])
    left, right = st.columns([2, 3])
    left.image(panels[0][0], caption=panels[0][1], width="stretch")
    grid: list = []
    for i, (panel, caption) in enumerate(panels[1:]):
        if i % OVERLAY_COLUMNS == 0:
            grid = right.columns(OVERLAY_COLUMNS)
        grid[i % OVERLAY_COLUMNS].image(panel, caption=caption, width="stretch")
    st.caption(f"{method_caption(result)} · maps normalized per class to [0, 1]"
               + (" · green: radiologist boxes (white on the overlay of their class)" if box_list else ""))
    if any(cam.is_flat(result.map_for(label)) for label in labels_shown):
        st.info(FLAT_NOTE, icon=":material/visibility_off:")
    left, right = st.columns([3, 2])
    with left:
        chart_key = (maps_key, None if truth is None else tuple(truth), threshold, tuple(labels_shown))
        st.plotly_chart(cached_figure("cam_probabilities", chart_key,  # built once per image and settings
                                      lambda: probability_chart(result.probs, truth, threshold, labels_shown)),
                        width="stretch", key=f"cam_probs_{name}")
    with right:
        scored = [label for label in labels_shown if any(n == label for n, _ in box_list)]
        if scored:
            rows = []
            for label in scored:
                own = [tuple(v * s for v, s in zip(b, (*scale, *scale))) for n, b in box_list if n == label]
                score = score_map(result.map_for(label), own)
                rows.append({"class": label, "pointing": "hit" if score["hit"] else "miss",
                             "IoU": round(score["iou"], 3), "IoBB": round(score["iobb"], 3),
                             "baseline": round(score["box_fraction"], 3)})
            st.markdown("**Does the map point at the box?**", help="pointing: is the map's maximum inside "
                        "the box? baseline: the box's share of the image (a random point's chance). IoBB: "
                        "overlap of the map's box (pixels >= half the maximum) over its area.")
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        elif box_list:
            st.caption("This image has boxes for " + ", ".join(sorted({n for n, _ in box_list}))
                       + "; choose those classes to score their maps.")
        figure_args = dict(opacity=settings.opacity, colormap=settings.colormap, boxes=box_list, truth=truth,
                           box_scale=scale, columns=min(PANELS_PER_ROW, len(labels_shown) + 1))
        shown_result = cam.ImageMaps(maps=np.stack([result.map_for(c) for c in labels_shown]) if labels_shown
                                     else np.zeros((0, *shown_image.shape), np.float32),
                                     labels=tuple(labels_shown), probs=result.probs, method=result.method,
                                     layer=result.layer)
        st.download_button("Download the figure (PNG)", key="cam_download", icon=":material/download:",
                           data=lambda: cam.png_bytes(cam.explanation_figure(shown_image, shown_result,
                                                                             **figure_args)),
                           file_name=f"{Path(name).stem}_{result.method}.png", mime="image/png")


def explain_and_render(entry: ModelEntry, loaded: LoadedModel, settings: MapSettings, *, name: str,
                       image_key: str, read: Callable[[], np.ndarray], shown_image: np.ndarray,
                       original: tuple[int, int], truth: Sequence[str] | None, boxes: pd.DataFrame | None,
                       best: Sequence[str], known_probs: np.ndarray | None, threshold: float | None) -> cam.ImageMaps:
    """Pick the classes, compute (or reuse) the maps and draw the image view."""
    key = model_key(entry, loaded)
    available = [label for label in LABELS if label in loaded.info.labels]
    size = shown_image.shape[:2]
    probs = known_probs
    result: cam.ImageMaps | None = None
    if probs is None or np.isnan(probs).all():
        if settings.method == "cam":  # every class's map comes from the same single forward pass
            result = image_maps(key, image_key, loaded, read, available, settings, size)
            probs = result.probs
        elif settings.show == SHOW_CHOSEN and settings.chosen:
            probs = np.zeros(len(LABELS))
        elif "cam" in supported(key, loaded):  # the top classes are needed first: one CAM pass gives them
            probs = image_maps(key, image_key, loaded, read, available, MapSettings(), size).probs
        else:  # no CAM fast path (e.g. a ViT): one forward pass
            probs = _probabilities(key, image_key, loaded, read)
    labels_shown = classes_to_show(settings, probs, best, available)
    if result is None:
        boxed = [] if boxes is None else [c for c in dict.fromkeys(boxes["Label"]) if c in available]
        wanted = list(dict.fromkeys([*labels_shown, *(boxed if settings.method == "cam" else [])]))
        result = image_maps(key, image_key, loaded, read, wanted or available[:1], settings, size)
    maps_key = (key, image_key, settings.method, settings.layer, settings.smooth, tuple(size), settings.options_key())
    render_image(name, shown_image, original, result, settings, truth, boxes, threshold, labels_shown, maps_key)
    return result


def render_faithfulness(loaded: LoadedModel, read: Callable[[], np.ndarray], result: cam.ImageMaps,
                        shown_image: np.ndarray) -> None:
    """On request: mask the most salient cells of the image for one class and compare with random cells."""
    from cxrcore.explain.localization import deletion_test

    with st.expander("Faithfulness: does masking the salient pixels lower the probability?",
                     icon=":material/science:"):
        label = st.selectbox("Class", list(result.labels), key="cam_faith_class")
        if st.button("Run the deletion test", key="cam_faith_run"):
            with st.spinner("Masking and predicting..."):
                table = deletion_test(loaded, read(), result.map_for(label), label)
            st.dataframe(table.round(4), hide_index=True, width="stretch")
            st.caption("drop = p(original) - p(masked); random: mean of 3 random sets of as many cells.")


# --------------------------------------------------------------------------------------------
# Two methods side by side
# --------------------------------------------------------------------------------------------

@st.cache_data(show_spinner=False, max_entries=64)
def _curves(key: str, image_key: str, method: str, layer: str | None, label: str, smooth: float, options: tuple,
            size: tuple[int, int], _loaded: LoadedModel, _image: np.ndarray, _heat: np.ndarray):
    """Deletion / insertion curves of one method's map (cached by what the map is made of)."""
    from cxrcore.explain.localization import faithfulness_curves

    return faithfulness_curves(_loaded, _image, _heat, label)


def faithfulness_verdict(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """A sentence when a map deletes no better than random order (deletion AUC >= its random bar): then
    masking what it calls important lowers the probability no faster than masking cells at random."""
    worse = [str(r["method"]) for r in rows if r["deletion AUC"] >= r["deletion AUC (random)"]]
    if not worse:
        return None
    if len(worse) == len(rows) > 1:
        return ("Neither map is faithful on this image: masking the cells each method calls most important "
                "lowers the probability no faster than masking cells in random order (deletion AUC at or above "
                "the random bar). Do not read either map as where the model looks here.")
    return (f"{worse[0]} is not faithful on this image: masking the cells it calls most important lowers the "
            "probability no faster than masking cells in random order (deletion AUC at or above the random bar).")


def default_pair(methods: Sequence[str], current: str) -> tuple[str, str]:
    """The methods compared first: the current one against SmoothGrad (the references' pair), or the next one."""
    first = current if current in methods else methods[0]
    others = [m for m in methods if m != first]
    second = "smoothgrad" if "smoothgrad" in others else (others[0] if others else first)
    return first, second


def _compare_layer(method: str, settings: MapSettings) -> str | None:
    """Grad-CAM(++) in the comparison keep the layer chosen above when the main method is Grad-CAM(++) too."""
    if method in ("gradcam", "gradcam++") and settings.method in ("gradcam", "gradcam++"):
        return settings.layer
    return None


def render_comparison(entry: ModelEntry, loaded: LoadedModel, settings: MapSettings, *, image_key: str,
                      read: Callable[[], np.ndarray], shown_image: np.ndarray, original: tuple[int, int],
                      boxes: pd.DataFrame | None, result: cam.ImageMaps) -> None:
    """Two methods' maps of one class on the same image, their agreement, faithfulness and pointing hit."""
    from cxrcore.explain.localization import map_agreement, score_map

    key = model_key(entry, loaded)
    methods = supported(key, loaded)
    if not st.toggle("Compare two methods side by side", key=COMPARE_KEY, bind="query-params", persist_state=KEEP,
                     help="Maps of two methods for one class on this image: do they agree, and which is more "
                          "faithful (deletion / insertion) and points at the box?"):
        return
    first, second = default_pair(methods, settings.method)
    c1, c2, c3 = st.columns(3, vertical_alignment="bottom")
    method_a = c1.selectbox("Method A", methods, index=methods.index(first), key="cam_compare_a",
                            persist_state=KEEP,
                            format_func=cam.METHOD_TITLES.get)
    method_b = c2.selectbox("Method B", methods, index=methods.index(second), key="cam_compare_b",
                            persist_state=KEEP,
                            format_func=cam.METHOD_TITLES.get)
    labels = list(result.labels)
    box_list = _box_list(boxes)
    boxed = [label for label in labels if any(n == label for n, _ in box_list)]
    label = c3.selectbox("Class", labels, index=labels.index(boxed[0]) if boxed else 0, key="cam_compare_class",
                         persist_state=KEEP)
    size = tuple(shown_image.shape[:2])
    scale = (shown_image.shape[1] / original[1], shown_image.shape[0] / original[0])
    own = [tuple(v * f for v, f in zip(b, (*scale, *scale))) for n, b in box_list if n == label]
    pair = [image_maps(key, image_key, loaded, read, [label], settings.with_method(m, _compare_layer(m, settings)),
                       size) for m in (method_a, method_b)]
    for column, maps in zip(st.columns(2), pair):
        flat = cam.is_flat(maps.maps[0])
        panel = cam.gray_rgb(shown_image) if flat else cam.overlay(shown_image, maps.maps[0], settings.opacity,
                                                                    settings.colormap)
        if own:
            panel = cam.draw_boxes(panel, [(label, b) for b in own], label=False, color=(255, 255, 255))
        column.image(_jpeg(panel), caption=f"{method_caption(maps)} · {label} · p={maps.prob(label):.2f}"
                     + (f" · {NO_EVIDENCE}" if flat else ""), width="stretch")
    if any(cam.is_flat(maps.maps[0]) for maps in pair):
        st.info(FLAT_NOTE, icon=":material/visibility_off:")
    agreement = map_agreement(pair[0].maps[0], pair[1].maps[0])
    rho = agreement["spearman"]
    m1, m2 = st.columns(2)
    m1.metric("Spearman rank correlation", "n/a (a flat map)" if np.isnan(rho) else f"{rho:.2f}",
              help="Rank correlation of the two maps' pixels: 1 = the same ordering, 0 = unrelated.")
    m2.metric(f"Top {agreement['top share']:.0%} pixels overlap (IoU)", f"{agreement['top IoU']:.2f}",
              help="Intersection over union of each map's most salient 10% of the pixels.")
    with st.spinner("Deletion and insertion curves (17 steps, salient and random order)..."):
        curves = [_curves(key, image_key, maps.method, maps.layer, label, settings.smooth,
                          settings.options_key(maps.method), size, loaded, shown_image, maps.maps[0])
                  for maps in pair]
    rows = []
    for maps, curve in zip(pair, curves):
        row = {"method": maps.extra.get("description", cam.METHOD_TITLES[maps.method]),
               **{name: round(value, 3) for name, value in curve.summary().items()}}
        row["pointing"] = ("hit" if score_map(maps.maps[0], own)["hit"] else "miss") if own else "no box"
        rows.append(row)
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    verdict = faithfulness_verdict(rows)
    if verdict:
        st.warning(verdict, icon=":material/warning:")
    figure = faithfulness_curves_chart([(row["method"], c) for row, c in zip(rows, curves)])
    st.plotly_chart(figure, width="stretch", key="cam_compare_curves")
    st.caption("Deletion AUC: area under p while the most salient cells (16x16 grid) are set to the image mean, lower "
               "is more faithful; insertion AUC: while they are put back into a blurred copy, higher is more "
               "faithful; (random): the same for a random cell order, the bar to beat. Pointing: is the map's "
               "maximum inside a box of the class? Computed on the displayed image.")


# --------------------------------------------------------------------------------------------
# Browsing a split
# --------------------------------------------------------------------------------------------

def _step(options: list[str], delta: int) -> None:
    current = st.session_state.get(IMAGE_KEY)
    i = options.index(current) if current in options else -1
    st.session_state[IMAGE_KEY] = options[max(0, min(len(options) - 1, i + delta))]


def _open(name: str) -> None:
    st.session_state[IMAGE_KEY] = name


@section("browsing the split")
def render_browser(entry: ModelEntry, loaded: LoadedModel, dataset: ActiveDataset, settings: MapSettings) -> None:
    """Thumbnails of a split filtered and sorted by prediction, and the chosen image's maps. Its widgets
    (split, filter, threshold, grid, Previous / Next) rerun only this section."""
    from dashboard.loaders import missing_note, present_images
    from dashboard.models import predictions_for
    from dashboard.results_view import default_split_name

    if dataset.image_root is None:
        st.info("The active dataset has no image folder, so there is nothing to browse; upload an image instead.")
        return
    names = list(dataset.splits)
    c0, c1, c2, c3 = st.columns([2, 2, 3, 2], vertical_alignment="bottom")
    split_name = c0.selectbox("Split", names, index=names.index(default_split_name(names)), key="cam_split")
    split = dataset.splits[split_name]
    present, missing = present_images(split, dataset.image_root)
    if missing and len(present):
        st.warning(missing_note(split, missing, f"Browsing the {len(present):,} present images."),
                   icon=":material/image_not_supported:")
    preds = predictions_for(entry, split, dataset)
    split = present
    from dashboard.loaders import split_key

    table_key = repr(split_key([split])) + preds.file
    frame, y, probs = _split_table(model_key(entry, loaded), table_key, split, preds)
    aurocs = _aurocs(model_key(entry, loaded), table_key, y, probs)
    best = best_auroc_labels(aurocs)
    boxes_all = dataset_boxes(dataset)
    available = [label for label in LABELS if label in loaded.info.labels]

    label = c1.selectbox("Filter class", available, index=available.index(best[0]) if best else 0,
                         key="cam_filter_class")
    mode = c2.selectbox("Show", FILTERS, key="cam_filter", help="Sorted by the class's predicted probability.")
    threshold = c3.slider("Threshold", 0.0, 1.0, 0.5, 0.01, key="cam_threshold")
    rows = filter_rows(y, probs, label, mode, threshold)
    if best:
        st.caption("AUROC on this split: " + " · ".join(f"{c} {aurocs[c]:.3f}" for c in best)
                   + " (the classes shown by default)")
    if len(rows) == 0:
        st.info("No image of this split matches the filter.")
        return
    names_all = frame[IMAGE].astype(str).to_numpy()
    options = names_all[rows].tolist()
    row_of = dict(zip(options, rows))
    position = {name: i for i, name in enumerate(options)}
    if st.session_state.get(IMAGE_KEY) not in row_of:
        st.session_state[IMAGE_KEY] = options[0]
    # the selector lists a window around the current image (a split can hold 25,000 images)
    first = max(0, position[st.session_state[IMAGE_KEY]] - SELECT_WINDOW // 2)
    window = options[first:first + SELECT_WINDOW]
    j = LABELS.index(label)
    with st.expander(f"{len(rows):,} images, sorted by the probability of {label} (✓ / ✗: {label} in the "
                     "labels or not)", expanded=True,
                     icon=":material/grid_view:"):
        pages = max(1, -(-len(rows) // PAGE_SIZE))
        page = st.columns([1, 5])[0].number_input(f"Page (of {pages})", 1, pages, 1, key="cam_grid_page") \
            if pages > 1 else 1
        root = Path(dataset.image_root)
        grid: list = []
        for i, name in enumerate(options[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]):
            if i % GRID_COLUMNS == 0:  # one row of columns at a time: the grid reads in sorted order
                grid = st.columns(GRID_COLUMNS)
            cell = grid[i % GRID_COLUMNS]
            thumb = preview_jpeg(root, name)  # encoded once, shared by every session
            r = row_of[name]
            truth = "✓" if y[r, j] else "✗"
            if thumb is None:
                cell.caption(f"{name}: missing or unreadable")
                continue
            cell.image(thumb, caption=f"{name} · p={probs[r, j]:.2f} {truth}", width="stretch")
            cell.button("Open", key=f"cam_open_{name}", on_click=_open, args=(name,),
                        type="primary" if name == st.session_state.get(IMAGE_KEY) else "secondary")

    c4, c5, c6 = st.columns([1, 6, 1], vertical_alignment="bottom")
    c4.button("Previous", key="cam_prev", on_click=_step, args=(options, -1), icon=":material/arrow_back:")
    c5.selectbox("Image", window, key=IMAGE_KEY,
                 format_func=lambda n: f"{n} · p({label})={probs[row_of[n], j]:.2f}")
    c6.button("Next", key="cam_next", on_click=_step, args=(options, 1), icon=":material/arrow_forward:")
    name = st.session_state[IMAGE_KEY]
    r = row_of[name]
    path = resolve_image(root, name)
    if not path.is_file():
        st.error(f"{name}: the image file is missing from {root}.")
        return
    mtime = path.stat().st_mtime
    shown, original = _file_image(str(path), mtime, DISPLAY_SIDE)
    truth = [c for i, c in enumerate(LABELS) if y[r, i]]
    from cxrcore.data.boxes import boxes_for

    own_boxes = boxes_for(boxes_all, name) if boxes_all is not None else None

    def read() -> np.ndarray:
        from cxrcore.data.images import read_image

        return read_image(str(path))

    result = explain_and_render(entry, loaded, settings, name=name, image_key=f"{path}|{mtime}", read=read,
                                shown_image=shown, original=original, truth=truth, boxes=own_boxes, best=best,
                                known_probs=probs[r], threshold=threshold)
    render_faithfulness(loaded, read, result, shown)
    render_comparison(entry, loaded, settings, image_key=f"{path}|{mtime}", read=read, shown_image=shown,
                      original=original, boxes=own_boxes, result=result)
    if boxes_all is not None:
        render_split_localization(entry, loaded, dataset, split, boxes_all, settings)


@st.cache_data(show_spinner=False, max_entries=16)
def _localization(key: str, image_key: str, method: str, layer: str | None, options: tuple, _loaded: LoadedModel,
                  _images: list[str], _boxes: pd.DataFrame, root: str, _saliency: SaliencyOptions | None = None
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    from cxrcore.explain.localization import localize_images, summarize_localization

    records = localize_images(_loaded, _images, _boxes, image_root=root, method=method, layer=layer,
                              saliency_options=_saliency)
    return records, summarize_localization(records)


def render_split_localization(entry: ModelEntry, loaded: LoadedModel, dataset: ActiveDataset, split: Split,
                              boxes: pd.DataFrame, settings: MapSettings) -> None:
    """On request: pointing game, IoU and IoBB over every boxed image of the split, per class."""
    boxed = set(boxes["Image"])
    names = [str(n) for n in split.frame[IMAGE] if str(n) in boxed]
    with st.expander(f"Localization on this split: {len(names):,} images with boxes", icon=":material/target:"):
        if not names:
            st.caption("No image of this split has a box.")
            return
        st.caption("Every boxed (image, class) of the split, with the current method and layer. The random "
                   "baseline is the boxes' share of the image: a random point's chance of a hit.")
        run_key = (model_key(entry, loaded), split.name, settings.method, settings.layer, settings.options_key())
        if st.button("Score the maps against the boxes", key="cam_localize") or \
                st.session_state.get("cam_localized") == run_key:
            st.session_state["cam_localized"] = run_key
            with st.spinner(f"Maps of {len(names):,} images..."):
                stamp = Path(dataset.bbox_file).stat().st_mtime if dataset.bbox_file else 0
                records, summary = _localization(model_key(entry, loaded), f"{split.source}|{len(names)}|{stamp}",
                                                 settings.method, settings.layer, settings.options_key(), loaded,
                                                 names, boxes, str(dataset.image_root), settings.saliency_options)
            st.dataframe(summary.round(3), hide_index=True, width="stretch")
            st.download_button("Download the per-finding scores (CSV)", csv_text(records).encode(),
                               file_name=f"localization_{split.name}_{settings.method}.csv", mime="text/csv",
                               key="cam_localization_csv")


# --------------------------------------------------------------------------------------------
# Uploads
# --------------------------------------------------------------------------------------------

def upload_kind(name: str, data: bytes, dataset: ActiveDataset | None) -> str:
    """What an uploaded image is: one of the active dataset's own files (same name, same bytes) is of its
    kind; anything else is taken for a real radiograph."""
    from cxrcore.data.catalog import DATA_REAL

    entry = getattr(dataset, "entry", None)
    if entry is not None and dataset.image_root is not None:
        try:
            own = resolve_image(Path(dataset.image_root), Path(name).name)
            if own.is_file() and own.stat().st_size == len(data) and own.read_bytes() == data:
                return entry.kind
        except (CxrError, OSError):
            pass
    return DATA_REAL


def ood_warning(entry: ModelEntry, kind: str, what: str) -> None:
    """Warn when the model was trained on another kind of images than `kind` (silent when either is unknown)."""
    from cxrcore.data.catalog import kind_mismatch

    text = kind_mismatch(entry.info.data_kind if entry.info else "", kind, entry.info.dataset if entry.info else "")
    if text:
        st.warning(f"{what}: {text}", icon=":material/warning:")


def render_upload(entry: ModelEntry, loaded: LoadedModel, settings: MapSettings,
                  dataset: ActiveDataset | None = None) -> None:
    """Predictions and maps for the user's own image (PNG, JPEG or DICOM)."""
    upload = st.file_uploader("Your chest X-ray (PNG, JPEG or DICOM)", type=UPLOAD_TYPES, key="cam_upload")
    if upload is None:
        st.caption("The image is resized and normalized exactly as the model's training images were.")
        return
    data = upload.getvalue()
    ood_warning(entry, upload_kind(upload.name, data, dataset), f"{entry.name} on {upload.name}")
    with user_errors(f"reading {upload.name}"):
        image, shown, original = _upload_image(data, upload.name, DISPLAY_SIDE)
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        result = explain_and_render(entry, loaded, settings, name=upload.name, image_key=f"upload|{digest}",
                                    read=lambda: image, shown_image=shown, original=original, truth=None, boxes=None,
                                    best=[], known_probs=None, threshold=None)
        render_faithfulness(loaded, lambda: image, result, shown)
        render_comparison(entry, loaded, settings, image_key=f"upload|{digest}", read=lambda: image,
                          shown_image=shown, original=original, boxes=None, result=result)


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------

def render_guidance() -> None:
    st.info("No model yet. The maps explain a model's predictions: train the demo model on the Training page, "
            "or put a model file (.keras with its JSON, or the course's pretrained_model.h5) in models/; then "
            "choose it in the sidebar.", icon=":material/info:")


def choose_model(models: list[ModelEntry]) -> ModelEntry:
    """The model whose maps are drawn (the sidebar's active models)."""
    if len(models) == 1:
        return models[0]
    names = [m.name for m in models]
    return models[names.index(st.selectbox("Model", names, key="cam_model"))]


def render_page(dataset: ActiveDataset | None, models: list[ModelEntry]) -> None:
    """The whole explorer below the title."""
    from dashboard.models import ready_model

    keep_compiled_functions()
    teaching()
    if not models:
        render_guidance()
        return
    entry = choose_model(models)
    loaded = ready_model(entry, dataset)
    source = st.segmented_control("Images", (SOURCE_SPLIT, SOURCE_UPLOAD), default=SOURCE_SPLIT, key="cam_source")
    settings = map_settings(loaded, model_key(entry, loaded))
    if source == SOURCE_UPLOAD:
        render_upload(entry, loaded, settings, dataset)
    elif dataset is None or not dataset.splits:
        st.info("No dataset yet (see the Home page); you can still upload an image.")
    else:
        if dataset.entry is not None:
            ood_warning(entry, dataset.entry.kind, f"{entry.name} on {dataset.name}")
        render_browser(entry, loaded, dataset, settings)
