"""Audit: class balance, patient leakage and shift between splits, the report, and patient-grouped
splitting and repair of a leaky split. Stage 2, over data only (docs/architecture.md).
"""
from cxrcore.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "AuditReport": "audit", "run_audit": "audit", "find_leakage": "audit", "class_balance": "audit",
    "stratified_group_split": "splitting", "repair_leakage": "splitting", "resplit_same_sizes": "splitting",
    "render": "report",
})
__all__ = sorted(__dir__())
