"""Results: evaluate prediction files on a split (AUROC with CIs, curves, DeLong, thresholds, calibration)."""
from dashboard.bootstrap import page_guard

page_guard()

import streamlit as st

from dashboard.loaders import active_dataset
from dashboard.models import model_sources
from dashboard.results_view import choose_sources, choose_split, render_guidance, render_results
from dashboard.widgets import user_errors

st.title("Results")
st.caption("The sidebar's models predict the chosen split (once, then cached); prediction files can be added. "
           "Every section compares them on exactly the same images.")
with user_errors("evaluating the predictions"):
    dataset = active_dataset()
    if dataset is None or not dataset.splits:
        st.info("No dataset yet: see the Home page. The labels of the evaluated split come from the active dataset.")
    else:
        split = choose_split(dataset.splits)
        sources, training = model_sources(split, dataset)
        files, file_training = choose_sources(taken=sources)
        sources.update(files)
        training.update(file_training)
        if sources:
            render_results(split, sources, training=training, splits=dataset.splits)
        else:
            render_guidance()
