"""Explain: class activation maps, gradient saliency and their localization against boxes, for a
loaded model. Stage 4, above train (docs/architecture.md).
"""
from cxrcore.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "METHODS": "methods", "METHOD_TITLES": "methods",
    "ImageMaps": "cam", "explain": "cam", "explain_batch": "cam", "overlay": "cam",
    "SaliencyOptions": "saliency",
    "localize_images": "localization", "summarize_localization": "localization",
})
__all__ = sorted(__dir__())
