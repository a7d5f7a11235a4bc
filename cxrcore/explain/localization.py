"""Does the map point at the finding? Maps scored against radiologist boxes, and faithfulness tests.

Against a box (x, y, w, h in the map's pixels):
* pointing game: the map's maximum lies inside the box. Its random baseline is the box's share of
  the image (a uniformly random point lands inside with that probability).
* the thresholded map's box: pixels >= threshold (maps are in [0, 1]), the connected region that
  holds the maximum, and its bounding box; scored by IoU and by IoBB = intersection / area of the
  map's box (Wang et al. 2017, ChestX-ray8), with accuracy = share of boxes with IoBB >= T.
Faithfulness (deletion): mask the top k% most salient cells of the image and see how much the
predicted probability drops, against masking the same number of random cells. Deletion / insertion
curves (Petsiuk et al. 2018, RISE): the probability as the most salient cells are removed one step
at a time (a faithful map makes it fall fast: low area under the curve) or put back into a blurred
image (it rises fast: high area), each against a random cell order.
Agreement of two maps of the same image: Spearman rank correlation of their pixels and the overlap
(IoU) of their top 10% pixels.
Every function takes a map (H, W) in [0, 1] from any method (CAM, Grad-CAM, the gradient methods).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import cv2
import numpy as np
import pandas as pd

from cxrcore.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from cxrcore.explain.saliency import SaliencyOptions
    from cxrcore.train.model import LoadedModel

Box = tuple[float, float, float, float]
#: T(IoBB) thresholds reported as in Wang et al. 2017 (0.1 ... 0.7).
IOBB_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
#: Share of the map's maximum above which a pixel belongs to the map's box.
DEFAULT_THRESHOLD = 0.5
#: Fractions of the image masked in the deletion test.
DELETION_FRACTIONS = (0.05, 0.10, 0.20)
RECORD_COLUMNS = ("Image", "Label", "prob", "boxes", "hit", "iou", "iobb", "box_fraction", "peak_x", "peak_y",
                  "map_x", "map_y", "map_w", "map_h")

ProgressCallback = Callable[[int, int, str], None]


# --------------------------------------------------------------------------------------------
# One map against one box
# --------------------------------------------------------------------------------------------

def peak(heat: np.ndarray) -> tuple[int, int]:
    """(x, y) pixel of the map's maximum (the first one in row order on ties)."""
    heat = np.asarray(heat)
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(x), int(y)


def inside(point: tuple[float, float], box: Box, tolerance: float = 0.0) -> bool:
    """True when pixel (x, y) lies in the box (edges included), optionally grown by `tolerance` pixels."""
    x, y = point
    bx, by, bw, bh = box
    return (bx - tolerance <= x + 0.5 <= bx + bw + tolerance) and (by - tolerance <= y + 0.5 <= by + bh + tolerance)


def pointing_hit(heat: np.ndarray, box: Box, tolerance: float = 0.0) -> bool:
    """Pointing game: does the map's maximum fall inside the box?"""
    return inside(peak(heat), box, tolerance)


def map_box(heat: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> Box | None:
    """Bounding box (x, y, w, h) of the connected region of pixels >= threshold * max that holds the maximum.

    None for a map that is zero everywhere (nothing to localize).
    """
    heat = np.asarray(heat, np.float32)
    top = float(heat.max()) if heat.size else 0.0
    if top <= 0:
        return None
    mask = (heat >= threshold * top).astype(np.uint8)
    _, labels = cv2.connectedComponents(mask, connectivity=8)
    px, py = peak(heat)
    ys, xs = np.nonzero(labels == labels[py, px])
    return (float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1))


def intersection(a: Box, b: Box) -> float:
    """Area shared by two (x, y, w, h) boxes."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return float(max(w, 0.0) * max(h, 0.0))


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    inter = intersection(a, b)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def iobb(predicted: Box, truth: Box) -> float:
    """Intersection over the PREDICTED box's area (Wang et al. 2017's IoBB)."""
    area = predicted[2] * predicted[3]
    return intersection(predicted, truth) / area if area > 0 else 0.0


def box_mask(boxes: Sequence[Box], size: tuple[int, int], tolerance: float = 0.0) -> np.ndarray:
    """Boolean (H, W) mask of the pixels whose centre lies in any of the boxes (the `inside` rule)."""
    height, width = int(size[0]), int(size[1])
    cx = np.arange(width) + 0.5
    cy = np.arange(height) + 0.5
    mask = np.zeros((height, width), bool)
    for bx, by, bw, bh in boxes:
        cols = (cx >= bx - tolerance) & (cx <= bx + bw + tolerance)
        rows = (cy >= by - tolerance) & (cy <= by + bh + tolerance)
        mask |= rows[:, None] & cols[None, :]
    return mask


def box_fraction(boxes: Box | Sequence[Box], size: tuple[int, int]) -> float:
    """Share of the pixels of an (H, W) image inside the box(es): the pointing game's random baseline,
    i.e. the chance that a uniformly random pixel is a hit."""
    if len(boxes) == 4 and np.isscalar(boxes[0]):
        boxes = [boxes]  # type: ignore[list-item]
    return float(box_mask(boxes, size).mean())  # type: ignore[arg-type]


def score_map(heat: np.ndarray, boxes: Box | Sequence[Box], threshold: float = DEFAULT_THRESHOLD,
              tolerance: float = 0.0) -> dict:
    """Every score of one map against the box(es) of its class on that image: a hit when the peak is in
    any box, the best IoU and IoBB of the map's box over the boxes, the boxes' share of the image."""
    if len(boxes) == 4 and np.isscalar(boxes[0]):
        boxes = [boxes]  # type: ignore[list-item]
    boxes = [tuple(float(v) for v in b) for b in boxes]  # type: ignore[union-attr]
    px, py = peak(heat)
    predicted = map_box(heat, threshold)
    return {
        "boxes": len(boxes), "hit": any(inside((px, py), b, tolerance) for b in boxes),
        "iou": max(iou(predicted, b) for b in boxes) if predicted else 0.0,
        "iobb": max(iobb(predicted, b) for b in boxes) if predicted else 0.0,
        "box_fraction": float(box_mask(boxes, heat.shape[:2], tolerance).mean()), "peak_x": px, "peak_y": py,
        **dict(zip(("map_x", "map_y", "map_w", "map_h"), predicted or (np.nan,) * 4)),
    }


# --------------------------------------------------------------------------------------------
# Many images
# --------------------------------------------------------------------------------------------

def work_size(shape: tuple[int, int], limit: int | None) -> tuple[int, int]:
    """(H, W) scaled so the longer side is at most `limit` (maps are scored there, boxes scaled to it)."""
    height, width = int(shape[0]), int(shape[1])
    if not limit or max(height, width) <= limit:
        return height, width
    scale = limit / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def localize_images(loaded: "LoadedModel", images: Sequence[str], boxes: pd.DataFrame, *, image_root: str,
                    method: str = "cam", layer: str | None = None, threshold: float = DEFAULT_THRESHOLD,
                    tolerance: float = 0.0, smooth: float = 0.0, limit: int | None = 512, batch_size: int = 8,
                    read: Callable[[str], np.ndarray] | None = None,
                    on_maps: Callable[[str, np.ndarray, object], None] | None = None,
                    progress: ProgressCallback | None = None, saliency_options: "SaliencyOptions | None" = None
                    ) -> pd.DataFrame:
    """Score the maps of every boxed (image, class) among `images` against its box(es): one row per
    (image, class), a hit when the map's peak is in any box of that class (`tolerance` pixels of slack).

    Maps are computed at the image size scaled to at most `limit` pixels (boxes scaled alike, the
    scores do not depend on it); `on_maps(name, image, ImageMaps)` sees each image's maps (to save them).
    Any method of cxrcore.explain.cam.METHODS; saliency_options sets SmoothGrad / Integrated Gradients.
    """
    import os

    from cxrcore.data.boxes import IMAGE, LABEL, scale_box
    from cxrcore.data.images import read_image
    from cxrcore.explain.cam import explain_batch

    read = read or read_image
    wanted = {os.path.basename(str(n)) for n in images}
    model_labels = set(loaded.info.labels)
    rows = boxes[boxes[IMAGE].isin(wanted) & boxes[LABEL].isin(model_labels)]
    names = list(dict.fromkeys(rows[IMAGE]))
    records: list[dict] = []
    for start in range(0, len(names), max(1, batch_size)):
        part = names[start:start + max(1, batch_size)]
        imgs = [read(os.path.join(image_root, n)) for n in part]
        sizes = [work_size(img.shape[:2], limit) for img in imgs]
        wanted_labels = [list(dict.fromkeys(rows.loc[rows[IMAGE] == n, LABEL])) for n in part]
        if method == "cam":  # one forward pass gives every class: batch the images
            union = list(dict.fromkeys(label for labels in wanted_labels for label in labels))
            results = explain_batch(loaded, imgs, union, method=method, layer=layer, smooth=smooth, sizes=sizes)
        else:  # gradients cost per class: only each image's own classes
            results = [explain_batch(loaded, [img], labels, method=method, layer=layer, smooth=smooth,
                                     sizes=[size], saliency_options=saliency_options)[0]
                       for img, labels, size in zip(imgs, wanted_labels, sizes)]
        for name, img, size, labels, result in zip(part, imgs, sizes, wanted_labels, results):
            if on_maps is not None:
                on_maps(name, img, result)
            own = rows[rows[IMAGE] == name]
            for label in labels:
                scaled = [scale_box((r.x, r.y, r.w, r.h), (img.shape[1], img.shape[0]), (size[1], size[0]))
                          for r in own[own[LABEL] == label].itertuples(index=False)]
                records.append({"Image": name, "Label": label, "prob": result.prob(label),
                                **score_map(result.map_for(label), scaled, threshold, tolerance)})
        if progress is not None:
            progress(min(start + len(part), len(names)), len(names), "maps")
    return pd.DataFrame(records, columns=list(RECORD_COLUMNS))


def summarize_localization(records: pd.DataFrame, thresholds: Iterable[float] = IOBB_THRESHOLDS) -> pd.DataFrame:
    """Per class (and 'all'): findings ((image, class) pairs), boxes, pointing-game accuracy, its random
    baseline (mean box share), the lift over it, mean IoU and IoBB, and accuracy at each T(IoBB)."""
    thresholds = tuple(thresholds)
    out = []
    groups = [(label, group) for label, group in records.groupby("Label", sort=True)] if len(records) else []
    if len(records):
        groups.append(("all", records))
    for label, group in groups:
        hits = group["hit"].astype(float)
        baseline = float(group["box_fraction"].mean())
        row = {"class": label, "findings": int(len(group)), "boxes": int(group["boxes"].sum()),
               "pointing": float(hits.mean()), "random baseline": baseline,
               "lift": float(hits.mean() / baseline) if baseline > 0 else np.nan,
               "mean IoU": float(group["iou"].mean()), "mean IoBB": float(group["iobb"].mean())}
        for t in thresholds:
            row[f"IoBB>={t:g}"] = float((group["iobb"] >= t - 1e-12).mean())
        out.append(row)
    columns = ["class", "findings", "boxes", "pointing", "random baseline", "lift", "mean IoU", "mean IoBB",
               *(f"IoBB>={t:g}" for t in thresholds)]
    return pd.DataFrame(out, columns=columns)


# --------------------------------------------------------------------------------------------
# Faithfulness: deletion of the most salient pixels
# --------------------------------------------------------------------------------------------

def cell_order(heat: np.ndarray, grid: int) -> np.ndarray:
    """Indices of grid x grid cells from most to least salient (mean map value per cell)."""
    cells = cv2.resize(np.asarray(heat, np.float32), (grid, grid), interpolation=cv2.INTER_AREA)
    return np.argsort(-cells.ravel(), kind="stable")


def _grid_edges(size: tuple[int, int], grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column edges of a grid x grid partition of an image of `size` (height, width)."""
    height, width = size
    return (np.linspace(0, height, grid + 1).round().astype(int),
            np.linspace(0, width, grid + 1).round().astype(int))


def _class_column(label: str) -> int:
    """Index of `label` in the canonical LABELS order (the column of LoadedModel.predict)."""
    from cxrcore.data.labels import LABELS, canonical_label

    key = canonical_label(label)
    if key is None:
        raise ConfigError(f"unknown class {label!r}.")
    return LABELS.index(key)


def _heat_at(heat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The map as float32 at the image's height and width (bilinear when it is another size)."""
    heat = np.asarray(heat, np.float32)
    if heat.shape != tuple(shape[:2]):
        heat = cv2.resize(heat, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return heat


def mask_cells(image: np.ndarray, cells: np.ndarray, grid: int, fill: float) -> np.ndarray:
    """A copy of the image with the given cells (indices into a grid x grid partition) set to `fill`."""
    out = np.array(image, dtype=np.float32, copy=True)
    ys, xs = _grid_edges(out.shape[:2], grid)
    for cell in np.asarray(cells, dtype=int):
        r, c = divmod(int(cell), grid)
        out[ys[r]:ys[r + 1], xs[c]:xs[c + 1]] = fill
    return out


def deletion_test(loaded: "LoadedModel", image: np.ndarray, heat: np.ndarray, label: str, *,
                  fractions: Sequence[float] = DELETION_FRACTIONS, grid: int = 16, repeats: int = 3,
                  seed: int = 0) -> pd.DataFrame:
    """Drop in the probability of `label` when the top k% salient cells are masked (image mean), against
    the mean drop over `repeats` random sets of as many cells. One row per fraction."""
    column = _class_column(label)
    fractions = [float(f) for f in fractions]
    if any(not 0 < f <= 1 for f in fractions):
        raise ConfigError(f"deletion fractions must be in (0, 1], got {fractions}.")
    image = np.asarray(image, np.float32)
    heat = _heat_at(heat, image.shape)
    fill = float(image.mean())
    order = cell_order(heat, grid)
    rng = np.random.default_rng(seed)
    variants = [image]
    for f in fractions:
        n = max(1, int(round(f * grid * grid)))
        variants.append(mask_cells(image, order[:n], grid, fill))
        for _ in range(repeats):
            variants.append(mask_cells(image, rng.choice(grid * grid, n, replace=False), grid, fill))
    probs = loaded.predict(variants)[:, column]
    base = float(probs[0])
    rows = []
    for i, f in enumerate(fractions):
        j = 1 + i * (1 + repeats)
        salient, random = float(probs[j]), float(np.mean(probs[j + 1:j + 1 + repeats]))
        rows.append({"fraction": f, "p": base, "p salient masked": salient, "p random masked": random,
                     "drop salient": base - salient, "drop random": base - random})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# Faithfulness: deletion and insertion curves
# --------------------------------------------------------------------------------------------

#: Steps of the deletion / insertion curves (cells removed or inserted per step: grid^2 / steps).
CURVE_STEPS = 16


@dataclass(frozen=True)
class FaithfulnessCurves:
    """p(class) against the share of cells removed (deletion) or put back (insertion), salient cells first,
    and the same for a random cell order; areas under the curves over [0, 1]."""

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    random_deletion: np.ndarray
    random_insertion: np.ndarray

    @property
    def deletion_auc(self) -> float:
        """Area under the deletion curve: lower = more faithful (the probability falls fast)."""
        return _auc(self.fractions, self.deletion)

    @property
    def insertion_auc(self) -> float:
        """Area under the insertion curve: higher = more faithful (the probability comes back fast)."""
        return _auc(self.fractions, self.insertion)

    @property
    def random_deletion_auc(self) -> float:
        """The deletion area for a random cell order (the bar a map must beat)."""
        return _auc(self.fractions, self.random_deletion)

    @property
    def random_insertion_auc(self) -> float:
        """The insertion area for a random cell order."""
        return _auc(self.fractions, self.random_insertion)

    def table(self) -> pd.DataFrame:
        """One row per step: fraction, p after deletion / insertion, salient and random order."""
        return pd.DataFrame({"fraction": self.fractions, "p deletion": self.deletion, "p insertion": self.insertion,
                             "p deletion (random)": self.random_deletion,
                             "p insertion (random)": self.random_insertion})

    def summary(self) -> dict[str, float]:
        """The four areas, named as in tables and reports."""
        return {"deletion AUC": self.deletion_auc, "insertion AUC": self.insertion_auc,
                "deletion AUC (random)": self.random_deletion_auc,
                "insertion AUC (random)": self.random_insertion_auc}


def _auc(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def _cell_masks(order: np.ndarray, counts: Sequence[int], grid: int, size: tuple[int, int]) -> np.ndarray:
    """Boolean (len(counts), H, W): the first counts[i] cells of `order` on a grid x grid partition."""
    ys, xs = _grid_edges(size, grid)
    rank = np.empty(grid * grid, np.int64)
    rank[np.asarray(order, np.int64)] = np.arange(grid * grid)
    cell_rows = np.repeat(np.arange(grid), np.diff(ys))
    cell_cols = np.repeat(np.arange(grid), np.diff(xs))
    pixel_rank = rank[cell_rows[:, None] * grid + cell_cols[None, :]]  # (H, W): rank of each pixel's cell
    return pixel_rank[None] < np.asarray(counts)[:, None, None]


def faithfulness_curves(loaded: "LoadedModel", image: np.ndarray, heat: np.ndarray, label: str, *,
                        steps: int = CURVE_STEPS, grid: int = 16, seed: int = 0) -> FaithfulnessCurves:
    """Deletion and insertion curves of one map for one class: cells (grid x grid) removed (set to the
    image mean) or inserted (into a blurred copy) most salient first, at steps + 1 points, with the
    same curves for a random cell order; all variants predicted in one batched call."""
    column = _class_column(label)
    if not 1 <= int(steps) <= grid * grid:
        raise ConfigError(f"steps must be between 1 and {grid * grid}, got {steps}.")
    image = np.asarray(image, np.float32)
    if image.ndim == 3:
        image = image[..., 0]
    heat = _heat_at(heat, image.shape)
    counts = np.rint(np.linspace(0, grid * grid, int(steps) + 1)).astype(int)
    fill = np.full_like(image, float(image.mean()))
    sigma = max(1.0, 0.025 * min(image.shape[:2]))
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma)
    orders = [cell_order(heat, grid), np.random.default_rng(seed).permutation(grid * grid)]
    variants = []
    for order in orders:
        masks = _cell_masks(order, counts, grid, image.shape[:2])
        variants += [np.where(m, fill, image) for m in masks]  # deletion
        variants += [np.where(m, image, blurred) for m in masks]  # insertion
    probs = loaded.predict(variants)[:, column].astype(float)
    n = len(counts)
    return FaithfulnessCurves(fractions=counts / (grid * grid), deletion=probs[:n], insertion=probs[n:2 * n],
                              random_deletion=probs[2 * n:3 * n], random_insertion=probs[3 * n:])


# --------------------------------------------------------------------------------------------
# Agreement of two maps
# --------------------------------------------------------------------------------------------

#: Share of the pixels counted as a map's "top" region in the agreement overlap.
TOP_SHARE = 0.10


def map_agreement(a: np.ndarray, b: np.ndarray, *, top: float = TOP_SHARE) -> dict[str, float]:
    """Do two maps of one image agree? Spearman rank correlation of their pixels (ties get average ranks;
    NaN when a map is flat) and the IoU of their top `top` share of pixels (b is resized to a's size)."""
    from scipy.stats import rankdata

    if not 0 < float(top) <= 1:
        raise ConfigError(f"the top share must be in (0, 1], got {top}.")
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"expected two (H, W) maps, got {a.shape} and {b.shape}")
    if b.shape != a.shape:
        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_LINEAR)
    fa, fb = a.ravel(), b.ravel()
    if np.ptp(fa) == 0 or np.ptp(fb) == 0:
        rho = float("nan")
    else:
        rho = float(np.corrcoef(rankdata(fa), rankdata(fb))[0, 1])
    k = max(1, int(round(float(top) * fa.size)))
    top_a = np.zeros(fa.size, bool)
    top_b = np.zeros(fa.size, bool)
    top_a[np.argsort(-fa, kind="stable")[:k]] = True
    top_b[np.argsort(-fb, kind="stable")[:k]] = True
    inter = int((top_a & top_b).sum())
    return {"spearman": rho, "top IoU": inter / (2 * k - inter), "top share": float(top)}


__all__ = ["CURVE_STEPS", "DEFAULT_THRESHOLD", "DELETION_FRACTIONS", "FaithfulnessCurves", "IOBB_THRESHOLDS",
           "TOP_SHARE", "box_fraction", "box_mask", "cell_order", "deletion_test", "faithfulness_curves", "inside",
           "intersection", "iobb", "iou", "localize_images", "map_agreement", "map_box", "mask_cells", "peak",
           "pointing_hit", "score_map", "summarize_localization", "work_size"]
