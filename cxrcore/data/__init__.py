"""Data: labels, split files, datasets, image decoding and checks, boxes, the tf.data input and
prediction files: what is read from disk and validated before any model. Stage 1 (docs/architecture.md).
"""
from cxrcore.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "LABELS": "labels", "NO_FINDING": "labels", "canonical_label": "labels",
    "Split": "dataset", "load_split": "dataset", "load_table": "dataset", "write_split": "dataset",
    "DatasetEntry": "catalog", "discover_datasets": "catalog", "load_entry_splits": "catalog",
    "read_image": "images",
    "check_images": "imagecheck",
    "read_boxes": "boxes",
    "Predictions": "predictions", "read_predictions": "predictions", "write_predictions": "predictions",
})
__all__ = sorted(__dir__())
