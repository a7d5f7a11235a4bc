"""A patient's chest, drawn as a frontal radiograph: body, lungs, heart, mediastinum, diaphragm, bones.

Everything is placed in normalized coordinates (0..1 across and down the image; image left is the
patient's right) and drawn at the target size directly, so 256 px and 1,024 px show the same chest.
`Anatomy` is sampled once per patient (stable across follow-ups); `Geometry` is the anatomy as posed in
one image (inspiration, view) after findings that change anatomy (heart size, diaphragm) are applied.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import cv2
import numpy as np

RIGHT, LEFT = 0, 1  # patient sides; RIGHT is drawn on the image's left half
SIGN = (-1.0, 1.0)  # x direction from the midline for each side
_SHIFT = 4  # fixed-point bits for sub-pixel polygon drawing
_FP = float(1 << _SHIFT)


def stream(seed: int, *keys: int) -> np.random.Generator:
    """An independent random stream for (seed, keys...): same keys, same numbers, in any process."""
    return np.random.default_rng([int(seed), *[int(k) for k in keys]])


@dataclass(frozen=True)
class Anatomy:
    """One patient's build, stable across their images (what lets a model recognise them)."""

    body_w: float
    shoulder_y: float
    neck_w: float
    lung_top: float
    base: tuple[float, float]
    dome_h: tuple[float, float]
    outer: tuple[float, float]
    inner: float
    apex_w: float
    heart_dx: float
    heart_cy: float
    heart_rx: float
    heart_ry: float
    heart_angle: float
    knob_r: float
    rib_start: float
    rib_spacing: float
    rib_drop: float
    clav_y: float
    clav_tilt: float
    tissue: float
    air: float
    breast: float
    device: str
    vessel_seed: int
    hilum_y: float


def sample_anatomy(seed: int, patient: int, sex: str) -> Anatomy:
    """Draw a patient's build from their own stream; women are a little smaller and have breast shadows."""
    r = stream(seed, 11, patient)
    u = lambda lo, hi: float(r.uniform(lo, hi))  # noqa: E731
    small = 0.985 if sex == "F" else 1.0
    base_r = u(0.70, 0.77)
    outer = u(0.365, 0.405) * small
    device_roll = r.random()
    device = "pacemaker" if device_roll < 0.05 else "sternotomy" if device_roll < 0.09 else "none"
    return Anatomy(
        body_w=u(0.45, 0.5) * small, shoulder_y=u(0.07, 0.12), neck_w=u(0.075, 0.10),
        lung_top=u(0.10, 0.15), base=(base_r, base_r + u(0.015, 0.04)), dome_h=(u(0.05, 0.09), u(0.045, 0.08)),
        outer=(outer, outer + u(-0.01, 0.015)), inner=u(0.05, 0.065), apex_w=u(0.15, 0.2),
        heart_dx=u(0.035, 0.06), heart_cy=u(0.63, 0.67), heart_rx=u(0.15, 0.17), heart_ry=u(0.1, 0.115),
        heart_angle=u(12.0, 28.0), knob_r=u(0.028, 0.04),
        rib_start=u(0.07, 0.1), rib_spacing=u(0.05, 0.064), rib_drop=u(0.09, 0.13),
        clav_y=u(0.13, 0.18), clav_tilt=u(-0.04, 0.02), tissue=u(0.64, 0.72), air=u(0.26, 0.33),
        breast=u(0.7, 1.0) if sex == "F" else 0.0, device=device, vessel_seed=int(r.integers(2**31)),
        hilum_y=u(0.40, 0.46),
    )


@dataclass
class Geometry:
    """The anatomy as posed in one image, after view, breathing and anatomy-changing findings."""

    a: Anatomy
    base: list[float]
    dome_h: list[float]
    outer: list[float]
    heart_rx: float
    heart_ry: float
    air: list[float]
    view: str = "PA"
    #: Extra lift of one hemidiaphragm (volume loss), per side.
    lift: list[float] = field(default_factory=lambda: [0.0, 0.0])
    vessel_prune: float = 0.0
    #: Change of the heart's tilt in degrees (an enlarged heart lies more horizontally).
    heart_turn: float = 0.0


def pose(a: Anatomy, view: str, rng: np.random.Generator) -> Geometry:
    """Per-image pose: depth of inspiration varies a little; AP views magnify the heart slightly."""
    breath = float(rng.uniform(-0.02, 0.02))
    heart_scale = 1.07 if view == "AP" else 1.0
    return Geometry(a=a, base=[b + breath for b in a.base], dome_h=list(a.dome_h), outer=list(a.outer),
                    heart_rx=a.heart_rx * heart_scale, heart_ry=a.heart_ry * heart_scale,
                    air=[a.air, a.air], view=view)


class Canvas:
    """Pixel grid of one image: size, normalized coordinates and helpers to draw in normalized units."""

    def __init__(self, size: int) -> None:
        self.size = size
        c = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.x = c[None, :]
        self.y = c[:, None]

    def px(self, value: float) -> float:
        return value * self.size

    def _index(self, value: float) -> int:
        """Pixel index of a normalized coordinate, clipped to 0..size."""
        return int(min(max(math.floor(value * self.size), 0), self.size))

    def zeros(self) -> np.ndarray:
        return np.zeros((self.size, self.size), np.float32)

    def blur(self, img: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussian blur with sigma in normalized units (scale-aware)."""
        s = sigma * self.size
        if s < 0.3:
            return img
        if s > 12:  # wide blurs (large images): blur a smaller copy, the result is smooth anyway
            f = int(s // 6)
            h, w = img.shape
            small = cv2.resize(img, (-(-w // f), -(-h // f)), interpolation=cv2.INTER_AREA)
            small = cv2.GaussianBlur(small, (0, 0), s / f, borderType=cv2.BORDER_REPLICATE)
            return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        return cv2.GaussianBlur(img, (0, 0), s, borderType=cv2.BORDER_REPLICATE)

    def poly(self, points: np.ndarray, value: float = 1.0) -> np.ndarray:
        """Filled anti-aliased polygon (points normalized, (K, 2)) as float32 in [0, value]."""
        layer = np.zeros((self.size, self.size), np.uint8)
        pts = np.round((np.asarray(points) * self.size - 0.5) * _FP).astype(np.int32)
        cv2.fillPoly(layer, [pts], 255, cv2.LINE_AA, _SHIFT)
        return layer.astype(np.float32) * (value / 255.0)

    def lines(self, layer: np.ndarray, points: np.ndarray, width: float, value: float) -> None:
        """Draw an open polyline (normalized points, width in normalized units) onto a uint8 layer."""
        pts = np.round((np.asarray(points) * self.size - 0.5) * _FP).astype(np.int32)
        thick = max(1, int(round(width * self.size)))
        cv2.polylines(layer, [pts], False, int(round(255 * value)), thick, cv2.LINE_AA, _SHIFT)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0,
                soft: float = 0.0) -> np.ndarray:
        """Filled ellipse mask (float32 0..1), edge softened by `soft` (normalized units)."""
        out = self.zeros()
        # only pixels near the ellipse can be non-zero: compute on that window
        reach = max(rx, ry) * (1 + 0.5 * max(soft, 1.0 / self.size) / min(rx, ry)) + 2.0 / self.size
        x0, x1 = (self._index(e) for e in (cx - reach, cx + reach + 1.0 / self.size))
        y0, y1 = (self._index(e) for e in (cy - reach, cy + reach + 1.0 / self.size))
        if x1 <= x0 or y1 <= y0:
            return out
        t = math.radians(angle)
        dx, dy = self.x[:, x0:x1] - cx, self.y[y0:y1] - cy
        u = (dx * math.cos(t) + dy * math.sin(t)) / rx
        v = (-dx * math.sin(t) + dy * math.cos(t)) / ry
        r = np.sqrt(u * u + v * v)
        if soft <= 0:
            edge = 1.0 / (min(rx, ry) * self.size)
            out[y0:y1, x0:x1] = np.clip((1.0 - r) / edge + 0.5, 0, 1)
        else:
            out[y0:y1, x0:x1] = np.clip((1.0 - r) * min(rx, ry) / soft + 0.5, 0, 1)
        return out

    def gauss(self, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
        return np.exp(-0.5 * (((self.x - cx) / sx) ** 2 + ((self.y - cy) / sy) ** 2)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Outlines


def _diaphragm_g(u: np.ndarray) -> np.ndarray:
    """Dome profile from the costophrenic angle (u=0) to the cardiophrenic angle (u=1), peak 1."""
    rise = np.sin(0.5 * np.pi * np.clip(u / 0.55, 0, 1)) ** 0.6
    fall = 1.0 - 0.35 * (np.clip((u - 0.55) / 0.45, 0, 1)) ** 2
    return np.where(u <= 0.55, rise, fall)


def diaphragm_y(g: Geometry, side: int, x: np.ndarray) -> np.ndarray:
    """Height of the hemidiaphragm (lung base) at normalized x on one side."""
    s = SIGN[side]
    x_cp = 0.5 + s * (g.outer[side] + 0.01)
    x_med = 0.5 + s * g.a.inner * 0.8
    u = np.clip((x - x_cp) / (x_med - x_cp), 0, 1)
    return g.base[side] - g.lift[side] - g.dome_h[side] * _diaphragm_g(u)


def lung_outline(g: Geometry, side: int, n: int = 48) -> np.ndarray:
    """Closed outline (K, 2) of one lung: apex, lateral wall, diaphragm, mediastinal border."""
    a, s = g.a, SIGN[side]
    top = a.lung_top + (0.012 if side == LEFT else 0.0)
    base = g.base[side] - g.lift[side]
    outer = g.outer[side]
    t = np.linspace(0, 1, n)
    lat_x = 0.5 + s * (a.apex_w + (outer + 0.01 * t - a.apex_w) * np.sqrt(np.sin(0.5 * np.pi * t)))
    lat_y = top + (base - top) * t
    dx = np.linspace(0.5 + s * (outer + 0.01), 0.5 + s * a.inner * 0.8, n)[1:]
    dy = diaphragm_y(g, side, dx)
    med_y = np.linspace(dy[-1], top + 0.07, n // 2)
    med_x = np.full_like(med_y, 0.5 + s * a.inner)
    med_x = med_x + s * 0.012 * np.clip((med_y - a.hilum_y) / 0.1, 0, 1)  # heart pushes the border out
    cap = np.linspace(0, 1, n // 3)[1:-1]
    cap_x = 0.5 + s * (a.inner + (a.apex_w - a.inner) * np.sin(0.5 * np.pi * cap))
    cap_y = top + 0.07 * (1 - np.sin(0.5 * np.pi * cap) ** 0.5)
    xs = np.concatenate([lat_x, dx, med_x, cap_x])
    ys = np.concatenate([lat_y, dy, med_y, cap_y])
    return np.stack([xs, ys], axis=1)


def heart_outline(g: Geometry, n: int = 72) -> np.ndarray:
    """Cardiac silhouette: the tilted heart ellipse joined smoothly to the mediastinum above it."""
    a = g.a
    cx, cy = heart_box_center(g)
    t = math.radians(a.heart_angle + g.heart_turn)
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ex, ey = g.heart_rx * np.cos(th), g.heart_ry * np.sin(th)
    pts = np.stack([cx + ex * math.cos(t) - ey * math.sin(t), cy + ex * math.sin(t) + ey * math.cos(t)], axis=1)
    anchors = np.array([[0.5 - a.inner, a.hilum_y + 0.03], [0.5 + a.inner + 0.01, a.hilum_y - 0.01]])
    hull = cv2.convexHull(np.concatenate([pts, anchors]).astype(np.float32))
    return hull[:, 0, :].astype(np.float64)


def heart_mask(c: Canvas, g: Geometry) -> np.ndarray:
    return c.blur(c.poly(heart_outline(g)), 0.006)


def heart_box_center(g: Geometry) -> tuple[float, float]:
    a = g.a
    return 0.5 + a.heart_dx + (g.heart_rx - a.heart_rx) * 0.35, a.heart_cy - (g.heart_ry - a.heart_ry) * 0.3


def body_halfwidth(a: Anatomy, y: np.ndarray) -> np.ndarray:
    """Half-width of the trunk at height y: neck, sloping shoulders, chest wall."""
    shoulder = np.clip((y - (a.shoulder_y - 0.1)) / 0.14, 0, 1)
    shoulder = shoulder * shoulder * (3 - 2 * shoulder)
    w = a.neck_w + (a.body_w + 0.07 - a.neck_w) * shoulder
    return w - 0.07 * np.clip((y - a.shoulder_y - 0.03) / 0.2, 0, 1) - 0.015 * np.clip((y - 0.7) / 0.3, 0, 1)


# ---------------------------------------------------------------------------------------------
# Layers


@dataclass
class Layers:
    """Float32 layers of one image before findings and tone mapping (all S x S)."""

    body: np.ndarray
    lungs: list[np.ndarray]
    lung_core: list[np.ndarray]
    air: np.ndarray
    heart: np.ndarray
    vessels: np.ndarray
    bones: np.ndarray
    extra: np.ndarray
    outlines: list[np.ndarray]
    #: 1 below the diaphragm (abdomen), 0 above.
    abdomen: np.ndarray


def _chord(r: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(1.0 - r * r, 0, 1)).astype(np.float32)


def body_layer(c: Canvas, a: Anatomy) -> np.ndarray:
    """Soft-tissue thickness of trunk, neck, shoulders and arms (0 outside the body)."""
    w = body_halfwidth(a, c.y)
    dx = np.abs(c.x - 0.5)
    trunk = _chord(dx / w) ** 0.85
    trunk *= np.clip((c.y + 0.02) / 0.06, 0, 1)
    arm_c = a.body_w + 0.07
    arm = 0.6 * _chord((dx - arm_c) / 0.045) ** 0.8 * np.clip((c.y - a.shoulder_y) / 0.05, 0, 1)
    head = 0.8 * _chord((dx - (a.body_w + 0.01)) / 0.07) * np.clip(1 - np.abs(c.y - a.shoulder_y - 0.01) / 0.08, 0, 1)
    body = np.maximum(trunk, np.maximum(arm, head))
    belly = 0.12 * np.clip((c.y - 0.68) / 0.3, 0, 1)
    return (body * (1.0 + belly)).astype(np.float32)


def vessel_tree(a: Anatomy) -> list[tuple[float, float, float, float, float, float]]:
    """Branching pulmonary vessels from each hilum, fixed per patient: (x0, y0, x1, y1, width, value)."""
    r = np.random.default_rng(a.vessel_seed)
    segs: list[tuple[float, float, float, float, float, float]] = []

    def grow(x: float, y: float, ang: float, length: float, width: float, value: float, depth: int) -> None:
        x1 = x + length * math.cos(ang)
        y1 = y + length * math.sin(ang)
        segs.append((x, y, x1, y1, width, value))
        if depth == 0:
            return
        for turn in (-1, 1):
            if depth < 4 and r.random() < 0.3:
                continue
            grow(x1, y1, ang + turn * r.uniform(0.2, 0.6) + r.normal(0, 0.15), length * r.uniform(0.7, 0.95),
                 width * 0.72, value * 0.8, depth - 1)

    for side in (RIGHT, LEFT):
        s = SIGN[side]
        hx, hy = 0.5 + s * (a.inner + 0.04), a.hilum_y
        for deg in np.linspace(-120, 90, 7):
            ang = math.radians(deg + r.normal(0, 12))
            ang = ang if s > 0 else math.pi - ang
            grow(hx + r.normal(0, 0.01), hy + r.normal(0, 0.015), ang, r.uniform(0.025, 0.045), 0.0065, 1.0, 6)
    return segs


@lru_cache(maxsize=64)
def _vessel_groups(a: Anatomy) -> tuple[tuple[float, float, np.ndarray], ...]:
    """The vessel tree grouped by (width, value): (width, value, segments (K, 2, 2)), cached per patient."""
    groups: dict[tuple[float, float], list] = {}
    for x0, y0, x1, y1, width, value in vessel_tree(a):
        groups.setdefault((round(width, 5), round(value, 3)), []).append(((x0, y0), (x1, y1)))
    return tuple((w, v, np.array(segs, dtype=np.float64)) for (w, v), segs in sorted(groups.items()))


def vessel_layer(c: Canvas, a: Anatomy) -> np.ndarray:
    """Lung markings: the patient's vessel tree plus fine parenchymal texture."""
    layer = np.zeros((c.size, c.size), np.uint8)
    for width, value, segs in _vessel_groups(a):
        pts = np.round((segs * c.size - 0.5) * _FP).astype(np.int32)
        thick = max(1, int(round(width * c.size)))
        cv2.polylines(layer, list(pts), False, int(round(255 * value)), thick, cv2.LINE_AA, _SHIFT)
    r = np.random.default_rng(a.vessel_seed + 1)
    coarse = r.random((48, 48)).astype(np.float32)
    tex = cv2.resize(coarse, (c.size, c.size), interpolation=cv2.INTER_CUBIC)
    return c.blur(layer.astype(np.float32) / 255.0, 0.0025) * 0.8 + 0.35 * (tex - 0.5)


def rib_layers(c: Canvas, g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Posterior ribs (bright, curved, with cortical edges) and anterior ribs (faint)."""
    a = g.a
    post = np.zeros((c.size, c.size), np.uint8)
    inner = np.zeros((c.size, c.size), np.uint8)
    ante = np.zeros((c.size, c.size), np.uint8)
    t = np.linspace(0, 1, 28)
    width = 0.026
    for side in (RIGHT, LEFT):
        s = SIGN[side]
        reach = g.outer[side] + 0.035
        for k in range(12):
            y0 = a.rib_start + k * a.rib_spacing * (1 + 0.03 * k)
            if y0 > g.base[side] - 0.04:
                break
            xs = 0.5 + s * (0.03 + (reach - 0.03) * t)
            ys = y0 - 0.028 * np.sin(np.pi * t * 0.9) + a.rib_drop * (1 + 0.04 * k) * t ** 2.5
            # lateral turn around the chest wall
            turn = np.linspace(0, 1, 8)[1:]
            tx = xs[-1] + s * 0.012 * np.sin(np.pi * turn)
            ty = ys[-1] + 0.03 * turn
            pts = np.stack([np.concatenate([xs, tx]), np.concatenate([ys, ty])], axis=1)
            w = width * (0.85 + 0.025 * k)
            c.lines(post, pts, w, 1.0)
            c.lines(inner, pts, w * 0.45, 1.0)
            # anterior rib: from the lateral wall, down and inward to the costal cartilage
            u = np.linspace(0, 1, 20)
            ax = tx[-1] - s * u * (reach - 0.12)
            ay = ty[-1] + (0.1 + 0.005 * k) * u - 0.025 * np.sin(np.pi * u)
            c.lines(ante, np.stack([ax, ay], axis=1), width * 1.2, 1.0)
    post_f = post.astype(np.float32) / 255.0 - 0.45 * inner.astype(np.float32) / 255.0
    return c.blur(post_f, 0.0035), c.blur(ante.astype(np.float32) / 255.0, 0.005)


def clavicle_layer(c: Canvas, g: Geometry) -> np.ndarray:
    a = g.a
    layer = np.zeros((c.size, c.size), np.uint8)
    u = np.linspace(0, 1, 30)
    lift = -0.025 if g.view == "AP" else 0.0
    for side in (RIGHT, LEFT):
        s = SIGN[side]
        xs = 0.5 + s * (0.055 + 0.29 * u)
        ys = a.clav_y + lift + 0.035 - (0.08 - a.clav_tilt) * u ** 1.1 + 0.012 * np.sin(2 * np.pi * u)
        c.lines(layer, np.stack([xs, ys], axis=1), 0.017, 1.0)
        # scapula: medial border along the upper lateral chest wall, and the humeral head
        sx = 0.5 + s * np.linspace(g.outer[side] + 0.02, g.outer[side] - 0.05, 12)
        sy = np.linspace(a.clav_y + 0.01, a.hilum_y - 0.02, 12)
        c.lines(layer, np.stack([sx, sy], axis=1), 0.01, 0.35 if g.view == "PA" else 0.6)
    out = layer.astype(np.float32) / 255.0
    for side in (RIGHT, LEFT):
        s = SIGN[side]
        out += 0.6 * c.ellipse(0.5 + s * (a.body_w + 0.05), a.shoulder_y + 0.03, 0.08, 0.085, 0, 0.01)
    return c.blur(out, 0.003)


def spine_layer(c: Canvas, g: Geometry) -> np.ndarray:
    a = g.a
    dx = np.abs(c.x - 0.5)
    column = np.clip((0.034 - dx) / 0.008, 0, 1)
    discs = 0.5 + 0.5 * np.cos(2 * np.pi * (c.y - a.rib_start) / (a.rib_spacing * 0.95))
    body = column * (0.85 + 0.15 * discs ** 4)
    pedicle = np.exp(-0.5 * ((dx - 0.027) / 0.006) ** 2) * (0.5 + 0.5 * np.cos(
        2 * np.pi * (c.y - a.rib_start - 0.2 * a.rib_spacing) / (a.rib_spacing * 0.95))) ** 6
    return (body + 0.5 * pedicle).astype(np.float32)


def device_layer(c: Canvas, a: Anatomy) -> np.ndarray:
    """Pacemaker with its lead, or sternotomy wires: patient-specific, like in real archives."""
    layer = np.zeros((c.size, c.size), np.uint8)
    if a.device == "pacemaker":
        x0, y0 = 0.5 + 0.22, a.clav_y + 0.06
        box = np.array([[x0 - 0.035, y0 - 0.022], [x0 + 0.035, y0 - 0.022], [x0 + 0.04, y0 + 0.022],
                        [x0 - 0.035, y0 + 0.025]])
        out = c.poly(box, 1.0)
        route = np.array([[x0 - 0.03, y0], [0.56, a.clav_y + 0.07], [0.53, a.hilum_y - 0.02],
                          [0.54, a.heart_cy - 0.04], [0.5 + a.heart_dx + 0.04, a.heart_cy + 0.03]])
        u = np.linspace(0, len(route) - 1, 60)
        lead = np.stack([np.interp(u, np.arange(len(route)), route[:, 0]),
                         np.interp(u, np.arange(len(route)), route[:, 1])], axis=1)
        c.lines(layer, lead, 0.003, 0.35)
        return np.maximum(out, c.blur(layer.astype(np.float32) / 255.0, 0.003))
    if a.device == "sternotomy":
        for k in range(5):
            y = a.hilum_y - 0.1 + k * 0.045
            loop = np.array([[0.5 - 0.012, y - 0.008], [0.5 + 0.012, y - 0.006], [0.5 + 0.011, y + 0.007],
                             [0.5 - 0.011, y + 0.008], [0.5 - 0.012, y - 0.008]])
            c.lines(layer, loop, 0.004, 1.0)
    return layer.astype(np.float32) / 255.0


def gas_layer(c: Canvas, g: Geometry, rng: np.random.Generator) -> np.ndarray:
    """Stomach bubble under the left hemidiaphragm and bowel gas (varies per image)."""
    out = c.zeros()
    dome = g.base[LEFT] - g.dome_h[LEFT]
    out += c.ellipse(0.5 + float(rng.uniform(0.14, 0.22)), dome + float(rng.uniform(0.05, 0.08)),
                     float(rng.uniform(0.04, 0.07)), float(rng.uniform(0.025, 0.04)), 0, 0.015)
    cx, cy = float(rng.uniform(0.35, 0.65)), float(rng.uniform(min(dome + 0.15, 0.9), 0.98))
    for _ in range(int(rng.integers(2, 7))):
        out += 0.5 * c.ellipse(cx + float(rng.normal(0, 0.08)), cy + float(rng.normal(0, 0.05)),
                               float(rng.uniform(0.015, 0.035)), float(rng.uniform(0.012, 0.025)),
                               float(rng.uniform(0, 180)), 0.015)
    return np.clip(out, 0, 1)


def render_layers(c: Canvas, g: Geometry, rng: np.random.Generator | None = None) -> Layers:
    """Draw every anatomical layer of one posed chest."""
    a = g.a
    body = body_layer(c, a)
    heart = heart_mask(c, g)
    knob = c.ellipse(0.5 + a.inner - 0.004, a.hilum_y - 0.1, a.knob_r, a.knob_r * 1.2, 0, 0.004)
    lungs, cores, outlines = [], [], []
    for side in (RIGHT, LEFT):
        outline = lung_outline(g, side)
        raw = c.blur(c.poly(outline), 0.003)
        raw = raw * (1.0 - heart) * (1.0 - (knob if side == LEFT else 0.0))
        lungs.append(raw.astype(np.float32))
        cores.append(c.blur(raw, 0.035))
        outlines.append(outline)
    lung = lungs[RIGHT] + lungs[LEFT]
    core = np.clip((cores[RIGHT] + cores[LEFT]) * 1.5 - 0.2, 0, 1)
    apex_fade = 0.7 + 0.3 * np.clip((c.y - a.lung_top) / 0.2, 0, 1)
    medial = 0.75 + 0.25 * np.clip((np.abs(c.x - 0.5) - a.inner) / 0.15, 0, 1)
    air = lung * (0.3 + 0.7 * core) * apex_fade * medial
    air *= np.where(c.x < 0.5, g.air[RIGHT], g.air[LEFT]).astype(np.float32)
    post, ante = rib_layers(c, g)
    lung_now = lungs[RIGHT] + lungs[LEFT]
    bones = (0.06 * post + 0.018 * ante) * (0.2 + 0.8 * lung_now) + 0.11 * clavicle_layer(c, g) \
        + 0.07 * spine_layer(c, g)
    vessels = vessel_layer(c, a)
    extra = 0.10 * device_layer(c, a) * 4.0
    # hila, trachea and main bronchi
    extra += 0.09 * (c.gauss(0.5 - a.inner - 0.03, a.hilum_y, 0.025, 0.04)
                     + c.gauss(0.5 + a.inner + 0.03, a.hilum_y - 0.01, 0.025, 0.04))
    trachea = np.clip((0.02 - np.abs(c.x - 0.5 + 0.004)) / 0.008, 0, 1) * np.clip(
        (a.hilum_y - 0.08 - c.y) / 0.02, 0, 1) * np.clip((c.y - 0.02) / 0.05, 0, 1)
    extra -= 0.05 * trachea
    if a.breast > 0:
        for side in (RIGHT, LEFT):
            s = SIGN[side]
            cy = g.base[side] - 0.06
            extra += 0.045 * a.breast * c.ellipse(0.5 + s * 0.24, cy + 0.06, 0.19, 0.14, s * 8.0, 0.05)
    dia = np.minimum(diaphragm_y(g, RIGHT, c.x), diaphragm_y(g, LEFT, c.x))
    dia = np.where(np.abs(c.x - 0.5) < a.inner * 0.8, g.base[LEFT] - g.dome_h[LEFT] * 0.65, dia)
    abdomen = np.clip((c.y - dia) / 0.02, 0, 1)
    extra += 0.09 * heart * (1 - abdomen) + 0.1 * abdomen * body * np.clip((0.45 - np.abs(c.x - 0.5)) / 0.1, 0, 1)
    if rng is not None:
        extra -= 0.08 * gas_layer(c, g, rng) * abdomen
    return Layers(body=body, lungs=lungs, lung_core=cores, air=air.astype(np.float32), heart=heart,
                  vessels=vessels, bones=bones.astype(np.float32), extra=extra.astype(np.float32),
                  outlines=outlines, abdomen=abdomen.astype(np.float32))


def composite(c: Canvas, g: Geometry, L: Layers) -> np.ndarray:
    """Brightness (0 air outside the body .. ~1 dense bone) before findings, pose and tone mapping."""
    lung = L.lungs[RIGHT] + L.lungs[LEFT]
    periphery = 1.0 - np.clip((L.lung_core[RIGHT] + L.lung_core[LEFT]) * 1.6 - 0.3, 0, 1)
    markings = 0.12 * L.vessels * lung * (1.0 - g.vessel_prune * (0.4 + 0.6 * periphery))
    below = np.clip((max(g.base) + 0.03 - c.y) / 0.08, 0, 1)
    bones = L.bones * (0.6 + 0.4 * lung) * (0.4 + 0.6 * below)
    b = 0.03 + g.a.tissue * L.body - L.air + markings + bones + L.extra
    return b.astype(np.float32)


def with_changes(g: Geometry, **changes) -> Geometry:
    """A copy of a geometry with some fields replaced (findings change anatomy through this)."""
    return replace(g, **changes)
