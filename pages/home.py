"""Landing page: what the tool does, what it found, where to start."""
from dashboard.bootstrap import page_guard

page_guard()

import streamlit as st

from dashboard.home import render_found, render_upload
from dashboard.widgets import teaching_note

st.title("CXR Dashboard")
st.markdown(
    "A workbench for chest X-ray deep learning on **NIH ChestX-ray14**-style data: audit a split "
    "for **patient leakage**, study **class balance** and the weighted loss, browse the images.")
teaching_note(
    "the course recipe",
    "1. Check that no patient appears in two splits (leakage inflates validation scores).\n"
    "2. Count class frequencies; weight the binary cross-entropy so positives and negatives "
    "contribute equally.\n3. Train DenseNet121 with 14 sigmoid outputs.\n"
    "4. Evaluate per-class ROC/AUROC.\n5. Look where the model looks with GradCAM.")
render_found()
render_upload()
