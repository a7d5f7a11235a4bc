"""Evaluate: AUROC with patient-bootstrap intervals, operating points, DeLong comparisons, published
references and the leakage lesson: numbers from predictions, no model. Stage 2 (docs/architecture.md).
"""
from cxrcore.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "EvaluationResult": "metrics", "auroc": "metrics", "evaluate": "metrics",
    "Comparison": "delong", "compare_models": "delong",
})
__all__ = sorted(__dir__())
