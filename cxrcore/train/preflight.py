"""Checks before a training run starts: what would make it fail, or mislead, said before launch.

A valid config can still give a run that dies at its first batch (image files missing) or reports a
validation AUROC better than the truth (patients in both the training and the validation split).
`check_run` reads the config's splits and says so in sentences, with the way out; the Training page
shows its findings in the form, the job repeats them in train.log. Pure functions, no Streamlit, no
TensorFlow. (The ImageNet weights are checked by the config itself, `trainconfig.config_from_dict`.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from cxrcore.data.pipeline import missing_images, present_rows

if TYPE_CHECKING:  # pragma: no cover
    from cxrcore.data.dataset import Split
    from cxrcore.train.trainconfig import TrainConfig

#: The words for each split role in sentences.
ROLE_WORDS = {"train": "training", "valid": "validation", "test": "test"}
#: How many missing file names a finding shows.
SHOWN_NAMES = 5


@dataclass(frozen=True)
class Finding:
    """One thing to tell before launch: level "error" (the run would fail: Start stays off) or "warning"."""

    level: str
    topic: str
    text: str


@dataclass(frozen=True)
class Preflight:
    """The findings about one config's data, and the counts behind them."""

    findings: tuple[Finding, ...] = ()
    #: role -> image names of that split whose file is not in the image folder
    missing: dict[str, list[str]] = field(default_factory=dict)
    #: role -> rows of that split
    rows: dict[str, int] = field(default_factory=dict)
    shared_patients: int = 0

    @property
    def blocking(self) -> bool:
        """True when the run would fail as configured."""
        return any(f.level == "error" for f in self.findings)

    @property
    def missing_total(self) -> int:
        return sum(len(v) for v in self.missing.values())


def shared_patient_count(train: "Split", valid: "Split") -> int:
    """Patients with images in both splits (patient leakage between training and validation)."""
    return int(np.intersect1d(np.unique(train.patients), np.unique(valid.patients)).size)


def _missing_sentence(missing: dict[str, list[str]], rows: dict[str, int], image_root: str) -> str:
    parts = [f"{len(names):,} of the {rows[role]:,} {ROLE_WORDS[role]} images" for role, names in missing.items()
             if names]
    names = [n for v in missing.values() for n in v]
    shown = ", ".join(names[:SHOWN_NAMES]) + (f" and {len(names) - SHOWN_NAMES:,} more" if len(names) > SHOWN_NAMES
                                              else "")
    return f"{' and '.join(parts)} are not in the image folder {image_root} ({shown})."


def check_splits(splits: dict[str, "Split"], image_root: str | os.PathLike, *,
                 skip_missing: bool = False) -> Preflight:
    """Findings over loaded splits by role ("train", "valid", optional "test"): missing files, shared patients.

    Missing files are an error unless `skip_missing` (the run then trains on the images present), and
    always one when a split would be left with no image at all.
    """
    root = str(image_root)
    missing = {role: missing_images(split.frame, root) for role, split in splits.items()}
    rows = {role: len(split) for role, split in splits.items()}
    findings: list[Finding] = []
    if any(missing.values()):
        what = _missing_sentence(missing, rows, root)
        emptied = [role for role in missing if missing[role] and len(missing[role]) == rows[role]]
        if emptied:
            findings.append(Finding("error", "missing_images", f"{what} The {ROLE_WORDS[emptied[0]]} split has "
                                    "none of its images here: check that the image folder is the right one, or "
                                    "copy the images into it."))
        elif skip_missing:
            left = " and ".join(f"{rows[r] - len(v):,} {ROLE_WORDS[r]}" for r, v in missing.items() if v)
            findings.append(Finding("warning", "missing_images", f"{what} The run trains on the images present "
                                    f"({left} images); run.json records how many rows were left out."))
        else:
            findings.append(Finding("error", "missing_images", f"{what} The run would stop when it reaches them. "
                                    "Copy the missing files into the image folder, or train on the images present "
                                    "(skip_missing_images)."))
    if "train" in splits and "valid" in splits:
        shared = shared_patient_count(splits["train"], splits["valid"])
        if shared:
            findings.append(Finding("warning", "shared_patients", f"{shared:,} patient(s) have images in both the "
                                    f"training split ({splits['train'].name}) and the validation split "
                                    f"({splits['valid'].name}). The model sees these patients while it trains, so "
                                    "the validation AUROC (and the best epoch it picks) will look better than the "
                                    "truth. Validate on a split with other patients; the Leakage audit page shows "
                                    "which patients and can repair the split."))
    else:
        shared = 0
    return Preflight(tuple(findings), {r: v for r, v in missing.items() if v}, rows, shared)


def check_run(config: "TrainConfig") -> Preflight:
    """`check_splits` on the splits a config trains on (test too when it predicts it at the end)."""
    from cxrcore.train.data import load_spec

    specs = {"train": config.train_split, "valid": config.valid_split}
    if config.test_split and config.predict_test:
        specs["test"] = config.test_split
    splits = {role: load_spec(spec, _split_name(spec, role)) for role, spec in specs.items() if spec}
    return check_splits(splits, config.image_root or "", skip_missing=config.skip_missing_images)


def _split_name(spec: str, role: str) -> str:
    """The split's file name without its extension (what a user calls it), else its role."""
    last = os.path.basename(spec.split("@")[-1])
    return os.path.splitext(last)[0] or role


def drop_missing(split: "Split", image_root: str | os.PathLike) -> tuple["Split", int]:
    """The split without the rows whose image file is missing, and how many were dropped."""
    kept, missing = present_rows(split, image_root)
    return kept, len(missing)


__all__ = ["Finding", "Preflight", "check_run", "check_splits", "drop_missing", "shared_patient_count"]
