"""Keras' ReduceLROnPlateau and EarlyStopping with their counters saved in each checkpoint.
"""
from __future__ import annotations

from typing import Any


_RESUMABLE: dict[str, type] = {}


def resumable_callbacks() -> tuple[type, type]:
    """Keras ReduceLROnPlateau / EarlyStopping that restore their counters after on_train_begin."""
    if _RESUMABLE:
        return _RESUMABLE["rlr"], _RESUMABLE["es"]
    import keras

    class _StateMixin:
        STATE = ("best", "wait")

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._restore: dict[str, Any] | None = None

        def get_state(self) -> dict[str, Any]:
            out = {}
            for name in self.STATE:
                value = getattr(self, name, None)
                out[name] = float(value) if value is not None and not isinstance(value, int) else value
            return out

        def set_state(self, state: dict[str, Any] | None) -> None:
            self._restore = dict(state or {}) or None

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            for name, value in (self._restore or {}).items():
                if name in self.STATE:
                    setattr(self, name, value)

    class ResumableReduceLROnPlateau(_StateMixin, keras.callbacks.ReduceLROnPlateau):
        STATE = ("best", "wait", "cooldown_counter")

    class ResumableEarlyStopping(_StateMixin, keras.callbacks.EarlyStopping):
        STATE = ("best", "wait", "best_epoch", "stopped_epoch")

    _RESUMABLE.update(rlr=ResumableReduceLROnPlateau, es=ResumableEarlyStopping)
    return ResumableReduceLROnPlateau, ResumableEarlyStopping
