"""Who is in the demo set: patients, their follow-up images, findings, and the train/valid/test split.

Planning is cheap (no pixels), so tests and the dataset card can reason about thousands of images.
Patients keep most of their findings across follow-ups (as in real archives): that, together with each
patient's stable anatomy, is what lets a model memorise patients and what makes a leaky split flatter it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrcore.data.labels import LABELS
from cxrcore.demo.anatomy import stream
from cxrcore.demo.config import IMAGES_PER_PATIENT, SPLIT_FRACTIONS, DemoConfig
from cxrcore.demo.render import Case

#: Share of a label's prevalence that comes from patients who carry it chronically.
CHRONIC_SHARE = 0.8
#: Chance that a chronic finding shows on a given follow-up of the patient who carries it.
KEEP = 0.85
MAX_FOLLOWUPS = 12
SPLITS = ("train", "valid", "test", "valid_leaky")


@dataclass(frozen=True)
class Cohort:
    """The planned dataset: one row per image with its case and split."""

    config: DemoConfig
    frame: pd.DataFrame  # Image, PatientId, FollowUp, Age, Sex, View, the 14 labels, Split

    def cases(self) -> list[Case]:
        """Render jobs, in file-name order."""
        f = self.frame
        labels = f[list(LABELS)].to_numpy(dtype=bool)
        return [Case(seed=self.config.seed, patient=int(p), followup=int(u), sex=str(s), age=int(a), view=str(v),
                     labels=tuple(LABELS[k] for k in np.flatnonzero(row)))
                for p, u, s, a, v, row in zip(f["PatientId"], f["FollowUp"], f["Sex"], f["Age"], f["View"], labels)]

    def split(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["Split"] == name]


def _rates(config: DemoConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-label chance of being a chronic carrier, and of a new finding on any one image."""
    pi = np.array([rate for _, rate in config.prevalence], dtype=float)
    chronic = CHRONIC_SHARE * pi / KEEP
    acute = (pi - CHRONIC_SHARE * pi) / np.maximum(1 - CHRONIC_SHARE * pi, 1e-9)
    return np.clip(chronic, 0, 1), np.clip(acute, 0, 1)


def _patients(config: DemoConfig) -> list[dict]:
    """Draw patients (each from their own stream) until their images reach the requested count."""
    carry, acute = _rates(config)
    p_geom = 1.0 / IMAGES_PER_PATIENT
    out: list[dict] = []
    total, pid = 0, 0
    # Chronic carriers by dithered error diffusion: each label's carrier images track their target
    # within one patient's images, so even rare labels come out near their rate in a small set.
    target = np.zeros(len(LABELS))
    actual = np.zeros(len(LABELS))
    while total < config.images:
        pid += 1
        r = stream(config.seed, 7, pid)
        n = int(min(MAX_FOLLOWUPS, r.geometric(p_geom)))
        n = min(n, config.images - total)
        sex = "M" if r.random() < 0.56 else "F"
        age0 = int(r.integers(20, 81))
        target += n * carry
        chronic = actual + n * r.random(len(LABELS)) < target
        actual += n * chronic
        images = []
        age = age0
        for follow in range(n):
            keep = r.random(len(LABELS)) < KEEP
            new = r.random(len(LABELS)) < acute
            labels = (chronic & keep) | new
            view = "AP" if r.random() < config.ap_rate else "PA"
            if follow:
                age = min(85, age + int(r.random() < 0.35))
            images.append((follow, age, view, labels.astype(np.uint8)))
        out.append({"id": pid, "sex": sex, "images": images})
        total += n
    return out


def _leaky_rows(frame: pd.DataFrame, target: int, seed: int) -> np.ndarray:
    """Follow-up images (never a patient's first) of train patients, one per patient per round."""
    r = stream(seed, 9)
    train = frame[frame["Split"] == "train"]
    later = train[train["FollowUp"] > 0]
    by_patient = {pid: list(rows.index) for pid, rows in later.groupby("PatientId", sort=True)}
    order = list(by_patient)
    r.shuffle(order)
    for pid in order:
        r.shuffle(by_patient[pid])
    chosen: list[int] = []
    while len(chosen) < target and any(by_patient.values()):
        for pid in order:
            if by_patient[pid] and len(chosen) < target:
                chosen.append(by_patient[pid].pop())
    return np.array(sorted(chosen), dtype=np.int64)


def plan_cohort(config: DemoConfig) -> Cohort:
    """Patients, images, labels and splits for a config (deterministic, no pixels)."""
    from cxrcore.audit.splitting import assign_patients

    rows = []
    for patient in _patients(config):
        for follow, age, view, labels in patient["images"]:
            rows.append([f"{patient['id']:08d}_{follow:03d}.png", patient["id"], follow, age, patient["sex"], view,
                         *labels.tolist()])
    frame = pd.DataFrame(rows, columns=["Image", "PatientId", "FollowUp", "Age", "Sex", "View", *LABELS])
    for label in LABELS:
        frame[label] = frame[label].astype(np.uint8)
    ids, inverse = np.unique(frame["PatientId"].to_numpy(), return_inverse=True)
    counts = np.zeros((ids.size, len(LABELS)), dtype=np.int64)
    values = frame[list(LABELS)].to_numpy(dtype=np.int64)
    np.add.at(counts, inverse, values)
    n_images = np.bincount(inverse, minlength=ids.size)
    assigned = assign_patients(counts, n_images, np.array(SPLIT_FRACTIONS), seed=config.seed)
    for j in (1, 2):  # a small set can leave valid or test without patients: give each the smallest train one
        train = np.flatnonzero(assigned == 0)
        if not (assigned == j).any() and train.size > 1:
            assigned[train[np.argmin(n_images[train])]] = j
    frame["Split"] = np.array(SPLITS[:3], dtype=object)[assigned[inverse]]
    target = int((frame["Split"] == "valid").sum())
    leaky = _leaky_rows(frame, target, config.seed)
    frame.loc[leaky, "Split"] = "valid_leaky"
    return Cohort(config=config, frame=frame.reset_index(drop=True))
