"""Data: labels, split files, datasets, image decoding and checks, boxes, the tf.data input and
prediction files: everything read from disk, validated, before any model. Stage 1 (docs/architecture.md)."""
