"""Render one demo case: the patient's chest, its findings, pose, exposure and noise, and the boxes.

Every random choice comes from a stream keyed by (seed, patient, follow-up, purpose), so an image does
not depend on which process drew it, and removing one finding leaves the rest of the image unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cxrcore.data.labels import LABELS
from cxrcore.demo import anatomy as an
from cxrcore.demo import findings as fd

#: Stream purposes (the last key of an image's streams).
_POSE, _EXPOSURE, _NOISE, _MARKER, _GAS = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class Case:
    """One image to draw: who, which follow-up, which view, which findings."""

    seed: int
    patient: int
    followup: int
    sex: str
    age: int
    view: str
    labels: tuple[str, ...]

    @property
    def name(self) -> str:
        """NIH-style file name, e.g. 00000012_003.png (the loader reads the patient from it)."""
        return f"{self.patient:08d}_{self.followup:03d}.png"


@dataclass(frozen=True)
class Box:
    """A finding's bounding box in the image's own pixels (NIH BBox_List_2017 convention)."""

    label: str
    x: int
    y: int
    w: int
    h: int


@dataclass
class Rendered:
    pixels: np.ndarray  # (S, S) uint8
    boxes: list[Box]


def _image_stream(case: Case, purpose: int) -> np.random.Generator:
    return an.stream(case.seed, 13, case.patient, case.followup, purpose)


def _pose_matrix(case: Case, size: int) -> np.ndarray:
    r = _image_stream(case, _POSE)
    angle = float(r.uniform(-4.0, 4.0))
    scale = float(r.uniform(0.93, 1.07))
    shift = r.uniform(-0.03, 0.03, size=2) * size
    m = cv2.getRotationMatrix2D((size / 2.0, size / 2.0), angle, scale)
    m[:, 2] += shift
    return m


def _box(label: str, mask: np.ndarray, m: np.ndarray, size: int) -> Box | None:
    """Box around the posed mask: mask pixels above half its peak, mapped through the pose matrix."""
    peak = float(mask.max()) if mask.size else 0.0
    if peak <= 0:
        return None
    ys, xs = np.nonzero(mask >= 0.5 * peak)
    pts = np.stack([xs + 0.5, ys + 0.5], axis=1) @ m[:, :2].T + m[:, 2]
    x0, y0 = np.floor(pts.min(axis=0)).astype(int)
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
    x0, y0 = max(0, int(x0)), max(0, int(y0))
    x1, y1 = min(size, int(x1)), min(size, int(y1))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return Box(label, x0, y0, x1 - x0, y1 - y0)


def _tone(img: np.ndarray, case: Case, c: an.Canvas) -> np.ndarray:
    """Exposure, contrast, edge enhancement and quantum noise, as a processed radiograph looks."""
    r = _image_stream(case, _EXPOSURE)
    lo = float(r.uniform(-0.02, 0.08))
    hi = float(r.uniform(0.86, 1.02))
    gamma = float(r.uniform(0.8, 1.25))
    out = np.clip((img - lo) / (hi - lo), 0, 1) ** gamma
    out = out + float(r.uniform(0.25, 0.6)) * (out - c.blur(out, 0.02))
    n = _image_stream(case, _NOISE)
    noise = n.standard_normal(out.shape).astype(np.float32)
    noise = c.blur(noise, 0.0012) * float(n.uniform(0.008, 0.02)) * max(1.0, c.size / 256) ** 0.5
    out = out + noise
    return np.clip(out, 0, 1)


def _marker(pixels: np.ndarray, case: Case) -> None:
    """Side marker ('L' or 'R'), as radiographers put on the film; placement varies per image."""
    r = _image_stream(case, _MARKER)
    if r.random() < 0.35:
        return
    size = pixels.shape[0]
    scale = size / 512.0
    x = int(size * r.uniform(0.84, 0.92))
    y = int(size * r.uniform(0.05, 0.1))
    text = "L" if r.random() < 0.8 else "R"
    cv2.putText(pixels, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.9 * scale, 235,
                max(1, int(round(2 * scale))), cv2.LINE_AA)


def render_case(case: Case, size: int) -> Rendered:
    """Draw one case at `size` x `size`: uint8 pixels and one box per rendered finding component."""
    c = an.Canvas(size)
    anat = an.sample_anatomy(case.seed, case.patient, case.sex)
    geom = an.pose(anat, case.view, _image_stream(case, _POSE + 100))
    labels = [label for label in LABELS if label in case.labels]
    ctxs = {label: fd.FindingContext(label, c, fd.patient_stream(case, label), fd.image_stream(case, label))
            for label in labels}
    for label in labels:
        geom = fd.RENDERERS[label].geometry(geom, ctxs[label])
    layers = an.render_layers(c, geom, _image_stream(case, _GAS))
    for label in labels:
        fd.RENDERERS[label].lungs(geom, layers, ctxs[label])
    img = an.composite(c, geom, layers)
    for label in labels:
        img = fd.RENDERERS[label].opacity(img, geom, layers, ctxs[label])
    m = _pose_matrix(case, size)
    img = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    pixels = np.rint(_tone(img, case, c) * 255.0).astype(np.uint8)
    _marker(pixels, case)
    boxes = []
    for label in labels:
        for mask in ctxs[label].masks:
            box = _box(label, mask, m, size)
            if box is not None:
                boxes.append(box)
    return Rendered(pixels=pixels, boxes=boxes)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 grayscale image (deterministic: same pixels, same bytes)."""
    ok, buf = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:  # pragma: no cover - OpenCV only fails here on out-of-memory
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()

