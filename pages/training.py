"""Training: presets and settings, a time-per-epoch probe, detached jobs with live curves, cancel and resume."""
from dashboard.bootstrap import page_guard

page_guard()

import streamlit as st

from dashboard.loaders import active_dataset
from dashboard.teacher import render_teacher_access
from dashboard.training_view import render_demo_offer, render_hardware, render_new_run, render_runs
from dashboard.widgets import teaching_note, user_errors

st.title("Training")
st.caption("Train the 14-label classifier with the course's weighted loss. Jobs run in the background: they keep "
           "going when you close this page, and show up here again.")
render_hardware()
render_teacher_access()
dataset = None
with user_errors("loading the dataset"):
    dataset = active_dataset()
with user_errors("the demo model"):
    render_demo_offer(dataset)
teaching_note(
    "what a training run does",
    "Each epoch: one pass over the training images (shuffled, augmented), then the validation split is scored: "
    "weighted loss and AUROC per class. The epoch with the best mean AUROC is kept as best.keras; the learning "
    "rate drops when AUROC stalls, and training stops early when it stops improving.",
    [r"L = -\sum_{c} \frac{1}{N}\sum_{i} \left[ w^{+}_c\, y_{ic} \log p_{ic} + w^{-}_c (1 - y_{ic}) \log(1 - p_{ic}) \right]"])
with user_errors("the new run settings"):
    render_new_run(dataset)
with user_errors("the runs"):
    render_runs()
