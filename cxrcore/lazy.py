"""Lazy package exports (PEP 562): a stage's `__init__` names what a user needs without importing it.

`from cxrcore.train import build_model` imports cxrcore.train.model on that line, so importing a stage
package stays free of TensorFlow, Keras and pandas until one of its names is used.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, each name in `exports` read from its module on first use."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
