"""Domain errors and warnings: what went wrong, where, and how to fix it, in words a user can act on.

Core code raises these; the CLI and the UI catch `CxrError` at their edge and show `str(err)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


def _rows_text(rows: Sequence[int], limit: int = 5) -> str:
    shown = ", ".join(str(r) for r in list(rows)[:limit])
    more = len(rows) - limit
    return shown + (f" and {more} more" if more > 0 else "")


class CxrError(Exception):
    """Base class of every error this project raises on purpose (bad input, bad config, bad file)."""

    def __init__(self, problem: str, *, file: str | None = None, rows: Sequence[int] = (),
                 column: str | None = None, fix: str | None = None) -> None:
        self.problem = problem
        self.file = None if file is None else str(file)
        self.rows = list(rows)
        self.column = column
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """One line: where, what, and the fix."""
        where = []
        if self.file:
            where.append(self.file)
        if self.rows:
            where.append(f"line{'s' if len(self.rows) > 1 else ''} {_rows_text(self.rows)}")
        if self.column:
            where.append(f"column '{self.column}'")
        text = (": ".join([", ".join(where), self.problem]) if where else self.problem)
        if self.fix:
            text += f" Fix: {self.fix}"
        return text

    def __str__(self) -> str:
        return self.message


class DatasetError(CxrError):
    """A labels file, list file or image folder that cannot be used as it is."""


class ImageError(CxrError):
    """An image file that cannot be decoded (truncated, empty, not an image, too large)."""


class ModelError(CxrError):
    """A model file that cannot be loaded or does not fit the labels and inputs it is used with."""


class ConfigError(CxrError):
    """A training or evaluation configuration that is invalid."""


class PredictionsError(CxrError):
    """A predictions file that cannot be matched to labels or holds invalid probabilities."""


class OutputError(CxrError):
    """An output path a command cannot write: a folder, no permission, or one of the command's own inputs."""


@dataclass(frozen=True)
class DataWarning:
    """Something suspicious but usable in an input file; shown to the user, never fatal."""

    problem: str
    file: str | None = None
    rows: tuple[int, ...] = field(default_factory=tuple)
    column: str | None = None

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.rows:
            where.append(f"line{'s' if len(self.rows) > 1 else ''} {_rows_text(self.rows)}")
        if self.column:
            where.append(f"column '{self.column}'")
        return ": ".join([", ".join(where), self.problem]) if where else self.problem
