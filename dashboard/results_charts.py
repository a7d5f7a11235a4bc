"""Plotly figures of the Results page: ROC and PR curves, AUROC bars, confusion matrix, calibration.

Colour always means the class (dashboard.charts.CLASS_COLORS); models are told apart by line dash
(curves) or bar pattern (bars), so a class keeps its colour whatever the number of models.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cxrcore.evaluate.literature import PublishedResult
from cxrcore.evaluate.metrics import PrCurve, ReliabilityBin, RocCurve, ThresholdMetrics
from dashboard.charts import CLASS_COLORS, NEGATIVE_COLOR

MODEL_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
MODEL_PATTERNS = ("", "/", ".", "x", "-", "+")
MODEL_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "star")
LITERATURE_SYMBOLS = ("diamond-open", "x-thin-open", "star-open")
CHANCE_COLOR = "#9a9a9a"
NEUTRAL = "#444444"
#: Curves are thinned to this many points for drawing (the metrics use every point).
MAX_CURVE_POINTS = 1500


def _style(i: int, options: Sequence[str]) -> str:
    return options[i % len(options)]


def _layout(fig: go.Figure, height: int, top: int = 90, legend_gap: int = 0, **kwargs) -> go.Figure:
    """Title pinned to the top left, the legend in one row between title and plot (never over either).

    `legend_gap`: extra pixels between the plot area and the legend (room for subplot titles).
    """
    bottom = kwargs.pop("bottom", 10)
    plot_height = max(height - top - bottom, 1)
    fig.update_layout(height=height, template="plotly_white", margin=dict(l=10, r=10, t=top, b=bottom),
                      title=dict(x=0, xanchor="left", xref="container", y=1, yref="container", yanchor="top",
                                 pad=dict(t=10, l=10), font=dict(size=16)),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0 + (6 + legend_gap) / plot_height,
                                  x=0, xanchor="left"), **kwargs)
    return fig


def _legend_below(fig: go.Figure) -> go.Figure:
    """Legend in rows under the x-axis title (never over the curves; plotly grows the bottom margin)."""
    fig.update_layout(margin_t=50, legend=dict(orientation="h", x=0, xanchor="left", y=-0.16, yanchor="top"))
    return fig


def _thin(*arrays: np.ndarray, limit: int = MAX_CURVE_POINTS) -> list[np.ndarray]:
    """Keep at most `limit` evenly spaced points (always the first and last) of parallel arrays."""
    n = arrays[0].shape[0]
    if n <= limit:
        return list(arrays)
    keep = np.unique(np.r_[np.linspace(0, n - 1, limit).round().astype(np.int64), n - 1])
    return [a[keep] for a in arrays]


def _auc_text(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def _legend_key(fig: go.Figure, models: Sequence[str], row: int | None = None, col: int | None = None) -> None:
    """Neutral-grey legend entries explaining which dash is which model (the colour is the class)."""
    for i, model in enumerate(models):
        kwargs = {} if row is None else {"row": row, "col": col}
        fig.add_scatter(x=[None], y=[None], mode="lines", name=model, legendgroup=model,
                        line=dict(color=NEUTRAL, dash=_style(i, MODEL_DASHES), width=2), **kwargs)


def roc_figure(label: str, curves: Mapping[str, RocCurve], aurocs: Mapping[str, float],
               points: Mapping[str, tuple[float, float, float]] | None = None) -> go.Figure:
    """One class: each model's ROC curve (class colour, one dash per model), chance line, Youden points."""
    color = CLASS_COLORS.get(label, NEUTRAL)
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance (AUROC 0.5)",
                    line=dict(color=CHANCE_COLOR, dash="dot", width=1), hoverinfo="skip")
    for i, (model, curve) in enumerate(curves.items()):
        fpr, tpr, thr = _thin(curve.fpr, curve.tpr, curve.thresholds)
        fig.add_scatter(x=fpr, y=tpr, mode="lines", name=f"{model} (AUROC {_auc_text(aurocs.get(model))})",
                        line=dict(color=color, dash=_style(i, MODEL_DASHES), width=2.5), customdata=thr,
                        hovertemplate="FPR %{x:.3f}<br>TPR %{y:.3f}<br>threshold %{customdata:.4f}"
                                      f"<extra>{model}</extra>")
        if points and model in points:
            fpr_j, tpr_j, thr_j = points[model]
            fig.add_scatter(x=[fpr_j], y=[tpr_j], mode="markers", showlegend=False,
                            marker=dict(color=color, size=10, symbol=_style(i, MODEL_SYMBOLS),
                                        line=dict(color="white", width=1.5)),
                            hovertemplate=f"Youden point of {model}<br>threshold {thr_j:.4f}<br>"
                                          "FPR %{x:.3f}, TPR %{y:.3f}<extra></extra>")
    fig.update_xaxes(title="false positive rate (1 - specificity)", range=[0, 1])
    fig.update_yaxes(title="true positive rate (sensitivity)", range=[0, 1.02])
    fig.update_layout(title=f"ROC: {label} (markers: Youden points)")
    return _legend_below(_layout(fig, height=560))


def pr_figure(label: str, curves: Mapping[str, PrCurve], auprcs: Mapping[str, float], prevalence: float) -> go.Figure:
    """One class: each model's precision-recall curve with the prevalence (a random model's precision)."""
    color = CLASS_COLORS.get(label, NEUTRAL)
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[prevalence, prevalence], mode="lines",
                    name=f"chance (precision = prevalence {prevalence:.3f})",
                    line=dict(color=CHANCE_COLOR, dash="dot", width=1), hoverinfo="skip")
    for i, (model, curve) in enumerate(curves.items()):
        if curve.recall.size == 0:
            continue
        recall, precision, thr = _thin(np.r_[0.0, curve.recall], np.r_[1.0, curve.precision],
                                       np.r_[np.inf, curve.thresholds])
        fig.add_scatter(x=recall, y=precision, mode="lines", line_shape="vh",
                        name=f"{model} (AP {_auc_text(auprcs.get(model))})",
                        line=dict(color=color, dash=_style(i, MODEL_DASHES), width=2.5), customdata=thr,
                        hovertemplate="recall %{x:.3f}<br>precision %{y:.3f}<br>threshold %{customdata:.4f}"
                                      f"<extra>{model}</extra>")
    fig.update_xaxes(title="recall (sensitivity)", range=[0, 1])
    fig.update_yaxes(title="precision (PPV)", range=[0, 1.02])
    fig.update_layout(title=f"Precision-recall: {label}")
    return _legend_below(_layout(fig, height=560))


def _grid(labels: Sequence[str], cols: int, titles: Sequence[str]) -> tuple[go.Figure, int]:
    rows = max(1, math.ceil(len(labels) / cols))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles), horizontal_spacing=0.035,
                        vertical_spacing=0.09 if rows <= 3 else 0.07)
    return fig, rows


def _finish_grid(fig: go.Figure, models: Sequence[str], rows: int, cols: int, title: str) -> go.Figure:
    """Shared axes, ticks on the outer panels only, the model legend key and the title of a curve grid."""
    _legend_key(fig, models, 1, 1)
    fig.update_xaxes(range=[0, 1], showticklabels=False)
    fig.update_yaxes(range=[0, 1.02], showticklabels=False)
    for row in range(1, rows + 1):
        fig.update_yaxes(showticklabels=True, tickvals=[0, 0.5, 1], row=row, col=1)
    for col in range(1, cols + 1):
        fig.update_xaxes(showticklabels=True, tickvals=[0, 0.5, 1], row=rows, col=col)
    fig.update_annotations(font_size=12)
    fig.update_layout(title=title)
    return _layout(fig, height=240 * rows + 130, top=120, legend_gap=38)


def roc_grid(curves: Mapping[str, Mapping[str, RocCurve]], aurocs: Mapping[str, Mapping[str, float]],
             models: Sequence[str], cols: int = 5) -> go.Figure:
    """All classes as small multiples: one panel per class, one dashed line per model, class colours."""
    labels = list(curves)
    titles = []
    for label in labels:
        values = " / ".join(_auc_text(aurocs[m].get(label, math.nan)) for m in models if label in aurocs[m])
        titles.append(f"{label}<br><span style='font-size:11px'>AUROC {values}</span>")
    fig, rows = _grid(labels, cols, titles)
    for k, label in enumerate(labels):
        row, col = k // cols + 1, k % cols + 1
        fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", showlegend=False, hoverinfo="skip",
                        line=dict(color=CHANCE_COLOR, dash="dot", width=1), row=row, col=col)
        for i, model in enumerate(models):
            curve = curves[label].get(model)
            if curve is None:
                continue
            fpr, tpr = _thin(curve.fpr, curve.tpr, limit=400)
            fig.add_scatter(x=fpr, y=tpr, mode="lines", showlegend=False, legendgroup=model,
                            line=dict(color=CLASS_COLORS.get(label, NEUTRAL), dash=_style(i, MODEL_DASHES), width=2),
                            hovertemplate=f"{label}<br>FPR %{{x:.3f}}, TPR %{{y:.3f}}<extra>{model}</extra>",
                            row=row, col=col)
    return _finish_grid(fig, models, rows, cols, "ROC curves of every class (x: false positive rate, "
                        "y: true positive rate; AUROCs in legend order)")


def pr_grid(curves: Mapping[str, Mapping[str, PrCurve]], auprcs: Mapping[str, Mapping[str, float]],
            prevalence: Mapping[str, float], models: Sequence[str], cols: int = 5) -> go.Figure:
    """All classes' precision-recall curves as small multiples, with each class's prevalence line."""
    labels = list(curves)
    titles = []
    for label in labels:
        values = " / ".join(_auc_text(auprcs[m].get(label, math.nan)) for m in models if label in auprcs[m])
        titles.append(f"{label}<br><span style='font-size:11px'>AP {values} · prev. {prevalence[label]:.2f}</span>")
    fig, rows = _grid(labels, cols, titles)
    for k, label in enumerate(labels):
        row, col = k // cols + 1, k % cols + 1
        fig.add_scatter(x=[0, 1], y=[prevalence[label]] * 2, mode="lines", showlegend=False, hoverinfo="skip",
                        line=dict(color=CHANCE_COLOR, dash="dot", width=1), row=row, col=col)
        for i, model in enumerate(models):
            curve = curves[label].get(model)
            if curve is None or curve.recall.size == 0:
                continue
            recall, precision = _thin(np.r_[0.0, curve.recall], np.r_[1.0, curve.precision], limit=400)
            fig.add_scatter(x=recall, y=precision, mode="lines", line_shape="vh", showlegend=False,
                            legendgroup=model,
                            line=dict(color=CLASS_COLORS.get(label, NEUTRAL), dash=_style(i, MODEL_DASHES), width=2),
                            hovertemplate=f"{label}<br>recall %{{x:.3f}}, precision %{{y:.3f}}<extra>{model}</extra>",
                            row=row, col=col)
    return _finish_grid(fig, models, rows, cols, "Precision-recall curves of every class (x: recall, "
                        "y: precision; average precision in legend order)")


def auroc_bars(labels: Sequence[str], models: Sequence[str],
               values: Mapping[str, Mapping[str, tuple[float, float, float]]],
               literature: Sequence[PublishedResult] = ()) -> go.Figure:
    """Per-class AUROC of each model as bars rising from chance (0.5), CI error bars, literature markers.

    `values[model][label] = (auroc, ci_low, ci_high)`; bars are coloured by class and patterned by model.
    """
    fig = go.Figure()
    lowest = 0.5
    for i, model in enumerate(models):
        per = values[model]
        xs = [label for label in labels if label in per]
        auc = np.array([per[x][0] for x in xs], dtype=float)
        low = np.array([per[x][1] for x in xs], dtype=float)
        high = np.array([per[x][2] for x in xs], dtype=float)
        has_ci = np.isfinite(low).any()
        finite = np.r_[auc, low][np.isfinite(np.r_[auc, low])]
        lowest = min(lowest, float(finite.min()) if finite.size else 0.5)
        # legend swatch in neutral grey (the real bars are coloured by class): a zero-height bar
        fig.add_bar(x=xs[:1], y=[0.0] * len(xs[:1]), base=0.5, name=model, legendgroup=model, offsetgroup=model,
                    hoverinfo="skip", marker=dict(color=NEUTRAL, pattern=dict(
                        shape=_style(i, MODEL_PATTERNS), fillmode="overlay", fgcolor="white", size=7)))
        fig.add_bar(
            x=xs, y=auc - 0.5, base=0.5, name=model, offsetgroup=model, legendgroup=model, showlegend=False,
            marker=dict(color=[CLASS_COLORS.get(x, NEUTRAL) for x in xs],
                        pattern=dict(shape=_style(i, MODEL_PATTERNS), fillmode="overlay", fgcolor="white", size=7),
                        line=dict(color=NEUTRAL, width=0.6)),
            error_y=dict(type="data", symmetric=False, array=np.nan_to_num(high - auc),
                         arrayminus=np.nan_to_num(auc - low), color=NEUTRAL, thickness=1.2, width=3)
            if has_ci else None,
            customdata=np.c_[auc, low, high],
            hovertemplate="%{x}<br>AUROC %{customdata[0]:.3f}"
                          + (" [%{customdata[1]:.3f}, %{customdata[2]:.3f}]" if has_ci else "")
                          + f"<extra>{model}</extra>")
    for j, paper in enumerate(literature):
        xs = [label for label in labels if label in paper.aurocs]
        fig.add_scatter(x=xs, y=[paper.aurocs[x] for x in xs], mode="markers",
                        name=f"{paper.name}: other test set",
                        marker=dict(symbol=_style(j, LITERATURE_SYMBOLS), size=11, color="black",
                                    line=dict(width=1.6, color="black")),
                        hovertemplate="%{x}: %{y:.3f}<extra>" + paper.name + " (measured on another test set)</extra>")
    fig.add_hline(y=0.5, line=dict(color=CHANCE_COLOR, dash="dot", width=1))
    floor = max(0.0, math.floor((lowest - 0.05) * 10) / 10)
    fig.update_yaxes(title="AUROC (bars start at chance, 0.5)", range=[min(floor, 0.4), 1.02], dtick=0.1)
    fig.update_xaxes(tickangle=-30, type="category", categoryorder="array", categoryarray=list(labels))
    fig.update_layout(barmode="group", bargap=0.25, bargroupgap=0.05,
                      title="Per-class AUROC with 95% CI (bar colour = class, pattern = model)")
    return _layout(fig, height=520, top=100)


def confusion_figure(metrics: ThresholdMetrics, label: str) -> go.Figure:
    """2x2 confusion matrix at one threshold: rows truth, columns prediction; shade = share of the row.

    The diagonal shares are the sensitivity (top) and the specificity (bottom).
    """
    counts = np.array([[metrics.tp, metrics.fn], [metrics.fp, metrics.tn]], dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    names = [["TP", "FN"], ["FP", "TN"]]
    roles = [[" (sensitivity)", ""], ["", " (specificity)"]]
    text = [[f"<b>{names[i][j]}</b>  {int(counts[i, j]):,}<br>{share[i, j]:.1%} of the row{roles[i][j]}"
             for j in range(2)] for i in range(2)]
    color = CLASS_COLORS.get(label, "#1f77b4")
    fig = go.Figure(go.Heatmap(z=share, x=["predicted positive", "predicted negative"],
                               y=[f"{label} present", f"{label} absent"], text=text, texttemplate="%{text}",
                               textfont=dict(size=14), colorscale=[[0, "#f7f7f7"], [1, color]], zmin=0, zmax=1,
                               showscale=False, xgap=3, ygap=3,
                               hovertemplate="%{y}, %{x}: %{z:.1%} of the row<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=f"Confusion matrix at threshold {metrics.threshold:.3f}")
    return _layout(fig, height=330, top=50)


def score_histogram(label: str, y: np.ndarray, p: np.ndarray, threshold: float, model: str) -> go.Figure:
    """Predicted probabilities of images with and without the finding, and the chosen threshold."""
    color = CLASS_COLORS.get(label, "#1f77b4")
    y = np.asarray(y).astype(bool)
    fig = go.Figure()
    bins = dict(start=0.0, end=1.0, size=0.02)
    fig.add_histogram(x=p[~y], name=f"{label} absent ({int((~y).sum()):,})", histnorm="percent", xbins=bins,
                      marker_color=NEGATIVE_COLOR, opacity=0.75)
    fig.add_histogram(x=p[y], name=f"{label} present ({int(y.sum()):,})", histnorm="percent", xbins=bins,
                      marker_color=color, opacity=0.75)
    fig.add_scatter(x=[threshold, threshold], y=[0, 1], yaxis="y2", mode="lines", name=f"threshold {threshold:.3f}",
                    line=dict(color=NEUTRAL, width=2, dash="dash"), hoverinfo="skip")
    fig.update_layout(barmode="overlay", title=f"{model}: predicted probability of {label}",
                      xaxis_title="predicted probability (positive when >= threshold)",
                      yaxis_title="% of the group's images", xaxis_range=[0, 1],
                      yaxis2=dict(overlaying="y", range=[0, 1], visible=False))
    return _layout(fig, height=330)


def calibration_figure(label: str, bins: Mapping[str, Sequence[ReliabilityBin]],
                       brier: Mapping[str, float]) -> go.Figure:
    """Reliability diagram: observed frequency against mean predicted probability per bin, per model."""
    color = CLASS_COLORS.get(label, NEUTRAL)
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                    line=dict(color=CHANCE_COLOR, dash="dot", width=1), hoverinfo="skip")
    total = {m: max(sum(b.count for b in bs), 1) for m, bs in bins.items()}
    for i, (model, model_bins) in enumerate(bins.items()):
        used = [b for b in model_bins if b.count]
        if not used:
            continue
        sizes = [8 + 22 * math.sqrt(b.count / total[model]) for b in used]
        fig.add_scatter(
            x=[b.mean_predicted for b in used], y=[b.observed for b in used], mode="lines+markers",
            name=f"{model} (Brier {brier.get(model, math.nan):.4f})",
            line=dict(color=color if label in CLASS_COLORS else NEUTRAL, dash=_style(i, MODEL_DASHES), width=2),
            marker=dict(size=sizes, symbol=_style(i, MODEL_SYMBOLS), line=dict(color="white", width=1)),
            customdata=[[b.low, b.high, b.count] for b in used],
            hovertemplate="bin [%{customdata[0]:.1f}, %{customdata[1]:.1f}): %{customdata[2]} images<br>"
                          "mean predicted %{x:.3f}<br>observed %{y:.3f}" + f"<extra>{model}</extra>")
    fig.update_xaxes(title="mean predicted probability in the bin", range=[-0.02, 1.02])
    fig.update_yaxes(title="observed share with the finding", range=[-0.03, 1.05])
    fig.update_layout(title=f"Reliability diagram: {label} (marker size = images in the bin)")
    return _layout(fig, height=480)
