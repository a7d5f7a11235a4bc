"""Results: evaluate prediction files on a split (AUROC with CIs, curves, DeLong, thresholds, calibration)."""
from dashboard.bootstrap import page_guard

page_guard()

import streamlit as st

from dashboard.leak_lesson_view import render_leak_lesson
from dashboard.loaders import active_dataset
from dashboard.models import active_models, model_sources
from dashboard.results_view import (choose_sources, choose_split, is_dataset_split, labels_choices,
                                    literature_default, render_guidance, render_results)
from dashboard.widgets import user_errors

st.title("Results")
st.caption("The sidebar's models predict the chosen split (once, then cached); prediction files can be added. "
           "Every section compares them on exactly the same images.")
with user_errors("evaluating the predictions"):
    dataset = active_dataset()
    labels = labels_choices(dataset)
    if not labels:
        st.info("No dataset yet: see the Home page, or upload a labels file above. The labels of the evaluated "
                "split come from the active dataset or from your labels file.")
    else:
        split = choose_split(labels)
        models = active_models()
        sources, training = model_sources(split, dataset) if is_dataset_split(split, dataset) else ({}, {})
        partial = set(sources)  # models predict the images on disk: maybe part of the split
        files, file_training = choose_sources(taken=sources)
        sources.update(files)
        training.update(file_training)
        if sources:
            render_leak_lesson(dataset)
            render_results(split, sources, training=training, splits=labels, partial=partial,
                           literature_default=literature_default(split, dataset))
        else:
            render_guidance(models_failed=bool(models) and is_dataset_split(split, dataset))
