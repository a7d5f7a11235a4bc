"""The 14 ChestX-ray14 pathology labels, their canonical order and the aliases seen in the wild."""
from __future__ import annotations

import re

#: Canonical label order used everywhere in this project (alphabetical, as NIH lists them).
LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)

#: The label NIH uses for an image with none of the 14 findings.
NO_FINDING = "No Finding"

#: Output order of the course's Keras 2 model files (models/nih/pretrained_model.h5).
#: Those files store no label list, so this order must be applied explicitly, never assumed.
COURSE_LABEL_ORDER: tuple[str, ...] = (
    "Cardiomegaly",
    "Emphysema",
    "Effusion",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Atelectasis",
    "Pneumothorax",
    "Pleural_Thickening",
    "Pneumonia",
    "Fibrosis",
    "Edema",
    "Consolidation",
)

#: Spellings found in NIH files, Kaggle copies and papers, keyed by their normalized form.
_ALIASES: dict[str, str] = {
    "infiltrate": "Infiltration",
    "infiltrates": "Infiltration",
    "pleuralthickening": "Pleural_Thickening",
    "effusions": "Effusion",
    "pleuraleffusion": "Effusion",
    "nodules": "Nodule",
    "masses": "Mass",
}


def _key(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


_BY_KEY: dict[str, str] = {_key(label): label for label in LABELS}
_BY_KEY.update(_ALIASES)


def canonical_label(name: str) -> str | None:
    """Return the canonical spelling of a label name, or None if it is not one of the 14.

    Case, spaces, underscores and hyphens are ignored, so "Pleural Thickening",
    "pleural_thickening" and "Infiltrate" all resolve.
    """
    return _BY_KEY.get(_key(str(name)))


def is_no_finding(name: str) -> bool:
    """True for "No Finding" in any case or spacing."""
    return _key(str(name)) == "nofinding"


def label_index(name: str) -> int:
    """Position of a label in the canonical order; raises KeyError for unknown names."""
    label = canonical_label(name)
    if label is None:
        raise KeyError(name)
    return LABELS.index(label)
