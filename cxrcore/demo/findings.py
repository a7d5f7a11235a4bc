"""The 14 findings, each drawn where and how it shows on a frontal chest radiograph.

A finding acts in up to three stages: `geometry` (changes anatomy: heart size, diaphragm height),
`lungs` (changes the lungs before they are composed: lucency, missing markings) and `opacity` (adds
density to the composed image). Each stage appends the masks its boxes come from to `ctx.masks`.
Placement (side, lobe, position) comes from a per-patient stream, so a finding stays put across a
patient's follow-ups; size and texture vary a little per image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from cxrcore.data.labels import LABELS
from cxrcore.demo import anatomy as an
from cxrcore.demo.anatomy import LEFT, RIGHT, SIGN, Canvas, Geometry, Layers, with_changes

if TYPE_CHECKING:  # pragma: no cover
    from cxrcore.demo.render import Case


def patient_stream(case: "Case", label: str) -> np.random.Generator:
    """Stream for where a patient's finding sits (same for all their images)."""
    return an.stream(case.seed, 17, case.patient, LABELS.index(label))


def image_stream(case: "Case", label: str) -> np.random.Generator:
    """Stream for how a finding looks in one image (size, texture)."""
    return an.stream(case.seed, 19, case.patient, case.followup, LABELS.index(label))


@dataclass
class FindingContext:
    label: str
    c: Canvas
    p: np.random.Generator
    i: np.random.Generator
    masks: list[np.ndarray] = field(default_factory=list)
    state: dict = field(default_factory=dict)


class Finding:
    """Base: a finding that changes nothing (subclasses override the stages they need)."""

    def geometry(self, g: Geometry, ctx: FindingContext) -> Geometry:
        return g

    def lungs(self, g: Geometry, L: Layers, ctx: FindingContext) -> None:
        return None

    def opacity(self, img: np.ndarray, g: Geometry, L: Layers, ctx: FindingContext) -> np.ndarray:
        return img


# ---------------------------------------------------------------------------------------------
# Helpers


def _side(ctx: FindingContext, p_right: float = 0.5) -> int:
    return RIGHT if ctx.p.random() < p_right else LEFT


def _fill(img: np.ndarray, L: Layers, region: np.ndarray, amount: float, extra: float = 0.0) -> np.ndarray:
    """Fill a share of the lung's air with fluid or tissue (amount 1 = as dense as soft tissue)."""
    return img + region * (amount * L.air + extra)


def _lung(L: Layers, side: int | None = None) -> np.ndarray:
    return L.lungs[RIGHT] + L.lungs[LEFT] if side is None else L.lungs[side]


def _point_in_lung(ctx: FindingContext, g: Geometry, side: int, lo: float, hi: float,
                   lat_lo: float = 0.15, lat_hi: float = 0.85) -> tuple[float, float]:
    """A point inside one lung: height between fractions lo..hi of the lung, across lat_lo..lat_hi."""
    a, s = g.a, SIGN[side]  # placed on the patient's anatomy, not this image's pose: it stays put
    fy = float(ctx.p.uniform(lo, hi))
    top, base = a.lung_top + 0.04, a.base[side] - a.dome_h[side] - 0.03
    y = top + fy * (base - top)
    span = a.outer[side] - a.inner - 0.04
    if y > a.hilum_y and side == LEFT:  # keep clear of the heart
        lat_lo = max(lat_lo, 0.45)
    x = 0.5 + s * (a.inner + 0.02 + float(ctx.p.uniform(lat_lo, lat_hi)) * span)
    return x, y


def _lost_volume(c: Canvas, g: Geometry, L: Layers, side: int, lift: float) -> np.ndarray:
    """Lung lost to a raised hemidiaphragm (the volume-loss part of a finding's box)."""
    before = list(g.lift)
    before[side] -= lift
    full = c.poly(an.lung_outline(with_changes(g, lift=before), side))
    return np.clip(full - c.poly(L.outlines[side]), 0, 1) * (1.0 - L.heart)


def _blobs(c: Canvas, rng: np.random.Generator, cx: float, cy: float, spread: tuple[float, float],
           n: int, radius: tuple[float, float]) -> np.ndarray:
    field_ = c.zeros()
    for _ in range(n):
        bx = cx + rng.normal(0, spread[0])
        by = cy + rng.normal(0, spread[1])
        r = rng.uniform(*radius)
        field_ = np.maximum(field_, c.gauss(bx, by, r, r * rng.uniform(0.7, 1.3)))
    return field_


def _texture(c: Canvas, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Smooth random texture in [0, 1] with features of about `scale` (normalized units)."""
    small = max(4, int(round(1.0 / scale)))
    noise = rng.random((small, small)).astype(np.float32)
    up = cv2.resize(noise, (c.size, c.size), interpolation=cv2.INTER_CUBIC)
    up -= up.min()
    return up / max(float(up.max()), 1e-6)


# ---------------------------------------------------------------------------------------------
# Findings


class Cardiomegaly(Finding):
    """Enlarged cardiac silhouette: cardiothoracic ratio well above 0.5."""

    def geometry(self, g, ctx):
        scale = float(ctx.p.uniform(1.45, 1.65) * ctx.i.uniform(0.97, 1.03))
        return with_changes(g, heart_rx=g.heart_rx * scale, heart_ry=g.heart_ry * (1 + 0.35 * (scale - 1)),
                            heart_turn=-10.0)

    def opacity(self, img, g, L, ctx):
        ctx.masks.append(L.heart * (1.0 - L.abdomen))
        return img


class Emphysema(Finding):
    """Hyperinflated, hyperlucent lungs: low flat diaphragm, pruned peripheral vessels, narrow heart."""

    def geometry(self, g, ctx):
        drop = float(ctx.p.uniform(0.04, 0.06))
        return with_changes(g, base=[b + drop for b in g.base], dome_h=[d * 0.3 for d in g.dome_h],
                            outer=[o + 0.012 for o in g.outer], air=[a * 1.3 for a in g.air],
                            heart_rx=g.heart_rx * 0.88, vessel_prune=0.75)

    def opacity(self, img, g, L, ctx):
        ctx.masks.append(np.clip(_lung(L), 0, 1))
        return img


class Atelectasis(Finding):
    """Plate-like band or wedge of collapse at a base, with the hemidiaphragm pulled up (volume loss)."""

    def geometry(self, g, ctx):
        side = _side(ctx, 0.5)
        ctx.state["side"] = side
        ctx.state["wedge"] = ctx.p.random() < 0.4
        lift = list(g.lift)
        ctx.state["lift"] = float(ctx.p.uniform(0.02, 0.04))
        lift[side] += ctx.state["lift"]
        return with_changes(g, lift=lift)

    def opacity(self, img, g, L, ctx):
        c, a, side = ctx.c, g.a, ctx.state["side"]
        s = SIGN[side]
        base = g.base[side] - g.lift[side] - g.dome_h[side]
        layer = np.zeros((c.size, c.size), np.uint8)
        if ctx.state["wedge"]:
            hx = 0.5 + s * (a.inner + 0.05)
            pts = np.array([[hx, a.hilum_y + 0.03], [0.5 + s * (g.outer[side] - 0.01), base - 0.07],
                            [0.5 + s * (a.inner + 0.12), base + 0.03]])
            region = c.blur(c.poly(pts), 0.01)
            amount = 0.6
        else:
            cx = 0.5 + s * (a.inner + float(ctx.p.uniform(0.35, 0.6)) * (g.outer[side] - a.inner))
            cy = base - float(ctx.p.uniform(0.04, 0.09))
            half = float(ctx.p.uniform(0.07, 0.1))
            tilt = math.radians(float(ctx.p.uniform(-12, 12)))
            pts = np.array([[cx - half * math.cos(tilt), cy - half * math.sin(tilt)],
                            [cx + half * math.cos(tilt), cy + half * math.sin(tilt)]])
            c.lines(layer, pts, float(ctx.i.uniform(0.014, 0.02)), 1.0)
            region = c.blur(layer.astype(np.float32) / 255.0, 0.004)
            amount = 0.8
        region = region * L.lungs[side]
        ctx.masks.append(np.maximum(region, _lost_volume(c, g, L, side, ctx.state["lift"])))
        return _fill(img, L, region, amount, 0.03)


class Effusion(Finding):
    """Basal opacity with a meniscus: fluid rising along the lateral wall, costophrenic angle blunted."""

    def geometry(self, g, ctx):
        both = ctx.p.random() < 0.25
        first = _side(ctx, 0.55)
        ctx.state["sides"] = [RIGHT, LEFT] if both else [first]
        ctx.state["height"] = {sd: float(ctx.p.uniform(0.03, 0.12) * ctx.i.uniform(0.85, 1.15))
                               for sd in (RIGHT, LEFT)}
        return g

    def opacity(self, img, g, L, ctx):
        c, a = ctx.c, g.a
        for side in ctx.state["sides"]:
            s = SIGN[side]
            level = g.base[side] - g.lift[side] - g.dome_h[side] - ctx.state["height"][side]
            lateral = np.clip((s * (c.x - 0.5) - a.inner) / (g.outer[side] - a.inner), 0, 1)
            meniscus = level - 0.06 * lateral ** 2.5
            dens = np.clip((c.y - meniscus) / 0.035, 0, 1) ** 0.8
            region = dens * L.lungs[side]
            ctx.masks.append(region)
            img = _fill(img, L, region, 0.97, 0.02)
        return img


class Pneumothorax(Finding):
    """Apical-lateral lucent rim without lung markings, bounded by a thin visceral pleural line."""

    def geometry(self, g, ctx):
        ctx.state["side"] = _side(ctx, 0.55)
        ctx.state["size"] = float(ctx.p.uniform(0.14, 0.26) * ctx.i.uniform(0.85, 1.15))
        return g

    def lungs(self, g, L, ctx):
        c, a, side = ctx.c, g.a, ctx.state["side"]
        s = SIGN[side]
        outline = L.outlines[side]
        hx, hy = 0.5 + s * (a.inner + 0.03), a.hilum_y + 0.02
        y_cut = a.hilum_y + 0.16
        f = ctx.state["size"] * np.clip((y_cut - outline[:, 1]) / 0.12, 0, 1)
        collapsed = outline + f[:, None] * (np.array([hx, hy]) - outline)
        inside = c.poly(collapsed)
        region = c.blur(np.clip(L.lungs[side] - inside, 0, 1), 0.002)
        L.vessels *= 1.0 - np.clip(region * 1.5, 0, 1)
        L.air += 0.16 * region
        # visceral pleural line: the collapsed lung's edge where it faces the air
        k = max(3, int(round(0.004 * c.size)) | 1)
        kernel = np.ones((k, k), np.uint8)
        solid = (inside > 0.5).astype(np.uint8)
        edge = solid - cv2.erode(solid, kernel)
        near = cv2.dilate((region > 0.3).astype(np.uint8), kernel)
        line = (edge * near).astype(np.float32)
        L.extra += 0.14 * c.blur(line, 0.001) * L.lungs[side]
        ctx.masks.append(region)


class Mass(Finding):
    """Round, slightly lobulated opacity larger than 3 cm."""

    def geometry(self, g, ctx):
        side = _side(ctx)
        ctx.state["where"] = (side, _point_in_lung(ctx, g, side, 0.1, 0.8))
        ctx.state["r"] = float(ctx.p.uniform(0.042, 0.065) * ctx.i.uniform(0.95, 1.08))
        ctx.state["lobes"] = ctx.p.uniform(0, 2 * np.pi, 3)
        return g

    def opacity(self, img, g, L, ctx):
        c = ctx.c
        side, (x, y) = ctx.state["where"]
        r = ctx.state["r"]
        ang = np.arctan2(c.y - y, c.x - x)
        ph = ctx.state["lobes"]
        rr = r * (1 + 0.07 * np.sin(2 * ang + ph[0]) + 0.05 * np.sin(3 * ang + ph[1]) + 0.04 * np.sin(5 * ang + ph[2]))
        d = np.sqrt((c.x - x) ** 2 + (c.y - y) ** 2) / rr
        chord = np.sqrt(np.clip(1 - d * d, 0, 1)).astype(np.float32)
        edge = c.blur(np.clip((1 - d) * r * c.size, 0, 1).astype(np.float32), 0.002)
        ctx.masks.append(edge)
        return img + edge * 0.85 * L.air + 0.1 * chord


class Nodule(Finding):
    """One to three small (< 3 cm), well-defined round opacities."""

    def geometry(self, g, ctx):
        n = 1 if ctx.p.random() < 0.7 else int(ctx.p.integers(2, 4))
        spots = []
        for _ in range(n):
            side = _side(ctx)
            spots.append((side, _point_in_lung(ctx, g, side, 0.05, 0.9, 0.2, 0.9),
                          float(ctx.p.uniform(0.014, 0.02))))
        ctx.state["spots"] = spots
        return g

    def opacity(self, img, g, L, ctx):
        c = ctx.c
        for side, (x, y), r in ctx.state["spots"]:
            d = np.sqrt((c.x - x) ** 2 + (c.y - y) ** 2) / r
            chord = np.sqrt(np.clip(1 - d * d, 0, 1)).astype(np.float32)
            edge = np.clip((1 - d) * r * c.size + 0.5, 0, 1).astype(np.float32)
            ctx.masks.append(edge)
            img = img + edge * 0.85 * L.air + 0.2 * chord
        return img


class Consolidation(Finding):
    """Dense homogeneous lobar airspace opacity with air bronchograms."""

    def geometry(self, g, ctx):
        side = _side(ctx)
        zone = int(ctx.p.integers(0, 3))
        lo, hi = ((0.05, 0.3), (0.35, 0.55), (0.6, 0.85))[zone]
        ctx.state["where"] = (side, zone, _point_in_lung(ctx, g, side, lo, hi, 0.3, 0.7))
        return g

    def opacity(self, img, g, L, ctx):
        c, a = ctx.c, g.a
        side, zone, (x, y) = ctx.state["where"]
        blob = _blobs(c, ctx.i, x, y, (0.03, 0.025), int(ctx.i.integers(4, 7)), (0.03, 0.05))
        region = np.clip((blob - 0.35) / 0.2, 0, 1)
        if zone == 0:  # upper lobe: sharp lower edge along the horizontal fissure
            region *= np.clip((y + 0.05 - c.y) / 0.006, 0, 1)
        region = region * L.lungs[side]
        bronch = np.zeros((c.size, c.size), np.uint8)
        s = SIGN[side]
        for _ in range(3):
            ang = math.atan2(y - a.hilum_y, (x - (0.5 + s * (a.inner + 0.04)))) + ctx.i.normal(0, 0.3)
            length = float(ctx.i.uniform(0.04, 0.08))
            c.lines(bronch, np.array([[x - 0.5 * length * math.cos(ang), y - 0.5 * length * math.sin(ang)],
                                      [x + 0.5 * length * math.cos(ang), y + 0.5 * length * math.sin(ang)]]),
                    0.006, 1.0)
        air_br = c.blur(bronch.astype(np.float32) / 255.0, 0.002)
        ctx.masks.append(region)
        return _fill(img, L, region * (1 - 0.45 * air_br), 0.78, 0.02)


class Pneumonia(Finding):
    """Patchy, heterogeneous airspace opacity, usually in a lower zone, sometimes in both lungs."""

    def geometry(self, g, ctx):
        sides = [_side(ctx)]
        if ctx.p.random() < 0.2:
            sides = [RIGHT, LEFT]
        ctx.state["spots"] = [(sd, _point_in_lung(ctx, g, sd, 0.45, 0.9, 0.25, 0.75)) for sd in sides]
        return g

    def opacity(self, img, g, L, ctx):
        c = ctx.c
        tex = _texture(c, ctx.i, 0.03)
        for side, (x, y) in ctx.state["spots"]:
            blob = _blobs(c, ctx.i, x, y, (0.035, 0.03), int(ctx.i.integers(4, 8)), (0.025, 0.045))
            region = np.clip((blob - 0.3) / 0.35, 0, 1) * (0.45 + 0.55 * tex) * L.lungs[side]
            ctx.masks.append(region)
            img = _fill(img, L, region, 0.62, 0.02)
        return img


class Infiltration(Finding):
    """Faint, ill-defined, hazy opacities in the mid and lower zones."""

    def geometry(self, g, ctx):
        sides = [RIGHT, LEFT] if ctx.p.random() < 0.35 else [_side(ctx)]
        ctx.state["spots"] = [(sd, _point_in_lung(ctx, g, sd, 0.3, 0.85, 0.2, 0.8)) for sd in sides]
        return g

    def opacity(self, img, g, L, ctx):
        c = ctx.c
        tex = _texture(c, ctx.i, 0.05)
        for side, (x, y) in ctx.state["spots"]:
            blob = _blobs(c, ctx.i, x, y, (0.05, 0.045), int(ctx.i.integers(3, 7)), (0.025, 0.045))
            region = c.blur(np.clip((blob - 0.2) / 0.5, 0, 1) * (0.3 + 0.7 * tex), 0.01) * L.lungs[side]
            ctx.masks.append(region)
            img = _fill(img, L, region, 0.42, 0.01)
        return img


class Edema(Finding):
    """Bilateral perihilar ("bat-wing") haze with septal lines at the bases."""

    def opacity(self, img, g, L, ctx):
        c, a = ctx.c, g.a
        amount = float(ctx.i.uniform(0.45, 0.6))
        haze = np.zeros_like(img)
        for side in (RIGHT, LEFT):
            s = SIGN[side]
            haze = np.maximum(haze, c.gauss(0.5 + s * (a.inner + 0.07), a.hilum_y + 0.03, 0.085, 0.11))
        region = np.clip(haze * 1.3 - 0.1, 0, 1) * _lung(L)
        lines = np.zeros((c.size, c.size), np.uint8)
        for side in (RIGHT, LEFT):
            s = SIGN[side]
            for _ in range(int(ctx.i.integers(4, 8))):
                y = g.base[side] - g.dome_h[side] - ctx.i.uniform(0.0, 0.1)
                x = 0.5 + s * (g.outer[side] - ctx.i.uniform(0.0, 0.02))
                c.lines(lines, np.array([[x, y], [x - s * ctx.i.uniform(0.02, 0.035), y]]), 0.004, 1.0)
        septal = c.blur(lines.astype(np.float32) / 255.0, 0.001) * _lung(L)
        ctx.masks.append(region)
        return _fill(img, L, region, amount, 0.02) + 0.12 * septal


class Fibrosis(Finding):
    """Coarse reticular lines and small rings (honeycombing), peripheral and basal."""

    def geometry(self, g, ctx):
        sides = [RIGHT, LEFT] if ctx.p.random() < 0.75 else [_side(ctx)]
        ctx.state["sides"] = sides
        lift = list(g.lift)
        for sd in sides:
            lift[sd] += 0.015
        return with_changes(g, lift=lift)

    def opacity(self, img, g, L, ctx):
        c, a = ctx.c, g.a
        r = ctx.i
        for side in ctx.state["sides"]:
            s = SIGN[side]
            layer = np.zeros((c.size, c.size), np.uint8)
            top = a.hilum_y - 0.05
            base = g.base[side] - g.lift[side] - 0.02
            for _ in range(70):
                y = r.uniform(top, base)
                x = 0.5 + s * (a.inner + r.uniform(0.35, 1.0) * (g.outer[side] - a.inner))
                ang = r.uniform(0, np.pi)
                ln = r.uniform(0.012, 0.03)
                c.lines(layer, np.array([[x, y], [x + ln * math.cos(ang), y + ln * math.sin(ang)]]), 0.004, 1.0)
            for _ in range(10):
                y = r.uniform(base - 0.1, base)
                x = 0.5 + s * (a.inner + r.uniform(0.55, 0.95) * (g.outer[side] - a.inner))
                cv2.circle(layer, (int(x * c.size), int(y * c.size)), max(1, int(r.uniform(0.006, 0.01) * c.size)),
                           255, max(1, int(round(0.003 * c.size))), cv2.LINE_AA)
            net = c.blur(layer.astype(np.float32) / 255.0, 0.0015) * L.lungs[side]
            zone = c.blur(net, 0.02)
            area = np.clip(zone / max(float(zone.max()), 1e-6) * 1.6 - 0.2, 0, 1) * L.lungs[side]
            ctx.masks.append(np.maximum(area, _lost_volume(c, g, L, side, 0.015)))
            img = img + 0.5 * net * L.air + _fill(np.zeros_like(img), L, zone / max(float(zone.max()), 1e-6), 0.12)
        return img


class PleuralThickening(Finding):
    """A dense band along the inner chest wall: an apical cap or a lateral pleural rim."""

    def geometry(self, g, ctx):
        ctx.state["side"] = _side(ctx)
        ctx.state["apical"] = ctx.p.random() < 0.4
        ctx.state["thick"] = float(ctx.p.uniform(0.012, 0.022))
        return g

    def opacity(self, img, g, L, ctx):
        c, a, side = ctx.c, g.a, ctx.state["side"]
        s = SIGN[side]
        binary = (L.lungs[side] > 0.5).astype(np.uint8)
        dist = cv2.distanceTransform(binary, cv2.DIST_L2, 3) / c.size
        wobble = 1.0 + 0.35 * np.sin(c.y * 40 + float(ctx.p.uniform(0, 6)))
        rim = np.clip((ctx.state["thick"] * wobble - dist) * c.size, 0, 1) * binary
        lateral = np.clip((s * (c.x - 0.5) - a.inner) / (g.outer[side] - a.inner), 0, 1)
        if ctx.state["apical"]:
            keep = np.clip((a.lung_top + 0.1 - c.y) / 0.02, 0, 1) * np.ones_like(c.x)
        else:
            keep = np.clip((lateral - 0.75) / 0.08, 0, 1) * np.clip((c.y - a.lung_top - 0.12) / 0.03, 0, 1) \
                * np.clip((g.base[side] - 0.1 - c.y) / 0.03, 0, 1)
        region = c.blur((rim * keep).astype(np.float32), 0.002) * L.lungs[side]
        ctx.masks.append(region)
        return _fill(img, L, region, 0.95, 0.05)


class Hernia(Finding):
    """Hiatal hernia: a retrocardiac round opacity holding a gas bubble with a flat air-fluid level."""

    def geometry(self, g, ctx):
        ctx.state["dx"] = float(ctx.p.uniform(-0.02, 0.03))
        ctx.state["r"] = (float(ctx.p.uniform(0.07, 0.095)), float(ctx.p.uniform(0.055, 0.075)))
        ctx.state["level"] = float(ctx.i.uniform(-0.1, 0.3))
        return g

    def opacity(self, img, g, L, ctx):
        c, a = ctx.c, g.a
        rx, ry = ctx.state["r"]
        cx = 0.5 + ctx.state["dx"]
        cy = min(g.base[LEFT] - g.dome_h[LEFT], a.heart_cy + g.heart_ry * 0.5) - ry * 0.3
        oval = c.ellipse(cx, cy, rx, ry, 0, 0.008)
        inner = c.ellipse(cx, cy, rx * 0.82, ry * 0.8, 0, 0.002)
        level = cy + ctx.state["level"] * ry
        gas = inner * np.clip((level - c.y) * c.size, 0, 1)
        ctx.masks.append(oval)
        return img + 0.08 * oval - 0.32 * gas


RENDERERS: dict[str, Finding] = {
    "Atelectasis": Atelectasis(), "Cardiomegaly": Cardiomegaly(), "Consolidation": Consolidation(),
    "Edema": Edema(), "Effusion": Effusion(), "Emphysema": Emphysema(), "Fibrosis": Fibrosis(),
    "Hernia": Hernia(), "Infiltration": Infiltration(), "Mass": Mass(), "Nodule": Nodule(),
    "Pleural_Thickening": PleuralThickening(), "Pneumonia": Pneumonia(), "Pneumothorax": Pneumothorax(),
}
assert tuple(sorted(RENDERERS)) == tuple(sorted(LABELS))
