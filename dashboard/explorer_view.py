"""Dataset explorer sections: sizes, class frequencies, co-occurrence, demographics, image grid."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from cxrcore.audit.audit import summarize
from cxrcore.data.dataset import IMAGE, PATIENT, Split
from cxrcore.data.labels import LABELS, NO_FINDING
from cxrcore.data.paths import resolve_image
from cxrcore.data.pipeline import missing_summary
from dashboard import charts
from dashboard.loaders import ActiveDataset, preview_jpeg, split_key
from dashboard.widgets import section

GRID_COLUMNS = 6
PAGE_SIZE = 24


@st.cache_data(show_spinner=False, max_entries=32)
def _summaries(_splits: list[Split], key: tuple) -> list:
    return [summarize(s) for s in _splits]


def render_overview(dataset: ActiveDataset) -> None:
    splits = dataset.split_list
    key = split_key(splits)
    summaries = _summaries(splits, key)
    st.dataframe(pd.DataFrame([{
        "split": s.name, "images": s.rows, "patients": s.patients,
        "images per patient": round(s.rows / max(s.patients, 1), 2),
        "No Finding": f"{s.no_finding_share:.1%}", "source": s.source} for s in summaries]),
        hide_index=True, width="stretch")
    st.plotly_chart(charts.cached_figure("class_frequency", key, lambda: charts.class_frequency_by_split(summaries)),
                    width="stretch")


def render_structure(dataset: ActiveDataset) -> None:
    """Label co-occurrence of one split, and labels per image."""
    splits = dataset.split_list
    key = split_key(splits)
    summaries = _summaries(splits, key)
    left, right = st.columns([3, 2])
    with left:
        render_cooccurrence(summaries, key)
    with right:
        st.plotly_chart(charts.cached_figure("labels_per_image", key, lambda: charts.labels_per_image(summaries)),
                        width="stretch")


@section("the co-occurrence chart")
def render_cooccurrence(summaries: list, key: tuple) -> None:
    """The co-occurrence heatmap of the chosen split (its selector reruns only this)."""
    names = [s.name for s in summaries]
    chosen = st.selectbox("Co-occurrence in split", names, key="explorer_cooc_split")
    summary = summaries[names.index(chosen)]
    figure = charts.cached_figure("cooccurrence", (key, chosen), lambda: charts.cooccurrence_heatmap(
        summary.cooccurrence, f"Label co-occurrence: {chosen}"))
    st.plotly_chart(figure, width="stretch")


def render_demographics(dataset: ActiveDataset) -> None:
    splits = dataset.splits
    present = [c for c in ("Age", "Sex", "View") if all(c in s.frame for s in splits.values())]
    if not present:
        st.caption("No age, sex or view position columns in these files (the NIH table has them).")
        return
    columns = st.columns(len(present))
    key = split_key(dataset.split_list)
    for column, name in zip(columns, present):
        values = {n: s.frame[name] for n, s in splits.items()}
        figure = charts.cached_figure("metadata", (key, name),
                                      lambda: charts.metadata_histogram(values, name, numeric=name == "Age"))
        column.plotly_chart(figure, width="stretch")


def findings_text(positives) -> str:
    """'Cardiomegaly, Effusion' from one row's 14 label values (in LABELS order), or 'No Finding'."""
    return ", ".join(label for label, value in zip(LABELS, positives) if value) or NO_FINDING


def filter_images(splits: dict[str, Split], split_names: list[str], label: str, patient: str) -> pd.DataFrame:
    """Rows of the chosen splits matching a label ('any', 'No Finding' or a class) and a patient id."""
    parts = []
    for name in split_names:
        frame = splits[name].frame
        rows = frame[[IMAGE, PATIENT, *LABELS]].assign(split=name)
        if label == NO_FINDING:
            rows = rows[rows[list(LABELS)].sum(axis=1) == 0]
        elif label in LABELS:
            rows = rows[rows[label] == 1]
        if patient.strip():
            try:
                rows = rows[rows[PATIENT] == int(patient)]
            except ValueError:
                st.warning(f"Patient id '{patient}' is not a number; showing all patients.")
        parts.append(rows)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def missing_in(dataset: ActiveDataset, split_names: list[str]) -> list[str]:
    """Images of the chosen splits missing from the image folder (each named once)."""
    from dashboard.loaders import present_images

    missing: list[str] = []
    for name in split_names:
        missing += present_images(dataset.splits[name], dataset.image_root)[1]
    return list(dict.fromkeys(missing))


@st.dialog("Image", width="large")
def _enlarge(path: str, caption: str) -> None:
    st.image(path, caption=caption, width="stretch")


@section("the image grid")
def render_grid(dataset: ActiveDataset) -> None:
    """Thumbnails with filters (label, split, patient); click to enlarge. Its widgets rerun only the grid."""
    st.subheader("Images")
    if dataset.image_root is None:
        st.info("This dataset has no image folder (put images in images/ or images-small/ beside the CSVs).")
        return
    c1, c2, c3 = st.columns([2, 2, 1])
    split_names = c1.multiselect("Splits", list(dataset.splits), default=list(dataset.splits)[:1],
                                 key="explorer_grid_splits")
    label = c2.selectbox("Label", ["any", NO_FINDING, *LABELS], key="explorer_grid_label")
    patient = c3.text_input("Patient id", key="explorer_grid_patient")
    rows = filter_images(dataset.splits, split_names, label, patient)
    missing = missing_in(dataset, split_names)
    if missing:
        total = sum(len(dataset.splits[n]) for n in split_names)
        # default: present only when most images are missing (a course folder with a few images copied)
        present_only = st.checkbox("Present only (hide the images missing from the folder)",
                                   value=2 * len(missing) > total, key="explorer_grid_present_only")
        st.caption(f"{missing_summary(missing, total)} (image folder {dataset.image_root}).")
        if present_only:
            rows = rows[~rows[IMAGE].astype(str).isin(set(missing))]
    if rows.empty:
        st.info("No image matches these filters.")
        return
    pages = max(1, -(-len(rows) // PAGE_SIZE))
    page = st.number_input(f"Page (of {pages}; {len(rows):,} images)", 1, pages, 1, key="explorer_grid_page")
    shown = rows.iloc[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    grid = st.columns(GRID_COLUMNS)
    root = Path(dataset.image_root)
    positives = shown[list(LABELS)].to_numpy()
    for i, (image, split, labels) in enumerate(zip(shown[IMAGE].astype(str), shown["split"], positives)):
        cell = grid[i % GRID_COLUMNS]
        caption = f"{image} · {split}\n{findings_text(labels)}"
        thumb = preview_jpeg(root, image)
        if thumb is None:
            cell.caption(f"{image}: missing or unreadable")
            continue
        cell.image(thumb, caption=caption, width="stretch", output_format="JPEG")
        if cell.button("Enlarge", key=f"enlarge_{split}_{image}"):
            _enlarge(str(resolve_image(root, image)), caption)
