"""Entry point: `streamlit run Home.py`. Shared sidebar, then the page chosen in the navigation."""
import streamlit as st

from dashboard.sidebar import render_sidebar

st.set_page_config(page_title="CXR Dashboard", page_icon=":material/radiology:", layout="wide")

PAGES = {
    "": [st.Page("pages/home.py", title="Home", icon=":material/home:", default=True)],
    "Data": [
        st.Page("pages/dataset_explorer.py", title="Dataset explorer", icon=":material/photo_library:"),
        st.Page("pages/leakage_audit.py", title="Leakage audit", icon=":material/policy:"),
        st.Page("pages/class_balance.py", title="Class balance and weighted loss", icon=":material/balance:"),
    ],
    "Model": [
        st.Page("pages/training.py", title="Training", icon=":material/model_training:"),
        st.Page("pages/results.py", title="Results", icon=":material/monitoring:"),
    ],
    "Explain": [st.Page("pages/gradcam_explorer.py", title="GradCAM explorer", icon=":material/visibility:")],
}

page = st.navigation(PAGES)
render_sidebar()
page.run()
