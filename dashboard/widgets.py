"""Widgets shared by every page: error display, teaching notes, uploads, verdict banners."""
from __future__ import annotations

import functools
import logging
import traceback
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import streamlit as st

from cxrcore.errors import CxrError, DataWarning
from dashboard.state import teaching_mode

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger("cxr_dashboard")
F = TypeVar("F", bound=Callable)


class _Stop(Exception):
    """Raised inside `user_errors` to end a page section after an error was shown."""


@contextmanager
def user_errors(what: str = "") -> Iterator[None]:
    """Show domain errors as a plain st.error and keep the page alive; never a traceback on screen."""
    try:
        yield
    except CxrError as err:
        st.error(f"{what + ': ' if what else ''}{err}", icon=":material/error:")
    except _Stop:
        pass
    except Exception as err:  # noqa: BLE001 - the UI edge: log the trace, show one line
        log.error("unexpected error%s:\n%s", f" in {what}" if what else "", traceback.format_exc())
        st.error(f"{what + ': ' if what else ''}unexpected {type(err).__name__}: {err}. "
                 "The details are in the server log.", icon=":material/error:")


def fitted_columns(frame: "pd.DataFrame", config: dict[str, Any] | None = None, *,
                   max_px: int = 420) -> dict[str, Any]:
    """`config` plus a width for every text column it leaves out, wide enough for its longest value and its
    title: st.dataframe sizes columns from a sample, cutting names such as "valid_leaky" or "Cardiomegaly"."""
    out = dict(config or {})
    for column in frame.columns:
        kind = frame[column].dtype
        if column in out or kind.kind in "biufcmM":  # numbers, booleans and dates keep Streamlit's own width
            continue
        longest = max([len(str(column))] + [len(str(v)) for v in frame[column].dropna().head(2000)])
        out[column] = st.column_config.TextColumn(width=int(min(max_px, 8 * longest + 30)))
    return out


def section(what: str) -> Callable[[F], F]:
    """Decorator: a page section whose own widgets rerun only this section (`st.fragment`), not the page.

    A full page run redraws the sidebar and every other section; a student moving a slider needs none of
    that. The section keeps the arguments of the last full run, so it must only read its inputs from
    them and its own widgets. Errors inside show as `user_errors(what)` would (a fragment otherwise
    draws an exception box). Returns the section's value on full runs."""
    def decorate(func: F) -> F:
        @functools.wraps(func)
        def run(*args, **kwargs):
            with user_errors(what):
                return func(*args, **kwargs)
            return None

        return st.fragment(run)  # type: ignore[return-value]

    return decorate


def show_warnings(warnings: list[DataWarning], limit: int = 5) -> None:
    """Data warnings in one collapsed box, distinct from errors."""
    if not warnings:
        return
    with st.expander(f"{len(warnings)} warning(s) about the input files", icon=":material/warning:"):
        for warning in warnings[:limit]:
            st.warning(str(warning))
        if len(warnings) > limit:
            st.caption(f"... and {len(warnings) - limit} more.")


def teaching_note(title: str, body: str, latex: list[str] | None = None, *, always: bool = False) -> None:
    """An explanation for students: shown when teaching mode is on (or `always`), in an expander."""
    if not (always or teaching_mode()):
        return
    with st.expander(f"Teaching note: {title}", expanded=teaching_mode(), icon=":material/school:"):
        st.markdown(body)
        for formula in latex or []:
            st.latex(formula)


def stat_row(items: list[tuple[str, str | int | float]]) -> None:
    """A row of st.metric boxes."""
    columns = st.columns(len(items))
    for column, (label, value) in zip(columns, items):
        column.metric(label, f"{value:,}" if isinstance(value, int) else value)
