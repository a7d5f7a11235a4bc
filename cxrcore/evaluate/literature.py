"""Published per-class AUROCs on ChestX-ray14, for context next to a model's own results.

All values are from Table 1 of the CheXNet paper, which lists Wang et al. (2017), Yao et al. (2017)
and CheXNet side by side. They were measured on other test sets than yours (CheXNet used its own
random patient-wise split, not NIH's official test_list.txt), with other label versions, so they are
a rough reference, never a paired comparison: use `compare` on prediction files for that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from cxrcore.data.labels import LABELS

SOURCE_TABLE = ("Rajpurkar P, Irvin J, Zhu K, et al. CheXNet: Radiologist-Level Pneumonia Detection on "
                "Chest X-Rays with Deep Learning. arXiv:1711.05225 (2017), Table 1.")

NOTE = ("Published AUROCs were measured on other test sets (CheXNet: its own random patient split of "
        "ChestX-ray14, not NIH's official test list), so differences from your numbers are not a test.")


@dataclass(frozen=True)
class PublishedResult:
    """One paper's per-class AUROCs as reported in CheXNet's Table 1."""

    key: str
    name: str
    citation: str
    aurocs: dict[str, float]
    note: str = NOTE

    @property
    def mean_auroc(self) -> float:
        """Unweighted mean over the 14 classes (not reported by the papers themselves)."""
        return math.fsum(self.aurocs.values()) / len(self.aurocs)


CHEXNET_AUROC: dict[str, float] = {
    "Atelectasis": 0.8094, "Cardiomegaly": 0.9248, "Effusion": 0.8638, "Infiltration": 0.7345,
    "Mass": 0.8676, "Nodule": 0.7802, "Pneumonia": 0.7680, "Pneumothorax": 0.8887,
    "Consolidation": 0.7901, "Edema": 0.8878, "Emphysema": 0.9371, "Fibrosis": 0.8047,
    "Pleural_Thickening": 0.8062, "Hernia": 0.9164,
}

WANG2017_AUROC: dict[str, float] = {
    "Atelectasis": 0.716, "Cardiomegaly": 0.807, "Effusion": 0.784, "Infiltration": 0.609,
    "Mass": 0.706, "Nodule": 0.671, "Pneumonia": 0.633, "Pneumothorax": 0.806,
    "Consolidation": 0.708, "Edema": 0.835, "Emphysema": 0.815, "Fibrosis": 0.769,
    "Pleural_Thickening": 0.708, "Hernia": 0.767,
}

YAO2017_AUROC: dict[str, float] = {
    "Atelectasis": 0.772, "Cardiomegaly": 0.904, "Effusion": 0.859, "Infiltration": 0.695,
    "Mass": 0.792, "Nodule": 0.717, "Pneumonia": 0.713, "Pneumothorax": 0.841,
    "Consolidation": 0.788, "Edema": 0.882, "Emphysema": 0.829, "Fibrosis": 0.767,
    "Pleural_Thickening": 0.765, "Hernia": 0.914,
}

CHEXNET = PublishedResult(
    key="chexnet", name="CheXNet (Rajpurkar et al. 2017)", aurocs=CHEXNET_AUROC,
    citation="Rajpurkar P, et al. CheXNet: Radiologist-Level Pneumonia Detection on Chest X-Rays with Deep "
             "Learning. arXiv:1711.05225 (2017).")
WANG2017 = PublishedResult(
    key="wang2017", name="Wang et al. 2017", aurocs=WANG2017_AUROC,
    citation="Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale Chest X-ray "
             "Database and Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax "
             "Diseases. CVPR 2017 (values as listed in CheXNet's Table 1).")
YAO2017 = PublishedResult(
    key="yao2017", name="Yao et al. 2017", aurocs=YAO2017_AUROC,
    citation="Yao L, Poblenz E, Dagunts D, Covington B, Bernard D, Lyman K. Learning to diagnose from scratch "
             "by exploiting dependencies among labels. arXiv:1710.10501 (2017) (values as listed in CheXNet's "
             "Table 1).")

#: Every published result, newest model last.
PUBLISHED: tuple[PublishedResult, ...] = (WANG2017, YAO2017, CHEXNET)


def published(key: str) -> PublishedResult:
    """Look up a published result by key ('chexnet', 'wang2017', 'yao2017')."""
    for result in PUBLISHED:
        if result.key == key.lower():
            return result
    raise KeyError(f"unknown published result '{key}'; known: {', '.join(r.key for r in PUBLISHED)}")


def literature_table() -> list[dict[str, object]]:
    """One row per label (LABELS order) with each paper's AUROC, for display next to a model's results."""
    return [{"label": label, **{r.key: r.aurocs[label] for r in PUBLISHED}} for label in LABELS]
