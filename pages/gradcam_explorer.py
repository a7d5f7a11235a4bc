"""GradCAM explorer: where the model looks, per class, on a split's images or your own upload."""
from dashboard.bootstrap import page_guard

page_guard()

import streamlit as st

from dashboard.cam_view import render_page
from dashboard.loaders import active_dataset
from dashboard.models import active_models
from dashboard.widgets import user_errors

st.title("GradCAM explorer")
st.caption("Class activation maps and saliency of the sidebar's model: browse a split sorted by prediction, or "
           "upload an image. CAM gives all 14 maps from one forward pass; Grad-CAM and Grad-CAM++ work on any layer; "
           "Gradient, SmoothGrad and Integrated Gradients on any model. Compare two methods side by side below.")
with user_errors("drawing the maps"):
    render_page(active_dataset(), active_models())
