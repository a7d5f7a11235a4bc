"""Audit: class balance, patient leakage and shift between splits, the report, and patient-grouped
splitting and repair. Stage 2, over data only (docs/architecture.md)."""
