"""Teacher control on a shared server: the passcode box, and who may start, resume and cancel training.

On loopback nothing is asked. Beyond it (cxrcore.data.access.needs_teacher) a browser session unlocks
teacher mode with the passcode set when the server started; only a flag stays in st.session_state
(that session only), never the passcode. Students see the runs read-only. The passcode comes from
the environment (CXR_TEACHER_PASSCODE) or from .streamlit/secrets.toml (the same key).
"""
from __future__ import annotations

import logging
import os
import threading
import time

import streamlit as st
from streamlit import config as st_config

from cxrcore.data.access import (CLASSROOM_ENV, HOW_TO_SET, PASSCODE_ENV, classroom_flag, needs_teacher,
                            passcode_matches, passcode_problem)
from cxrcore.errors import ConfigError

log = logging.getLogger("cxr_dashboard")

UNLOCKED_KEY = "teacher_unlocked"
INPUT_KEY = "teacher_passcode_input"
#: A wrong passcode costs this long, one attempt at a time per server process: guessing stays slow.
WRONG_DELAY_S = 1.0
_ATTEMPTS = threading.Lock()
#: Shown where a student would find the job controls.
READ_ONLY_NOTE = ("Only the teacher starts, resumes and cancels training on this shared server (teacher passcode "
                  "at the top of this page); you can follow every run here.")


def server_address() -> str | None:
    """Streamlit's server.address option (None or empty: every interface)."""
    return st_config.get_option("server.address")


def teacher_required() -> bool:
    """True when this server is shared (beyond loopback, or CXR_CLASSROOM=1): job control needs the passcode."""
    return needs_teacher(server_address(), os.environ)


def configured_passcode() -> str | None:
    """The teacher passcode: CXR_TEACHER_PASSCODE from the environment, else the same key in secrets.toml."""
    value = os.environ.get(PASSCODE_ENV)
    if value:
        return value
    try:
        secret = st.secrets.get(PASSCODE_ENV)
    except Exception:  # noqa: BLE001 - no or unreadable secrets.toml: no passcode from there
        return None
    return str(secret) if secret is not None else None


def can_control_jobs() -> bool:
    """True when this browser session may start, resume and cancel training jobs."""
    if not teacher_required():
        return True
    return bool(st.session_state.get(UNLOCKED_KEY)) and passcode_problem(configured_passcode()) is None


def require_job_control(action: str) -> None:
    """ConfigError unless this session may control jobs: checked again when the action runs, not only
    by hiding or disabling its button."""
    if not can_control_jobs():
        raise ConfigError(f"{action} needs teacher mode on this shared server.",
                          fix="the teacher unlocks it with the teacher passcode at the top of the Training page.")


def _why_shared() -> str:
    if classroom_flag(os.environ):
        return f"this app runs as a shared classroom server ({CLASSROOM_ENV}=1)"
    address = server_address()
    return (f"this server listens on {address}, beyond this machine" if address
            else "this server listens on every network interface")


def _unlock() -> None:
    """Form callback: compare the typed passcode in constant time; a wrong one waits WRONG_DELAY_S."""
    given = st.session_state.get(INPUT_KEY) or ""
    st.session_state[INPUT_KEY] = ""  # the passcode does not stay in the session
    with _ATTEMPTS:
        if passcode_matches(given, configured_passcode()):
            st.session_state[UNLOCKED_KEY] = True
            st.session_state.pop("teacher_wrong", None)
            log.info("teacher mode unlocked in one browser session")
            return
        time.sleep(WRONG_DELAY_S)
    st.session_state["teacher_wrong"] = True
    log.warning("a wrong teacher passcode was entered")


def _lock() -> None:
    st.session_state[UNLOCKED_KEY] = False


def render_teacher_access() -> None:
    """The teacher box on a shared server: how to set a passcode, the passcode field, or the lock button."""
    if not teacher_required():
        return
    problem = passcode_problem(configured_passcode())
    with st.container(border=True):
        if problem:
            st.info(f"**Teacher controls are off**: {_why_shared()} and {problem}, so nobody can start or cancel "
                    f"training from a browser; the runs stay visible read-only. The teacher sets a passcode when "
                    f"starting the server: `{HOW_TO_SET}` (or `{PASSCODE_ENV} = \"...\"` in "
                    "`.streamlit/secrets.toml`).", icon=":material/lock:")
            return
        if can_control_jobs():
            c1, c2 = st.columns([4, 1])
            c1.success("**Teacher mode**: this browser session can start, resume and cancel training jobs. "
                       "Lock it before leaving the computer.", icon=":material/lock_open:")
            c2.button("Lock", key="teacher_lock", icon=":material/lock:", on_click=_lock)
            return
        st.markdown(f":material/lock: **Teacher controls**: {_why_shared()}, so starting, resuming and cancelling "
                    "training needs the teacher passcode. Students see every run read-only.")
        with st.form("teacher_form", clear_on_submit=True, border=False):
            c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
            c1.text_input("Teacher passcode", type="password", key=INPUT_KEY, autocomplete="off")
            c2.form_submit_button("Unlock", icon=":material/key:", on_click=_unlock)
        if st.session_state.pop("teacher_wrong", None):
            st.error("Wrong teacher passcode.", icon=":material/error:")


__all__ = ["READ_ONLY_NOTE", "can_control_jobs", "configured_passcode", "render_teacher_access",
           "require_job_control", "server_address", "teacher_required"]
