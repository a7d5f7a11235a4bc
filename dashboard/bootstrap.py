"""Make every page run inside Home.py's navigation, even when Streamlit runs a page script on its own.

Streamlit treats a `pages/` folder beside the entry script as a legacy multipage app until the entry
script has called st.navigation: a fresh server's first request for /leakage_audit (and every AppTest
run) would execute that page alone, without the shared sidebar. The guard switches Streamlit to
st.navigation mode and runs Home.py in place, which draws the sidebar and runs this same page again
(both modes name pages by URL path); then it stops the outer run. No rerun, so widget events survive.
"""
from __future__ import annotations

import runpy
from pathlib import Path

import streamlit as st

ENTRY = Path(__file__).resolve().parent.parent / "Home.py"


def page_guard() -> None:
    """Call first in every page script."""
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        runpy.run_path(str(ENTRY), run_name="__main__")
        st.stop()
