"""Validation metrics from logits (numpy): the training loss and per-class / mean AUROC.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from cxrcore.errors import ModelError


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def validation_metrics(logits: np.ndarray, y: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray,
                       labels: tuple[str, ...]) -> dict[str, Any]:
    """Weighted loss (the training loss) and per-class / mean AUROC of validation logits."""
    from cxrcore.evaluate.metrics import auroc

    z = np.asarray(logits, dtype=np.float64)
    if not np.isfinite(z).all():
        raise ModelError("training diverged: the model outputs NaN or infinite values.",
                         fix="lower learning_rate (e.g. by 10x), or turn mixed precision off.")
    per_image = -(w_pos * y * _log_sigmoid(z) + w_neg * (1 - y) * _log_sigmoid(-z)).sum(axis=1)
    per_class = {label: auroc(y[:, j].astype(np.uint8), z[:, j]) for j, label in enumerate(labels)}
    defined = [v for v in per_class.values() if not math.isnan(v)]
    return {"val_loss": float(per_image.mean()), "val_auroc": float(np.mean(defined)) if defined else math.nan,
            "per_class": per_class}
