"""Explain: class activation maps, gradient saliency and their localization against boxes, for a
loaded model. Stage 4, above train (docs/architecture.md)."""
