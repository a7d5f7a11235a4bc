"""The sidebar every page shares: active dataset, active models, teaching toggle."""
from __future__ import annotations

import streamlit as st

from dashboard.loaders import UPLOADED, UPLOADS_KEY, datasets
from dashboard.state import DATASET_KEY, PENDING_DATASET_KEY, TEACHING_KEY, data_root


def render_sidebar() -> None:
    """Draw the shared sidebar; choices persist in session state across pages."""
    with st.sidebar:
        entries = datasets()
        options = [e.name for e in entries]
        if st.session_state.get(UPLOADS_KEY):
            options.append(UPLOADED)
        if options:
            pending = st.session_state.pop(PENDING_DATASET_KEY, None)
            if pending in options:
                st.session_state[DATASET_KEY] = pending
            if st.session_state.get(DATASET_KEY) not in options:
                st.session_state[DATASET_KEY] = options[0]
            st.selectbox("Dataset", options, key=DATASET_KEY,
                         help=f"Folders found under {data_root()} (one dataset each), or your uploads.")
            entry = next((e for e in entries if e.name == st.session_state[DATASET_KEY]), None)
            if entry is not None:
                st.caption(f"Splits: {', '.join(entry.split_names)}"
                           + ("" if entry.image_root else " · no image folder"))
        else:
            st.warning(f"No dataset found under {data_root()}. Run `make run` to create the demo "
                       "dataset, or upload split files on the Home page.")
        st.toggle("Teaching mode", key=TEACHING_KEY,
                  help="Show the explanations and formulas on every page.")
