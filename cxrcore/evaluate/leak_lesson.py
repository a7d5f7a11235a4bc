"""The leakage lesson in numbers: one model's mean AUROC on a clean validation split beside a leaky one.

The demo set has `valid` (patients never seen in training) and `valid_leaky` (other images of training
patients). A model that memorised its training patients scores higher on the leaky split; how much higher
is the lesson. The words always follow the numbers: a gap within noise is called that, never "inflated".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

CLEAN, LEAKY = "valid", "valid_leaky"
#: The smallest gap (leaky - clean mean AUROC) read as the lesson; the demo's benchmark target.
LESSON_GAP = 0.03


def has_leak_lesson(split_names: Iterable[str]) -> bool:
    """Whether a dataset has both splits of the lesson (the demo set does)."""
    names = set(split_names)
    return CLEAN in names and LEAKY in names


@dataclass(frozen=True)
class LeakComparison:
    """Mean AUROC of one model on the clean and the leaky split, over the labels both splits can score."""

    clean: float
    leaky: float
    labels: tuple[str, ...]

    @property
    def gap(self) -> float:
        return self.leaky - self.clean

    @property
    def shown(self) -> bool:
        """Whether the numbers show the lesson (the leaky split scores at least LESSON_GAP higher)."""
        return self.gap >= LESSON_GAP

    def message(self) -> str:
        """The lesson in words that match these numbers."""
        numbers = (f"{LEAKY} {self.leaky:.3f} against {CLEAN} {self.clean:.3f} (gap {self.gap:+.3f}, mean AUROC "
                   f"over {len(self.labels)} findings)")
        if self.shown:
            return (f"{numbers}: scored on images of patients it trained on, the model looks better than it is. "
                    f"It recognises those patients and recalls their findings; on new patients ({CLEAN}) it does "
                    f"worse. Report {CLEAN}, never a split that shares patients with training.")
        if self.gap > 0:
            return (f"{numbers}: the leaky split scores a little higher, within the noise of a small split. This "
                    "model memorised little of its training patients (too few epochs, or strong augmentation); "
                    f"the demo preset's one-click model shows a clear gap. Still report {CLEAN}.")
        return (f"{numbers}: here the leaky split does not score higher. This model memorised little of its "
                f"training patients, so sharing them did not help it; a split that shares patients with training "
                f"is still no measure of how a model does on new patients. Report {CLEAN}.")


def compare_clean_and_leaky(clean: Mapping[str, float], leaky: Mapping[str, float]) -> LeakComparison | None:
    """Per-label AUROCs of the two splits (NaN where undefined) -> means over the labels both define."""
    labels = tuple(label for label, value in clean.items()
                   if not math.isnan(value) and not math.isnan(leaky.get(label, math.nan)))
    if not labels:
        return None
    return LeakComparison(clean=sum(clean[label] for label in labels) / len(labels),
                          leaky=sum(leaky[label] for label in labels) / len(labels), labels=labels)
