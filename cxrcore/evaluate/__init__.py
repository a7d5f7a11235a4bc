"""Evaluate: AUROC with patient-bootstrap intervals, operating points, DeLong comparisons, published
references and the leakage lesson: numbers from predictions, no model. Stage 2 (docs/architecture.md)."""
