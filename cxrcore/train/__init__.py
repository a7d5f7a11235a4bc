"""Train: the model and its loss, settings and presets, detached jobs and the loop they run (backend,
input, steps, export), batch inference and the model registry. Stage 3 (docs/architecture.md).
"""
from cxrcore.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "LoadedModel": "model", "ModelInfo": "model", "build_model": "model", "load_model": "model",
    "class_weights": "loss", "weighted_loss": "loss",
    "TrainConfig": "trainconfig", "config_from_dict": "trainconfig", "load_config": "trainconfig",
    "create_run": "jobs", "launch": "jobs", "cancel": "jobs", "summarize_run": "jobs", "list_runs": "jobs",
    "predict_split": "inference",
    "discover_models": "registry",
})
__all__ = sorted(__dir__())
