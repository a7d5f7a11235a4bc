"""Class balance page sections: the course's two charts, the weights table, the loss explorer."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from cxrcore.audit.audit import class_balance
from cxrcore.data.catalog import split_role
from cxrcore.data.dataset import Split
from cxrcore.data.labels import LABELS
from dashboard import charts
from dashboard.loaders import split_key
from dashboard.widgets import fitted_columns, section, teaching_note


def pick_split(splits: dict[str, Split], key: str, role: str = "train", label: str = "Split") -> Split:
    """A split selector defaulting to the first split with the given role."""
    names = list(splits)
    default = next((i for i, n in enumerate(names) if split_role(n) == role), 0)
    return splits[st.selectbox(label, names, index=default, key=key)]


def weights_table(classes: pd.DataFrame) -> pd.DataFrame:
    table = classes[["positives", "negatives", "pos_freq", "neg_freq", "w_pos", "w_neg",
                     "pos_contribution", "neg_contribution"]].copy()
    return table.reset_index()


def render_balance(split: Split) -> pd.DataFrame:
    """The two course charts and the weights table for one split; returns the balance table."""
    classes = class_balance(split.labels)
    key = split_key([split])
    st.plotly_chart(charts.cached_figure("balance", key, lambda: charts.positive_negative_bars(classes)),
                    width="stretch")
    teaching_note("why the imbalance matters",
                  "With far more negatives than positives, plain binary cross-entropy is dominated by "
                  "the negatives: a model that always predicts a low probability already has a small "
                  "loss. Weighting each class so that positives and negatives contribute equally fixes "
                  "that.",
                  [r"\mathrm{freq}_{pos} = \frac{\#\,\text{positives}}{N},\qquad"
                   r" \mathrm{freq}_{neg} = 1 - \mathrm{freq}_{pos}"],
                  always=True)
    st.plotly_chart(charts.cached_figure("balance_weighted", key,
                                         lambda: charts.positive_negative_bars(classes, weighted=True)),
                    width="stretch")
    teaching_note("the weighted loss",
                  "Choose w_pos = freq_neg and w_neg = freq_pos. Then the positive contribution "
                  "freq_pos x w_pos equals the negative one freq_neg x w_neg for every class: the bars "
                  "above are the same height.",
                  [r"w_{pos} = \mathrm{freq}_{neg},\qquad w_{neg} = \mathrm{freq}_{pos}",
                   r"\mathcal{L} = \sum_{k=1}^{14} \frac{1}{N}\sum_{i=1}^{N}\Big(-w_{pos,k}\,y_{ik}"
                   r"\log(\hat p_{ik}+\epsilon) - w_{neg,k}\,(1-y_{ik})\log(1-\hat p_{ik}+\epsilon)\Big)"],
                  always=True)
    table = weights_table(classes)
    st.dataframe(table, hide_index=True, width="stretch", column_config=fitted_columns(table, {
        c: st.column_config.NumberColumn(format="%.4f") for c in
        ("pos_freq", "neg_freq", "w_pos", "w_neg", "pos_contribution", "neg_contribution")}))
    return classes


def present_counts(split: Split, present: Split) -> pd.DataFrame:
    """Positives per class among all the split's images and among those on disk, with both frequencies."""
    listed, on_disk = split.labels.sum(axis=0), present.labels.sum(axis=0)
    return pd.DataFrame({"class": list(LABELS), "positives (all listed)": listed.astype(int),
                         "positives (on disk)": on_disk.astype(int),
                         "pos_freq (all listed)": listed / max(len(split), 1),
                         "pos_freq (on disk)": on_disk / max(len(present), 1)})


def render_missing_images(split: Split, image_root) -> None:
    """When image files are missing: say how many and which, and count the classes both ways."""
    from dashboard.loaders import missing_note, present_images

    if image_root is None:
        return
    present, missing = present_images(split, image_root)
    if not missing:
        return
    st.warning(missing_note(split, missing, f"The charts count all {len(split):,} listed images; the table below "
                                            f"also counts the {len(present):,} on disk, which are what the "
                                            "models can predict."), icon=":material/image_not_supported:")
    counts = present_counts(split, present)
    st.dataframe(counts, hide_index=True, width="stretch", column_config=fitted_columns(counts, {
        c: st.column_config.NumberColumn(format="%.4f") for c in ("pos_freq (all listed)", "pos_freq (on disk)")}))


@section("the loss explorer")
def render_loss_explorer(classes: pd.DataFrame) -> None:
    """Pick a class: its loss against the predicted probability for y=1 and y=0, with and without weights."""
    st.subheader("The loss for one class")
    label = st.selectbox("Class", LABELS, index=LABELS.index("Cardiomegaly"), key="loss_class")
    row = classes.loc[label]
    p = st.slider("Predicted probability", 0.01, 0.99, 0.5, 0.01, key="loss_probability")
    w_pos, w_neg = float(row["w_pos"]), float(row["w_neg"])
    st.plotly_chart(charts.cached_figure("loss_curves", (label, w_pos, w_neg),
                                         lambda: charts.loss_curves(w_pos, w_neg, label)), width="stretch")
    import math

    c1, c2, c3, c4 = st.columns(4)
    c1.metric("loss if y=1", f"{-math.log(p):.3f}")
    c2.metric("weighted, y=1", f"{-row['w_pos'] * math.log(p):.3f}")
    c3.metric("loss if y=0", f"{-math.log(1 - p):.3f}")
    c4.metric("weighted, y=0", f"{-row['w_neg'] * math.log(1 - p):.3f}")
    teaching_note("reading the curves",
                  f"Only {row['pos_freq']:.1%} of images are {label}-positive. Unweighted, a missed "
                  "positive costs as much per image as a false alarm, but negatives are so many more "
                  "that they dominate the sum. The weights scale each curve so that both groups weigh "
                  "the same in total.")
