"""Plotly figures shared by the pages, with one colour per class everywhere in the app."""
from __future__ import annotations

from typing import Callable, Hashable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from cxrcore.audit.audit import SplitSummary
from cxrcore.data.labels import LABELS

#: One colour per class, used by every chart (bars, curves, overlays' legends).
CLASS_COLORS: dict[str, str] = dict(zip(LABELS, (
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#17becf", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#ff7f0e", "#393b79", "#637939", "#ad494a", "#843c39")))
NEGATIVE_COLOR = "#c7c7c7"
SPLIT_COLORS = ("#1f6feb", "#f0883e", "#2da44e", "#a371f7", "#db61a2", "#768390")


@st.cache_resource(show_spinner=False, max_entries=256)
def _shared_figure(kind: str, key: Hashable, _build: Callable[[], go.Figure]) -> go.Figure:
    return _build()


def cached_figure(kind: str, key: Hashable, build: Callable[[], go.Figure]) -> go.Figure:
    """The figure of `kind` for the data identified by `key`, built once and shared by every session.

    Building a Plotly figure validates every property (10-100 ms per chart), most of a warm rerun's
    time; with 30 students on the same data that is the server's bottleneck. Never mutate the result."""
    return _shared_figure(kind, key, build)


def _layout(fig: go.Figure, height: int = 420, **kwargs) -> go.Figure:
    """Shared look; a titled figure gets room for its title above the legend."""
    titled = bool(fig.layout.title.text)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=90 if titled else 40, b=10),
                      template="plotly_white", legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
                      **kwargs)
    if titled:
        fig.update_layout(title=dict(y=0.98, yanchor="top"))
    return fig


def class_frequency_by_split(summaries: list[SplitSummary]) -> go.Figure:
    """Positive frequency per class, one panel per split side by side, bars in class colours."""
    fig = make_subplots(rows=1, cols=len(summaries), shared_yaxes=True,
                        subplot_titles=[f"{s.name} ({s.rows:,} images)" for s in summaries])
    for col, summary in enumerate(summaries, start=1):
        freq = summary.classes["pos_freq"]
        fig.add_bar(x=freq.to_numpy(), y=list(LABELS), orientation="h", showlegend=False,
                    marker_color=[CLASS_COLORS[c] for c in LABELS], row=1, col=col,
                    hovertemplate="%{y}: %{x:.2%}<extra>" + summary.name + "</extra>",
                    text=[f"{v:.1%}" for v in freq], textposition="outside", cliponaxis=False)
        fig.update_xaxes(tickformat=".0%", row=1, col=col)
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, height=460)


def positive_negative_bars(classes: pd.DataFrame, weighted: bool = False) -> go.Figure:
    """The course's charts: positive vs negative frequency per class, or their weighted contributions."""
    pos = classes["pos_contribution" if weighted else "pos_freq"]
    neg = classes["neg_contribution" if weighted else "neg_freq"]
    fig = go.Figure()
    fig.add_bar(x=list(LABELS), y=pos, name="positive", marker_color=[CLASS_COLORS[c] for c in LABELS],
                hovertemplate="%{x}: %{y:.4f}<extra>positive</extra>")
    fig.add_bar(x=list(LABELS), y=neg, name="negative", marker_color=NEGATIVE_COLOR,
                hovertemplate="%{x}: %{y:.4f}<extra>negative</extra>")
    title = "Contribution after weighting (w_pos = freq_neg, w_neg = freq_pos)" if weighted \
        else "Frequency of positive and negative labels"
    fig.update_layout(barmode="group", title=title, yaxis_title="contribution" if weighted else "frequency")
    return _layout(fig)


def cooccurrence_heatmap(matrix: np.ndarray, title: str = "") -> go.Figure:
    """Images carrying both labels (diagonal: positives of the class)."""
    fig = go.Figure(go.Heatmap(z=matrix, x=list(LABELS), y=list(LABELS), colorscale="Blues",
                               hovertemplate="%{y} & %{x}: %{z}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title)
    return _layout(fig, height=520)


def labels_per_image(summaries: list[SplitSummary]) -> go.Figure:
    """How many of the 14 labels each image carries, per split (share of images)."""
    fig = go.Figure()
    for i, summary in enumerate(summaries):
        counts = pd.Series(summary.labels_per_image).sort_index()
        fig.add_bar(x=counts.index, y=counts / summary.rows, name=summary.name,
                    marker_color=SPLIT_COLORS[i % len(SPLIT_COLORS)])
    fig.update_layout(barmode="group", xaxis_title="labels per image (0 = No Finding)",
                      yaxis_tickformat=".0%", title="Labels per image")
    return _layout(fig, height=340)


def metadata_histogram(frames: dict[str, pd.Series], title: str, numeric: bool) -> go.Figure:
    """Age histogram or sex/view shares per split."""
    fig = go.Figure()
    for i, (name, values) in enumerate(frames.items()):
        color = SPLIT_COLORS[i % len(SPLIT_COLORS)]
        if numeric:
            fig.add_histogram(x=values, name=name, histnorm="percent", opacity=0.6, marker_color=color,
                              xbins=dict(size=5))
        else:
            shares = values.astype(str).value_counts(normalize=True).sort_index()
            fig.add_bar(x=shares.index, y=shares.to_numpy(), name=name, marker_color=color)
    fig.update_layout(barmode="overlay" if numeric else "group", title=title,
                      yaxis_title="% of images" if numeric else "share", **({} if numeric else
                                                                          {"yaxis_tickformat": ".0%"}))
    return _layout(fig, height=320)


def loss_curves(w_pos: float, w_neg: float, label: str, epsilon: float = 1e-7) -> go.Figure:
    """Binary cross-entropy against the predicted probability, for y=1 and y=0, plain and weighted."""
    p = np.linspace(0.001, 0.999, 400)
    pos, neg = -np.log(p + epsilon), -np.log(1 - p + epsilon)
    color = CLASS_COLORS.get(label, "#1f77b4")
    fig = go.Figure()
    fig.add_scatter(x=p, y=pos, name="y=1, unweighted", line=dict(color=color, dash="dot"))
    fig.add_scatter(x=p, y=neg, name="y=0, unweighted", line=dict(color=NEGATIVE_COLOR, dash="dot"))
    fig.add_scatter(x=p, y=w_pos * pos, name=f"y=1, x w_pos ({w_pos:.3f})", line=dict(color=color, width=3))
    fig.add_scatter(x=p, y=w_neg * neg, name=f"y=0, x w_neg ({w_neg:.3f})",
                    line=dict(color="#555555", width=3))
    fig.update_layout(title=f"Loss for one {label} label", xaxis_title="predicted probability",
                      yaxis_title="loss", yaxis_range=[0, 5])
    return _layout(fig, height=380)


def faithfulness_curves_chart(pair: Sequence[tuple[str, object]]) -> go.Figure:
    """p(class) against the share of cells deleted (solid) or inserted (dotted), one colour per method
    (`pair`: (method title, localization.faithfulness_curves' result)), and the random order in gray."""
    colors = ("#1f77b4", "#d62728")
    fig = go.Figure()
    for (name, curves), color in zip(pair, colors):
        x = curves.fractions
        fig.add_trace(go.Scatter(x=x, y=curves.deletion, name=f"{name}: deletion", line=dict(color=color)))
        fig.add_trace(go.Scatter(x=x, y=curves.insertion, name=f"{name}: insertion",
                                 line=dict(color=color, dash="dot")))
    if pair:
        curves = pair[0][1]
        fig.add_trace(go.Scatter(x=curves.fractions, y=curves.random_deletion, name="random order: deletion",
                                 line=dict(color="#888", width=1)))
        fig.add_trace(go.Scatter(x=curves.fractions, y=curves.random_insertion, name="random order: insertion",
                                 line=dict(color="#888", width=1, dash="dot")))
    fig.update_xaxes(title="share of the image's cells deleted / inserted (most salient first)", range=[0, 1])
    fig.update_yaxes(title="predicted probability", range=[0, 1.02])
    fig.update_layout(height=440, margin=dict(l=10, r=10, t=30, b=10), template="plotly_white",
                      title="Deletion (falls fast = faithful) and insertion (rises fast = faithful)",
                      legend=dict(orientation="h", yanchor="top", y=-0.22, x=0))
    return fig
