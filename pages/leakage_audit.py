"""Leakage audit: do patients or images cross between splits? Verdict, evidence, and a fixed split."""
from dashboard.bootstrap import page_guard

page_guard()

import streamlit as st

from dashboard.audit_view import choose_splits, render_all
from dashboard.loaders import active_dataset
from dashboard.widgets import user_errors

st.title("Leakage audit")
with user_errors("loading the dataset"):
    splits, image_root = choose_splits(active_dataset())
    render_all(splits, image_root)
