"""Audit of one or more splits: class balance and weights, patient/image leakage, prevalence shift.

Everything here is vectorized numpy over `Split.frame`, so the 112,120-row NIH table audits in well
under a second. Image-level checks (missing files, duplicates) live in cxrcore.data.imagecheck.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Callable

import numpy as np
import pandas as pd

from cxrcore.audit.stattests import chi2_contingency, ks_2samp
from cxrcore.data.dataset import IMAGE, PATIENT, Split
from cxrcore.data.labels import LABELS
from cxrcore.errors import DatasetError, DataWarning

ProgressCallback = Callable[[int, int, str], None]

#: How many ids/names a leak keeps for display; counts are always exact.
MAX_LISTED = 1000


def class_balance(labels: np.ndarray) -> pd.DataFrame:
    """Per class: positives, frequencies and the course's weights w_pos = freq_neg, w_neg = freq_pos.

    After weighting, the positive and negative contributions (freq * weight) are equal by construction.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    positives = labels.sum(axis=0, dtype=np.int64)
    pos_freq = positives / n if n else np.zeros(len(LABELS))
    neg_freq = 1.0 - pos_freq
    frame = pd.DataFrame({
        "positives": positives,
        "negatives": n - positives,
        "pos_freq": pos_freq,
        "neg_freq": neg_freq,
        "w_pos": neg_freq,
        "w_neg": pos_freq,
    }, index=pd.Index(LABELS, name="label"))
    frame["pos_contribution"] = frame["pos_freq"] * frame["w_pos"]
    frame["neg_contribution"] = frame["neg_freq"] * frame["w_neg"]
    return frame


def cooccurrence(labels: np.ndarray) -> np.ndarray:
    """(14, 14) counts of images carrying both labels; the diagonal is the positives per class."""
    matrix = np.asarray(labels, dtype=np.int32)
    return matrix.T @ matrix


@dataclass
class SplitSummary:
    """What one split holds: sizes, class balance and label structure."""

    name: str
    source: str
    rows: int
    patients: int
    classes: pd.DataFrame
    no_finding: int
    labels_per_image: dict[int, int]
    cooccurrence: np.ndarray
    metadata: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def no_finding_share(self) -> float:
        return self.no_finding / self.rows if self.rows else 0.0


def summarize(split: Split) -> SplitSummary:
    """Sizes, balance, 'No Finding' share, labels per image and co-occurrence of one split."""
    labels = split.labels
    per_image = labels.sum(axis=1)
    counts = np.bincount(per_image, minlength=1)
    metadata: dict[str, dict[str, float]] = {}
    frame = split.frame
    if "Age" in frame:
        age = pd.to_numeric(frame["Age"], errors="coerce")
        metadata["Age"] = {"mean": float(age.mean()), "median": float(age.median()),
                           "min": float(age.min()), "max": float(age.max())}
    for column in ("Sex", "View"):
        if column in frame:
            shares = frame[column].astype(str).value_counts(normalize=True)
            metadata[column] = {str(k): float(v) for k, v in shares.items()}
    return SplitSummary(
        name=split.name, source=split.source, rows=len(split),
        patients=int(pd.unique(split.patients).size), classes=class_balance(labels),
        no_finding=int((per_image == 0).sum()),
        labels_per_image={int(k): int(v) for k, v in enumerate(counts) if v},
        cooccurrence=cooccurrence(labels), metadata=metadata)


@dataclass
class Leak:
    """Patients and images that two splits share."""

    a: str
    b: str
    patients: int
    images: int
    patient_ids: list[int]
    image_names: list[str]
    #: Images of the shared patients in each split, for display side by side.
    images_a: int = 0
    images_b: int = 0

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "patients": self.patients, "images": self.images,
                "patient_ids": self.patient_ids, "image_names": self.image_names,
                "images_of_shared_patients": {self.a: self.images_a, self.b: self.images_b}}


def find_leakage(splits: list[Split]) -> list[Leak]:
    """For every pair of splits: shared patient ids and shared image names (one entry per pair)."""
    leaks = []
    for first, second in combinations(splits, 2):
        shared_patients = np.intersect1d(first.patients, second.patients)
        shared_images = np.intersect1d(first.images.astype(str), second.images.astype(str))
        leaks.append(Leak(
            a=first.name, b=second.name, patients=int(shared_patients.size),
            images=int(shared_images.size),
            patient_ids=[int(p) for p in shared_patients[:MAX_LISTED]],
            image_names=[str(n) for n in shared_images[:MAX_LISTED]],
            images_a=int(np.isin(first.patients, shared_patients).sum()),
            images_b=int(np.isin(second.patients, shared_patients).sum())))
    return leaks


def two_proportion_p(x1: np.ndarray, n1: int, x2: np.ndarray, n2: int) -> np.ndarray:
    """Two-sided p-value of the pooled two-proportion z-test (equals Pearson's chi-square on 2x2)."""
    x1, x2 = np.asarray(x1, float), np.asarray(x2, float)
    pooled = (x1 + x2) / (n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (x1 / n1 - x2 / n2) / se, 0.0)
    return np.array([math.erfc(abs(v) / math.sqrt(2)) for v in z])


def prevalence_shift(summaries: list[SplitSummary]) -> pd.DataFrame:
    """Per pair of splits and class: prevalences, difference and a two-proportion test p-value.

    Images of one patient are not independent, so with many images per patient these p-values are
    optimistic; read them as a flag, not a verdict.
    """
    rows = []
    for first, second in combinations(summaries, 2):
        x1 = first.classes["positives"].to_numpy()
        x2 = second.classes["positives"].to_numpy()
        p = two_proportion_p(x1, first.rows, x2, second.rows)
        for i, label in enumerate(LABELS):
            prev_a, prev_b = x1[i] / first.rows, x2[i] / second.rows
            rows.append({"a": first.name, "b": second.name, "label": label, "prevalence_a": prev_a,
                         "prevalence_b": prev_b, "difference": prev_b - prev_a, "p_value": float(p[i])})
    return pd.DataFrame(rows, columns=["a", "b", "label", "prevalence_a", "prevalence_b", "difference",
                                       "p_value"])


def metadata_shift(splits: list[Split]) -> pd.DataFrame:
    """Age (Kolmogorov-Smirnov), sex and view position (chi-square) shift per pair of splits."""
    rows = []
    for first, second in combinations(splits, 2):
        for column in ("Age", "Sex", "View"):
            if column not in first.frame or column not in second.frame:
                continue
            if column == "Age":
                a = pd.to_numeric(first.frame[column], errors="coerce").dropna().to_numpy()
                b = pd.to_numeric(second.frame[column], errors="coerce").dropna().to_numpy()
                if len(a) == 0 or len(b) == 0:
                    continue
                statistic, p = ks_2samp(a, b)
                rows.append({"a": first.name, "b": second.name, "variable": column,
                             "test": "Kolmogorov-Smirnov", "summary_a": float(np.mean(a)),
                             "summary_b": float(np.mean(b)), "statistic": statistic, "p_value": p})
            else:
                table = pd.crosstab(
                    pd.concat([first.frame[column].astype(str), second.frame[column].astype(str)]),
                    np.repeat([0, 1], [len(first), len(second)]))
                if table.shape[0] < 2:
                    continue
                stat, p = chi2_contingency(table.to_numpy())
                top = table.index[table.to_numpy().sum(axis=1).argmax()]
                rows.append({"a": first.name, "b": second.name, "variable": column, "test": "chi-square",
                             "summary_a": float(table.loc[top, 0] / len(first)),
                             "summary_b": float(table.loc[top, 1] / len(second)),
                             "statistic": float(stat), "p_value": float(p), "level": str(top)})
    return pd.DataFrame(rows)


@dataclass
class AuditReport:
    """The full audit of a set of named splits."""

    summaries: list[SplitSummary]
    leakage: list[Leak]
    shift: pd.DataFrame
    metadata_shift: pd.DataFrame
    leaked_patients: int = 0
    leaked_images: int = 0
    warnings: list[DataWarning] = field(default_factory=list)
    #: Filled when an image root was given (see cxrcore.data.imagecheck.ImageCheck).
    images: object | None = None

    @property
    def leaking_pairs(self) -> list[Leak]:
        return [leak for leak in self.leakage if leak.patients or leak.images]

    @property
    def duplicate_leaks(self) -> int:
        """Duplicate image pairs across splits (exact or near); these leak even with distinct patient ids."""
        if self.images is None:
            return 0
        return len(self.images.cross_split_duplicates())

    @property
    def leak_free(self) -> bool:
        return not self.leaking_pairs and self.duplicate_leaks == 0



def count_leaked(splits: list[Split]) -> tuple[int, int]:
    """(patients found in more than one split, images belonging to those patients, all splits)."""
    if len(splits) < 2:
        return 0, 0
    pairs = np.unique(np.concatenate([
        np.stack([s.patients, np.full(len(s), i)], axis=1) for i, s in enumerate(splits)]), axis=0)
    patient_ids, split_count = np.unique(pairs[:, 0], return_counts=True)
    leaked = patient_ids[split_count > 1]
    images = sum(int(np.isin(s.patients, leaked).sum()) for s in splits)
    return int(leaked.size), images


def check_names_unique(splits: list[Split]) -> None:
    names = [s.name for s in splits]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DatasetError(f"split name '{dup[0]}' is used twice.", fix="give each split its own name "
                           "(NAME=FILE).")
    if len(splits) < 1:
        raise DatasetError("no split to audit.", fix="pass at least one --split NAME=FILE.")


def run_audit(splits: list[Split], *, image_root: str | None = None, near_threshold: int = 4,
              hash_images: bool = True, progress: ProgressCallback | None = None,
              workers: int | None = None) -> AuditReport:
    """Audit named splits; with `image_root`, also check files and look for duplicate images."""
    check_names_unique(splits)
    summaries = [summarize(s) for s in splits]
    leaked_patients, leaked_images = count_leaked(splits)
    report = AuditReport(
        summaries=summaries, leakage=find_leakage(splits), shift=prevalence_shift(summaries),
        metadata_shift=metadata_shift(splits), leaked_patients=leaked_patients,
        leaked_images=leaked_images, warnings=[w for s in splits for w in s.warnings])
    if image_root is not None:
        from cxrcore.data.imagecheck import check_images

        report.images = check_images(splits, image_root, near_threshold=near_threshold,
                                     hash_images=hash_images, progress=progress, workers=workers)
    return report


def shared_patient_images(splits: list[Split], leak: Leak, limit: int = 20) -> pd.DataFrame:
    """Images of the first `limit` shared patients of a leak, one row per image with its split."""
    by_name = {s.name: s for s in splits}
    ids = leak.patient_ids[:limit]
    parts = []
    for name in (leak.a, leak.b):
        frame = by_name[name].frame
        rows = frame.loc[frame[PATIENT].isin(ids), [PATIENT, IMAGE, *LABELS]].copy()
        rows.insert(0, "split", name)
        parts.append(rows)
    return pd.concat(parts, ignore_index=True).sort_values([PATIENT, "split", IMAGE], kind="stable")
