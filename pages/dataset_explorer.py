"""Dataset explorer: split sizes, class frequencies, co-occurrence, demographics and the images."""
from dashboard.bootstrap import page_guard

page_guard()

import streamlit as st

from dashboard.explorer_view import render_demographics, render_grid, render_overview, render_structure
from dashboard.loaders import active_dataset
from dashboard.widgets import show_warnings, user_errors

st.title("Dataset explorer")
with user_errors("loading the dataset"):
    dataset = active_dataset()
    if dataset is None:
        st.info("No dataset yet: see the Home page.")
    else:
        show_warnings([w for s in dataset.split_list for w in s.warnings])
        render_overview(dataset)
        render_structure(dataset)
        render_demographics(dataset)
        render_grid(dataset)
