"""What a demo dataset is made of: its arguments, the label rates and which findings are easy to see.

Pure data and validation (no numpy, no OpenCV), so the CLI can check arguments before importing anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from cxrcore.data.labels import LABELS, canonical_label
from cxrcore.errors import ConfigError

#: Per-image rates in the real NIH table (Data_Entry_2017_v2020.csv.gz, 112,120 images).
NIH_PREVALENCE: dict[str, float] = {
    "Atelectasis": 0.1031, "Cardiomegaly": 0.0248, "Consolidation": 0.0416, "Edema": 0.0205,
    "Effusion": 0.1188, "Emphysema": 0.0224, "Fibrosis": 0.0150, "Hernia": 0.0020,
    "Infiltration": 0.1774, "Mass": 0.0516, "Nodule": 0.0565, "Pleural_Thickening": 0.0302,
    "Pneumonia": 0.0128, "Pneumothorax": 0.0473,
}

#: Default per-image rates: NIH's order (Infiltration most common, Hernia rarest) with the range
#: compressed so that every class has positives in a 1,000-image set's test split.
DEFAULT_PREVALENCE: dict[str, float] = {
    "Atelectasis": 0.10, "Cardiomegaly": 0.06, "Consolidation": 0.06, "Edema": 0.05,
    "Effusion": 0.12, "Emphysema": 0.05, "Fibrosis": 0.04, "Hernia": 0.025,
    "Infiltration": 0.18, "Mass": 0.07, "Nodule": 0.08, "Pleural_Thickening": 0.05,
    "Pneumonia": 0.04, "Pneumothorax": 0.07,
}

#: Findings drawn with a signature no other finding shares (size, place and shape all differ).
#: The teaching benchmark's headline AUROC is the mean over these; the card reports all 14.
DISTINCT_FINDINGS: tuple[str, ...] = (
    "Cardiomegaly", "Edema", "Effusion", "Emphysema", "Hernia", "Mass", "Nodule", "Pneumothorax",
)

#: Groups drawn alike on purpose, as in real radiographs (and in NIH's text-mined labels).
OVERLAPPING_GROUPS: tuple[tuple[str, ...], ...] = (
    ("Consolidation", "Pneumonia", "Infiltration"),  # airspace opacities of graded density
    ("Atelectasis", "Consolidation"),  # basal opacities
    ("Pleural_Thickening", "Effusion"),  # density along the lateral chest wall
)

#: Split shares of patients' images: train (before the leaky images are held out), valid, test.
SPLIT_FRACTIONS: tuple[float, float, float] = (0.68, 0.12, 0.20)

MAX_SIZE = 1024
MIN_SIZE = 64
MAX_IMAGES = 200_000
#: Fewest images that still give every split some patients.
MIN_IMAGES = 50
#: Average images per patient (NIH: 3.6); the default 1,000 images come from about 300 patients.
IMAGES_PER_PATIENT = 3.3


def _rates(rates: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple((label, float(rates[label])) for label in LABELS)


@dataclass(frozen=True)
class DemoConfig:
    """Arguments of one demo dataset; equal configs give byte-identical files."""

    images: int = 1000
    size: int = 256
    seed: int = 0
    #: (label, per-image rate) in LABELS order.
    prevalence: tuple[tuple[str, float], ...] = field(default_factory=lambda: _rates(DEFAULT_PREVALENCE))
    #: Share of images taken in the AP view (NIH: 40%; portable, sicker patients).
    ap_rate: float = 0.2

    def __post_init__(self) -> None:
        for name, low, high in (("images", MIN_IMAGES, MAX_IMAGES), ("size", MIN_SIZE, MAX_SIZE)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"--{name} {value!r} is not a whole number from {low} to {high}.",
                                  fix=f"use e.g. --{name} {1000 if name == 'images' else 256}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed {self.seed!r} is not a whole number from 0 to 2**32-1.",
                              fix="use e.g. --seed 0.")
        if [label for label, _ in self.prevalence] != list(LABELS):
            raise ConfigError("prevalence must list the 14 labels in LABELS order.",
                              fix="build it with prevalence_from_text() or DemoConfig.with_prevalence().")
        for label, rate in self.prevalence:
            if not 0.0 <= rate <= 0.6:
                raise ConfigError(f"prevalence of {label} is {rate}; it must be from 0 to 0.6.",
                                  fix=f"use e.g. {label}=0.05.")
        if not 0.0 <= self.ap_rate <= 1.0:
            raise ConfigError(f"AP rate {self.ap_rate} is not from 0 to 1.", fix="use e.g. 0.2.")

    @property
    def rates(self) -> dict[str, float]:
        """Requested per-image rate of each label."""
        return dict(self.prevalence)

    def with_prevalence(self, rates: Mapping[str, float]) -> "DemoConfig":
        """A copy with some label rates replaced (names in any accepted spelling)."""
        merged = self.rates
        for name, rate in rates.items():
            label = canonical_label(name)
            if label is None:
                raise ConfigError(f"'{name}' is not one of the 14 labels.", fix="use e.g. Hernia=0.01.")
            merged[label] = float(rate)
        return DemoConfig(images=self.images, size=self.size, seed=self.seed, prevalence=_rates(merged),
                          ap_rate=self.ap_rate)

    def to_dict(self) -> dict:
        """JSON-ready arguments (the completion marker and the card print this)."""
        return {"images": self.images, "size": self.size, "seed": self.seed,
                "prevalence": {label: rate for label, rate in self.prevalence}, "ap_rate": self.ap_rate}

    @classmethod
    def from_dict(cls, data: Mapping) -> "DemoConfig":
        """Inverse of to_dict(); raises ConfigError on anything malformed."""
        try:
            base = cls(images=int(data["images"]), size=int(data["size"]), seed=int(data["seed"]),
                       ap_rate=float(data.get("ap_rate", 0.2)))
            return base.with_prevalence(dict(data.get("prevalence", {})))
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"demo arguments are malformed ({err}).", fix="regenerate the demo set.") from err


def prevalence_from_text(text: str) -> dict[str, float]:
    """'nih' (real NIH rates), 'default', or 'Hernia=0.01,Infiltration=0.3' (overrides) -> rates."""
    key = text.strip().lower()
    if key == "nih":
        return dict(NIH_PREVALENCE)
    if key in ("", "default"):
        return dict(DEFAULT_PREVALENCE)
    rates: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        label = canonical_label(name.strip())
        if not sep or label is None:
            raise ConfigError(f"'{part.strip()}' is not LABEL=RATE with one of the 14 labels.",
                              fix="use e.g. --prevalence Hernia=0.01,Infiltration=0.3 or --prevalence nih.")
        try:
            rates[label] = float(value)
        except ValueError:
            raise ConfigError(f"rate '{value.strip()}' for {label} is not a number.",
                              fix="use e.g. Hernia=0.01.") from None
    return rates
