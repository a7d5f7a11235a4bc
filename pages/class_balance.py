"""Class balance and weighted loss: the course's frequency charts, weights and the loss explorer."""
from dashboard.bootstrap import page_guard

page_guard()

import streamlit as st

from dashboard.balance import pick_split, render_balance, render_loss_explorer, render_missing_images
from dashboard.loaders import active_dataset
from dashboard.widgets import user_errors

st.title("Class balance and weighted loss")
with user_errors("loading the dataset"):
    dataset = active_dataset()
    if dataset is None:
        st.info("No dataset yet: see the Home page.")
    else:
        split = pick_split(dataset.splits, key="balance_split")
        st.caption(f"{dataset.name} / {split.name}: {len(split):,} images. "
                   "The weights are computed on the training split and used for every split.")
        render_missing_images(split, dataset.image_root)
        classes = render_balance(split)
        render_loss_explorer(classes)
