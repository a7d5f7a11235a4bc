"""The sidebar every page shares: active dataset, active models, teaching toggle."""
from __future__ import annotations

import streamlit as st

from dashboard.loaders import UPLOADED, UPLOADS_KEY, datasets
from dashboard.state import DATASET_KEY, MODELS_KEY, PENDING_DATASET_KEY, TEACHING_KEY, data_root


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
            st.warning(f"No dataset found under {data_root()}. Generate the demo dataset on the Home "
                       "page (one click), or upload split files there.")
        render_model_picker()
        render_teaching_toggle()


def render_teaching_toggle() -> None:
    """Teaching mode, kept in the address too (?teaching_mode=true): a reload or a shared link keeps it on."""
    st.toggle("Teaching mode", key=TEACHING_KEY, help="Show the explanations and formulas on every page.",
              bind="query-params", persist_state="session")


def render_model_picker() -> None:
    """Active model(s): every usable model found under models/ and runs/."""
    from dashboard.models import model_entries

    entries = model_entries()
    usable = [e.name for e in entries if e.usable]
    if not usable:
        st.caption("No model yet: train the demo model on the Training page, or put a model file in models/.")
        return
    current = [n for n in st.session_state.get(MODELS_KEY, []) if n in usable]
    if MODELS_KEY not in st.session_state or not current:
        st.session_state[MODELS_KEY] = usable[:1]
    st.multiselect("Models", usable, key=MODELS_KEY, help="Models under models/ and trained runs under runs/.")
    broken = [e for e in entries if e.kind == "broken"]
    if broken:
        st.caption(f"{len(broken)} model file(s) cannot be used (see Home).")
