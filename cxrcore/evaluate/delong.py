"""DeLong's paired test of AUROCs of several models scored on the same images (Sun & Xu 2014, O(n log n)).

Sun X, Xu W. Fast implementation of DeLong's algorithm for comparing the areas under correlated
receiver operating characteristic curves. IEEE Signal Processing Letters 21(11):1389-1393, 2014.
DeLong ER, DeLong DM, Clarke-Pearson DL. Biometrics 44(3):837-845, 1988.

The test treats images as independent. NIH patients contribute several images each, so p-values are
somewhat optimistic when a model's errors cluster by patient; `compare --bootstrap` adds a
patient-level bootstrap interval of each difference as a check.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from cxrcore.errors import ConfigError, PredictionsError
from cxrcore.evaluate.metrics import _groups, bootstrap_auroc, ci_problem, jsonable, midranks, percentile_ci

_Z975 = 1.959963984540054


@dataclass
class DeLongEstimate:
    """AUROCs of k models on one binary outcome and the DeLong covariance matrix of those AUROCs."""

    aucs: np.ndarray  # (k,)
    cov: np.ndarray   # (k, k); NaN when there are fewer than 2 positives or 2 negatives
    n_pos: int
    n_neg: int


def delong_covariance(y_true: np.ndarray, scores: np.ndarray) -> DeLongEstimate:
    """AUROCs and their covariance for `scores` (k, n) or (n,) against 0/1 `y_true` (n,), via midranks.

    For positives X (m) and negatives Y (n): with midranks T_X within X, T_Y within Y and T_Z in X+Y,
    V10_i = (T_Z(X_i) - T_X(X_i)) / n, V01_j = 1 - (T_Z(Y_j) - T_Y(Y_j)) / m,
    AUC = mean(V10), S = cov(V10) / m + cov(V01) / n.
    """
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[None, :]
    if y.ndim != 1 or s.ndim != 2 or s.shape[1] != y.shape[0]:
        raise ValueError(f"scores must be (k, n) with n = len(y_true); got {s.shape} and {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise PredictionsError("labels must be 0 or 1.", fix="binarize the labels first.")
    if not np.isfinite(s).all():
        raise PredictionsError("scores contain NaN or infinite values.", fix="remove or recompute them.")
    pos = y.astype(bool)
    m, n = int(pos.sum()), int((~pos).sum())
    k = s.shape[0]
    if m == 0 or n == 0:
        return DeLongEstimate(np.full(k, np.nan), np.full((k, k), np.nan), m, n)
    x, z = s[:, pos], s[:, ~pos]
    v10 = np.empty((k, m))
    v01 = np.empty((k, n))
    aucs = np.empty(k)
    for r in range(k):
        tx = midranks(x[r])
        ty = midranks(z[r])
        tz = midranks(np.concatenate([x[r], z[r]]))
        aucs[r] = (tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)
        v10[r] = (tz[:m] - tx) / n
        v01[r] = 1.0 - (tz[m:] - ty) / m
    if m < 2 or n < 2:
        cov = np.full((k, k), np.nan)
    else:
        cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return DeLongEstimate(aucs=aucs, cov=cov, n_pos=m, n_neg=n)


@dataclass
class PairedTest:
    """DeLong test of AUC(model) - AUC(reference) on the same images; p two-sided."""

    auc_reference: float
    auc_model: float
    delta: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float
    note: str | None = None


def _normal_two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


def paired_test(est: DeLongEstimate, reference: int, model: int) -> PairedTest:
    """z test of the difference of two AUROCs from one DeLong estimate.

    Zero variance of the difference (e.g. identical predictions) is handled explicitly: p = 1 when
    the AUROCs are equal, p = 0 (z = +-inf) when they differ.
    """
    a, b = float(est.aucs[reference]), float(est.aucs[model])
    delta = b - a
    nan = math.nan
    if math.isnan(delta):
        return PairedTest(a, b, delta, nan, nan, nan, nan, nan, "AUROC undefined (no positive or no negative images).")
    var = float(est.cov[reference, reference] + est.cov[model, model] - 2.0 * est.cov[reference, model])
    if math.isnan(var):
        return PairedTest(a, b, delta, nan, nan, nan, nan, nan,
                          "too few positive or negative images (need 2 of each) for DeLong's variance.")
    scale = max(abs(float(est.cov[reference, reference])), abs(float(est.cov[model, model])), 1e-300)
    if var <= 1e-12 * scale or var <= 0.0:
        if abs(delta) <= 1e-12:
            return PairedTest(a, b, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, "identical rankings: zero variance, p = 1.")
        z = math.copysign(math.inf, delta)
        return PairedTest(a, b, delta, 0.0, z, 0.0, delta, delta,
                          "zero variance of the difference with unequal AUROCs: p = 0.")
    se = math.sqrt(var)
    z = delta / se
    return PairedTest(a, b, delta, se, z, _normal_two_sided(z), delta - _Z975 * se, delta + _Z975 * se)


def delong_test(y_true: np.ndarray, p_reference: np.ndarray, p_model: np.ndarray) -> PairedTest:
    """DeLong's paired test of two models' AUROCs on the same images."""
    est = delong_covariance(y_true, np.vstack([np.asarray(p_reference, float), np.asarray(p_model, float)]))
    return paired_test(est, 0, 1)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN entries stay NaN and do not count as tests."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    if valid.size == 0:
        return out
    order = valid[np.argsort(p[valid], kind="mergesort")]
    m = order.size
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


# ---------------------------------------------------------------------------------------------
# Several models, several classes


@dataclass
class MeanDifference:
    """Difference of mean AUROC (model - reference) over the classes defined on these images, with a
    paired patient-bootstrap interval and two-sided p-value (the same resampled patients for both)."""

    delta: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    replicates_used: int = 0
    n_bootstrap: int = 0
    classes: list[str] = field(default_factory=list)
    note: str | None = None

    def p_text(self) -> str:
        """'0.0312', or '< 0.002' when no replicate fell on the other side of zero."""
        if math.isnan(self.p_value):
            return "-"
        if self.p_value == 0.0:
            return f"< {2.0 / max(self.replicates_used, 1):.2g}"
        return f"{self.p_value:.4f}"

    def to_dict(self) -> dict:
        return jsonable(asdict(self))


def mean_difference(boot_model: np.ndarray | None, boot_reference: np.ndarray | None, auc_model: np.ndarray,
                    auc_reference: np.ndarray, classes: Sequence[str], n_units: int,
                    level: float = 0.95) -> MeanDifference:
    """Mean-AUROC difference from per-class AUROCs (k,) and paired bootstrap replicates (B, k).

    The p-value is the bootstrap's two-sided one: twice the smaller share of replicate differences at
    or below / at or above zero (capped at 1). Replicates where a class is undefined are dropped, and
    the interval and p follow `metrics.ci_problem`'s rule for reporting."""
    defined = np.isfinite(auc_model) & np.isfinite(auc_reference)
    names = [c for c, ok in zip(classes, defined) if ok]
    if not names:
        return MeanDifference(math.nan, classes=[], note="no class has both positive and negative images.")
    delta = float(np.mean(auc_model[defined]) - np.mean(auc_reference[defined]))
    if boot_model is None or boot_reference is None or not boot_model.shape[0]:
        return MeanDifference(delta, classes=names, note="no bootstrap replicates: no interval or p-value.")
    reps = boot_model[:, defined].mean(axis=1) - boot_reference[:, defined].mean(axis=1)
    finite = reps[np.isfinite(reps)]
    b = int(boot_model.shape[0])
    problem = ci_problem(int(finite.size), b, n_units, level)
    if problem:
        return MeanDifference(delta, replicates_used=int(finite.size), n_bootstrap=b, classes=names, note=problem)
    low, high = percentile_ci(finite, level)
    p = min(1.0, 2.0 * min(np.mean(finite <= 0.0), np.mean(finite >= 0.0)))
    return MeanDifference(delta, low, high, float(p), int(finite.size), b, names)


@dataclass
class PairComparison:
    """One model against the reference over all compared classes (Holm across classes)."""

    reference: str
    model: str
    classes: dict[str, PairedTest]
    p_holm: dict[str, float]
    bootstrap_ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    mean: MeanDifference | None = None

    def to_dict(self) -> dict:
        classes = {}
        for label, t in self.classes.items():
            entry = {"auc_reference": t.auc_reference, "auc_model": t.auc_model, "delta": t.delta,
                     "se": t.se, "z": t.z, "p_value": t.p_value, "p_holm": self.p_holm.get(label, math.nan),
                     "delta_ci_low": t.ci_low, "delta_ci_high": t.ci_high, "note": t.note}
            if label in self.bootstrap_ci:
                entry["delta_bootstrap_ci_low"], entry["delta_bootstrap_ci_high"] = self.bootstrap_ci[label]
            classes[label] = entry
        return {"reference": self.reference, "model": self.model, "classes": classes,
                "mean_auroc_difference": self.mean.to_dict() if self.mean is not None else None}


@dataclass
class Comparison:
    """Per-model AUROCs (with DeLong 95% CIs) and each model's paired tests against the reference."""

    names: list[str]
    labels: list[str]
    reference: str
    aurocs: dict[str, dict[str, tuple[float, float, float]]]  # model -> label -> (auc, low, high)
    pairs: list[PairComparison]
    n_images: int
    n_pos: dict[str, int]
    n_bootstrap: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN becomes null)."""
        return jsonable({
            "method": "DeLong paired test (Sun & Xu 2014 fast algorithm), two-sided; "
                      "Holm adjustment across classes within each pair",
            "reference": self.reference,
            "labels": list(self.labels),
            "n_images": self.n_images,
            "n_pos": dict(self.n_pos),
            "models": [{"name": name, "classes": {label: {"auroc": v[0], "ci_low": v[1], "ci_high": v[2]}
                                                  for label, v in self.aurocs[name].items()}}
                       for name in self.names],
            "pairs": [pair.to_dict() for pair in self.pairs],
            "bootstrap": {"replicates": self.n_bootstrap, "resample": "patient"} if self.n_bootstrap else None,
            "notes": list(self.notes),
        })


def compare_models(y_true: np.ndarray, probs: Sequence[np.ndarray], labels: Sequence[str], names: Sequence[str],
                   reference: int = 0, *, patient_ids: np.ndarray | None = None, n_bootstrap: int = 0,
                   seed: int | None = 0) -> Comparison:
    """Compare models (each (n, k) probabilities on the same images) with the reference, class by class.

    With n_bootstrap > 0 and patient ids, each difference also gets a patient-level bootstrap percentile
    interval (the same resampled patients for every model, so the pairing is kept).
    """
    y = np.asarray(y_true)
    if len(probs) < 2:
        raise ConfigError("comparing needs at least two prediction sets.", fix="pass --predictions twice or more.")
    if len(names) != len(probs):
        raise ConfigError(f"{len(names)} names for {len(probs)} prediction sets.", fix="give one name per file.")
    if not 0 <= reference < len(probs):
        raise ConfigError(f"reference index {reference} is out of range.", fix="choose one of the given models.")
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in probs])  # (models, n, k)
    if y.ndim != 2 or stack.shape[1:] != y.shape or y.shape[1] != len(labels):
        raise ValueError(f"labels {y.shape}, predictions {stack.shape[1:]} and {len(labels)} names do not agree")
    estimates = [delong_covariance(y[:, c], stack[:, :, c]) for c in range(len(labels))]
    aurocs: dict[str, dict[str, tuple[float, float, float]]] = {}
    for r, name in enumerate(names):
        per = {}
        for c, label in enumerate(labels):
            auc = float(estimates[c].aucs[r])
            var = float(estimates[c].cov[r, r])
            se = math.sqrt(var) if var >= 0 else math.nan
            per[label] = (auc, max(0.0, auc - _Z975 * se), min(1.0, auc + _Z975 * se))
        aurocs[name] = per
    boot = None
    _, n_units = _groups(patient_ids, y.shape[0], "patient")
    if n_bootstrap:
        boot = np.stack([bootstrap_auroc(y, stack[r], patient_ids, n_bootstrap=n_bootstrap, seed=seed)
                         for r in range(len(probs))])  # (models, B, k), same patients drawn for each model
    all_aucs = np.array([[estimates[c].aucs[r] for c in range(len(labels))] for r in range(len(probs))])
    pairs = []
    for r, name in enumerate(names):
        if r == reference:
            continue
        tests = {label: paired_test(estimates[c], reference, r) for c, label in enumerate(labels)}
        adjusted = holm([tests[label].p_value for label in labels])
        ci = {}
        if boot is not None:
            for c, label in enumerate(labels):
                diff = boot[r, :, c] - boot[reference, :, c]
                usable = int(np.isfinite(diff).sum())
                ci[label] = ((math.nan, math.nan) if ci_problem(usable, n_bootstrap, n_units)
                             else percentile_ci(diff))
        mean = mean_difference(None if boot is None else boot[r], None if boot is None else boot[reference],
                               all_aucs[r], all_aucs[reference], labels, n_units)
        pairs.append(PairComparison(reference=names[reference], model=name, classes=tests,
                                    p_holm={label: float(adjusted[c]) for c, label in enumerate(labels)},
                                    bootstrap_ci=ci, mean=mean))
    notes = [f"{label}: AUROC undefined (no positive or no negative images)."
             for c, label in enumerate(labels) if estimates[c].n_pos == 0 or estimates[c].n_neg == 0]
    notes.append("DeLong's test treats images as independent; several images per patient make p-values "
                 "somewhat optimistic." + (" Bootstrap intervals resample patients." if n_bootstrap else ""))
    return Comparison(names=list(names), labels=list(labels), reference=names[reference], aurocs=aurocs,
                      pairs=pairs, n_images=int(y.shape[0]),
                      n_pos={label: int(y[:, c].sum()) for c, label in enumerate(labels)},
                      n_bootstrap=int(n_bootstrap), notes=notes)


def paired_test_dict(test: PairedTest) -> dict:
    """A PairedTest as a JSON-ready dict."""
    return jsonable(asdict(test))
