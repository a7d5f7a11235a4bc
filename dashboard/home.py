"""Home page sections: what was found on disk, where to start, and uploading split files."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from cxrcore.data.catalog import split_role
from dashboard.demo_offer import render_demo_offer
from dashboard.loaders import UPLOADED, UPLOADS_KEY, datasets, uploaded_split
from dashboard.state import PENDING_DATASET_KEY, models_root
from dashboard.widgets import user_errors

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


def render_found() -> None:
    """Datasets and model files found on disk, with links to the pages to start from."""
    entries = datasets()
    st.subheader("Found on this machine")
    if entries:
        st.dataframe(pd.DataFrame([{
            "dataset": e.name, "splits": ", ".join(e.split_names),
            "images": str(e.image_root.relative_to(e.root)) if e.image_root and e.image_root != e.root
            else ("(in the folder)" if e.image_root else "none"),
            "boxes": e.bbox_file.name if e.bbox_file else "", "folder": str(e.root)} for e in entries]),
            hide_index=True, width="stretch")
    render_demo_offer(prominent=not entries)
    if not entries:
        st.caption("Your own data: put the course layout in data/nih/ (train-small.csv, valid-small.csv, "
                   "test.csv, images-small/) or any folder of split CSVs under the data root; it is picked "
                   "up automatically. Or upload split files below.")
    models = sorted(p for p in models_root().rglob("*") if p.suffix.lower() in MODEL_SUFFIXES) \
        if models_root().is_dir() else []
    st.caption(f"Model files under {models_root()}: {len(models)}"
               + (" (" + ", ".join(str(p.relative_to(models_root())) for p in models[:6]) + ")" if models else ""))
    render_demo_model_note()
    st.subheader("Where to start")
    c1, c2, c3 = st.columns(3)
    c1.page_link("pages/leakage_audit.py", label="Audit a split for patient leakage", icon=":material/policy:")
    c2.page_link("pages/class_balance.py", label="Class balance and the weighted loss", icon=":material/balance:")
    c3.page_link("pages/dataset_explorer.py", label="Browse the images", icon=":material/photo_library:")
    c1.page_link("pages/training.py", label="Train a model (one click for the demo model)",
                 icon=":material/model_training:")
    c2.page_link("pages/results.py", label="Compare model AUROCs", icon=":material/monitoring:")
    c3.page_link("pages/gradcam_explorer.py", label="See where the model looks", icon=":material/visibility:")


def render_demo_model_note() -> None:
    """The demo model is for the demo: say so, naming the models trained on the synthetic set."""
    from cxrcore.data.catalog import DATA_SYNTHETIC
    from dashboard.models import model_entries

    synthetic = [e.name for e in model_entries() if e.info is not None and e.info.data_kind == DATA_SYNTHETIC]
    st.caption("The demo model is for the demo: it learned the synthetic phantoms of the demo set, so its "
               "probabilities and maps on a real X-ray mean nothing (the Results and GradCAM pages warn when "
               "a model meets another kind of images)."
               + (f" Trained on the demo set: {', '.join(synthetic[:6])}." if synthetic else ""))


def render_upload() -> None:
    """Upload split files (course CSV or NIH table) to work on them as the 'Uploaded files' dataset."""
    with st.expander("Use your own split files (upload)", icon=":material/upload_file:"):
        st.caption("Course one-hot CSVs (Image, the 14 labels, PatientId) or an NIH Data_Entry table. "
                   "Uploads stay in this browser session; images are not needed for the audit.")
        files = st.file_uploader("Split files", type=["csv", "gz"], accept_multiple_files=True,
                                 key="home_uploads")
        if not files:
            return
        loaded = {}
        for file in files:
            name = Path(file.name).name.split(".")[0]
            with user_errors("reading the upload"):  # the error names the file itself
                loaded[name] = uploaded_split(file.getvalue(), file.name, name)
        if loaded:
            st.session_state[UPLOADS_KEY] = loaded
            roles = ", ".join(f"{n} ({split_role(n) or 'no role'})" for n in loaded)
            st.success(f"Loaded {len(loaded)} split(s): {roles}.")
            if st.button("Work on the uploaded files", type="primary"):
                st.session_state[PENDING_DATASET_KEY] = UPLOADED
                st.rerun()
