"""Results page sections: prediction files as models, their evaluation on a split, and the comparison.

A "model" here is a set of per-image probabilities (`cxrcore.data.predictions.Predictions`) with a unique
name: a prediction CSV found on disk, an uploaded one, or (later) predictions a loaded model made.
`render_results(split, sources)` draws every section for any such dictionary of sources.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import streamlit as st

from cxrcore.audit.report import format_p
from cxrcore.data.dataset import Split, load_split, parse_split_spec
from cxrcore.data.labels import LABELS, canonical_label
from cxrcore.data.predictions import Aligned, Predictions, align, read_predictions
from cxrcore.errors import ConfigError, DatasetError, PredictionsError
from cxrcore.evaluate.delong import Comparison, compare_models
from cxrcore.evaluate.literature import CHEXNET, NOTE as LITERATURE_NOTE, WANG2017
from cxrcore.evaluate.metrics import (EvaluationResult, brier_score, ci_rule_text, evaluate, jsonable, pr_curve,
                             reliability_bins, roc_curve, threshold_metrics)
from cxrcore.export import csv_text
from cxrcore.fileio import MAX_JSON_BYTES, MAX_TABLE_BYTES, limit, open_for_reading, parse_json, read_file_bytes
from dashboard import results_charts as charts
from dashboard.charts import cached_figure
from dashboard.loaders import split_key
from dashboard.state import models_root, runs_root
from dashboard.widgets import section, show_warnings, teaching_note, user_errors

BOOTSTRAP_KEY = "results_bootstrap"
DEFAULT_BOOTSTRAP = 1000
MAX_BOOTSTRAP = 100_000
ALL_CLASSES = "All classes"
POOLED = "All classes (pooled)"
#: At most this many files found on disk are selected by default.
DEFAULT_SELECTED = 8
#: At most this many files are listed from disk (a models folder can hold many other things).
MAX_FOUND = 500
LITERATURE = (CHEXNET, WANG2017)
_IMAGE_KEYS = ("image", "imageindex", "imagename", "filename")


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# ---------------------------------------------------------------------------------------------
# Choosing the split and the prediction files


def default_split_name(names: list[str]) -> str:
    """The first split whose name starts with 'test', else the last one."""
    return next((n for n in names if n.lower().startswith("test")), names[-1])


def choose_split(splits: Mapping[str, Split]) -> Split:
    """Selector of the split that holds the labels; defaults to the test split."""
    names = list(splits)
    if st.session_state.get("results_split") not in names:
        st.session_state.pop("results_split", None)
    default = names.index(default_split_name(names))
    return splits[st.selectbox("Labels: the evaluated split", names, index=default, key="results_split",
                               help="The predictions must cover exactly the images of a split; against a "
                                    "whole-dataset table (NIH's Data_Entry_2017) the images with predictions "
                                    "are evaluated.")]


def _keep(uploader_key: str, kept_key: str) -> None:
    """on_change of an uploader: what it holds now is kept for the session (leaving the page empties the
    widget, not this copy); emptying the widget by hand forgets the files."""
    files = st.session_state.get(uploader_key) or []
    st.session_state[kept_key] = [(f.name, f.getvalue()) for f in files]


def kept_uploads(label: str, uploader_key: str, kept_key: str, types: list[str], help: str | None = None
                 ) -> list[tuple[str, bytes]]:
    """A multi-file uploader whose files stay for the session (st.session_state): (name, bytes) pairs."""
    current = st.file_uploader(label, type=types, accept_multiple_files=True, key=uploader_key,
                               on_change=_keep, args=(uploader_key, kept_key), help=help) or []
    if current:
        st.session_state[kept_key] = [(f.name, f.getvalue()) for f in current]
    kept = list(st.session_state.get(kept_key) or [])
    if kept and not current:  # back on the page: the widget is new, the files are not
        cols = st.columns([5, 1], vertical_alignment="center")
        cols[0].caption("Kept from earlier in this session: " + ", ".join(n for n, _ in kept))
        if cols[1].button("Forget", key=f"{kept_key}_forget", icon=":material/delete:"):
            st.session_state[kept_key] = []
            st.rerun()
    return kept


LABELS_KEPT = "results_labels_kept"
UPLOADS_KEPT = "results_uploads_kept"
UPLOADED_SUFFIX = " (uploaded)"


@st.cache_data(show_spinner="Reading the labels file...", max_entries=16)
def _uploaded_labels(content_hash: str, _files: tuple) -> list[Split]:
    from cxrcore.data.catalog import splits_from_files

    return splits_from_files(list(_files))


def uploaded_labels() -> dict[str, Split]:
    """Labels files uploaded on this page (a course CSV, NIH's table, or the table with list files),
    kept for the session; named '<split> (uploaded)'."""
    with st.expander("Labels of your own (when they are not a split of the active dataset)",
                     icon=":material/upload_file:"):
        files = kept_uploads("Labels file: course CSV, NIH Data_Entry table (.csv or .csv.gz), or the table with "
                             "list files (test_list.txt)", "results_labels_upload", LABELS_KEPT,
                             ["csv", "gz", "txt"])
    if not files:
        return {}
    out: dict[str, Split] = {}
    with user_errors("the uploaded labels"):
        key = digest(b"".join(n.encode() + d for n, d in files))
        for split in _uploaded_labels(key, tuple(files)):
            out[split.name + UPLOADED_SUFFIX] = split
    return out


def looks_like_predictions(path: Path) -> bool:
    """Cheap header check: an image column and at least one `<Label>` or `prob_<Label>` column."""
    try:
        with open_for_reading(path, error=PredictionsError, what="predictions file") as handle:
            first = handle.readline(65_536).decode("utf-8-sig", errors="replace")
    except (OSError, PredictionsError):  # unreadable, a pipe, a device: not offered
        return False
    try:
        header = next(csv.reader([first]), [])
    except csv.Error:
        return False
    keys = [_key(c) for c in header]
    if not any(k in _IMAGE_KEYS for k in keys):
        return False
    bare = [c.strip()[5:] if c.strip().lower().startswith("prob_") else c.strip() for c in header]
    return any(canonical_label(c) is not None for c in bare)


def find_prediction_files(models: Path, runs: Path) -> list[Path]:
    """Prediction CSVs anywhere under the models folder, and runs/<run>/predictions/*.csv."""
    found: list[Path] = []
    candidates: list[Path] = []
    if models.is_dir():
        candidates += sorted(p for p in models.rglob("*.csv")
                             if not any(part.startswith(".") for part in p.relative_to(models).parts))
    if runs.is_dir():
        candidates += sorted(runs.glob("*/predictions/*.csv"))
    for path in candidates[: MAX_FOUND * 4]:
        if path.is_file() and path not in found and looks_like_predictions(path):
            found.append(path)
        if len(found) >= MAX_FOUND:
            break
    return found


@st.cache_data(show_spinner=False, ttl=10)
def _found_files(models: str, runs: str) -> list[str]:
    return [str(p) for p in find_prediction_files(Path(models), Path(runs))]


def _stem(name: str) -> str:
    base = Path(name).name
    for suffix in (".csv.gz", ".csv", ".gz"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def unique_names(paths: Iterable[Path], roots: Iterable[Path] = (), taken: Iterable[str] = ()) -> dict[str, Path]:
    """Name each file by its stem; stems that repeat get their folder path (relative to a root) instead."""
    paths = list(paths)
    roots = [Path(r) for r in roots]
    stems = [_stem(p.name) for p in paths]
    out: dict[str, Path] = {}
    used = set(taken)
    for path, stem in zip(paths, stems):
        name = stem
        if stems.count(stem) > 1 or name in used:
            relative = next((path.relative_to(r) for r in roots if path.is_relative_to(r)), Path(path.name))
            parts = [p for p in relative.parent.parts if p != "predictions"]
            name = "/".join([*parts, stem])
        base, i = name, 2
        while name in used:
            name, i = f"{base}#{i}", i + 1
        used.add(name)
        out[name] = path
    return out


def digest(data: bytes) -> str:
    """Content hash used as a cache key."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@st.cache_data(show_spinner="Reading the prediction file...", max_entries=64)
def _read(content_hash: str, name: str, _data: bytes) -> Predictions:
    return read_predictions(_data, name=name)


def read_prediction_bytes(data: bytes, name: str) -> Predictions:
    """Read and validate prediction bytes, cached by their hash."""
    return _read(digest(data), name, data)


def sidecar_path(path: Path) -> Path | None:
    """`<file>.json` beside a prediction file (preds.csv.json, else preds.json), if there is one."""
    for candidate in (path.with_name(path.name + ".json"), path.with_name(_stem(path.name) + ".json")):
        if candidate.is_file():
            return candidate
    return None


def parse_sidecar(data: bytes | str, display: str, base: Path | None = None) -> dict:
    """The training metadata of a sidecar JSON; a relative `train_split` path is made absolute against `base`."""
    meta = parse_json(data, error=ConfigError, file=display, what="sidecar")
    if not isinstance(meta, dict):
        raise ConfigError("is not a JSON object.", file=display,
                          fix='write e.g. {"train_split": "train.csv"} or {"train_patients": [1, 2]}.')
    split = meta.get("train_split")
    if base is not None and isinstance(split, str) and split:
        name, file, list_file = parse_split_spec(split)
        resolved = file if Path(file).is_absolute() else str(base / file)
        if list_file is not None:
            resolved += "@" + (list_file if Path(list_file).is_absolute() else str(base / list_file))
        if (base / file).exists() or Path(file).is_absolute():
            meta["train_split"] = f"{name}={resolved}" if "=" in split else resolved
    meta["_source"] = display
    return meta


@st.cache_data(show_spinner="Loading the training split...", max_entries=16)
def _load_training_split(spec: str, stamp: float) -> Split:
    name, file, list_file = parse_split_spec(spec)
    if list_file is None:
        return load_split(file, split_name=name)
    return load_split(list_file, split_name=name, label_table=file)


def training_patients(metadata: Mapping | None, splits: Mapping[str, Split] | None = None) -> np.ndarray | None:
    """Patient ids the model was trained on, from `train_patients` and/or `train_split`; None when unknown.

    `train_split` is a labels file (FILE or TABLE@LIST) or the name of one of `splits` (the active dataset's).
    """
    if not metadata:
        return None
    display = str(metadata.get("_source") or "the model's metadata")
    ids: list[np.ndarray] = []
    raw = metadata.get("train_patients")
    if raw is not None:
        values = raw if isinstance(raw, (list, tuple)) else [raw]
        try:
            ids.append(np.asarray([int(v) for v in values if not isinstance(v, bool)], dtype=np.int64))
        except (TypeError, ValueError):
            raise ConfigError("'train_patients' must be a list of integer patient ids.", file=display,
                              fix="write e.g. [1, 2, 3], or give 'train_split' instead.") from None
    spec = metadata.get("train_split")
    if spec:
        if not isinstance(spec, str):
            raise ConfigError("'train_split' must be a string (a labels file or a split name).", file=display,
                              fix='write e.g. "train_split": "data/nih/train-small.csv".')
        if splits and spec in splits:
            ids.append(splits[spec].patients)
        else:
            _, file, _ = parse_split_spec(spec)
            if not Path(file).is_file():
                raise DatasetError(f"the training split '{spec}' was not found.", file=display,
                                   fix="give the path of the training labels file (relative to the JSON file), "
                                       "or the name of a split of the active dataset.")
            ids.append(_load_training_split(spec, Path(file).stat().st_mtime).patients)
    if not ids:
        return None
    return np.unique(np.concatenate(ids))


def training_overlap(split: Split, metadata: Mapping | None, splits: Mapping[str, Split] | None = None) -> int | None:
    """How many patients of the evaluated split the model was trained on (None: no training metadata).

    This is the leakage check of the Results page: any overlap means the AUROC may be inflated.
    """
    patients = training_patients(metadata, splits)
    if patients is None:
        return None
    return int(np.intersect1d(np.unique(split.patients), patients).size)


def choose_sources(taken: Iterable[str] = ()) -> tuple[dict[str, Predictions], dict[str, dict]]:
    """Prediction files from disk (multiselect) and uploads; returns valid sources and their training metadata.

    A file that cannot be read shows an st.error and is left out; the others still load.
    """
    models, runs = models_root(), runs_root()
    found = unique_names([Path(p) for p in _found_files(str(models), str(runs))], roots=[models, runs],
                         taken=taken)
    chosen: list[str] = []
    if found:
        chosen = st.multiselect(
            "Models: prediction files found on disk", list(found),
            # A run's own test predictions repeat its model (listed in the sidebar): not selected by default.
            default=[n for n, p in found.items() if runs not in p.parents][:DEFAULT_SELECTED],
            key="results_models",
            help=f"CSV files with an image column and prob_<Label> columns under {models} and "
                 f"{runs}/<run>/predictions/.")
    uploads = kept_uploads(
        "Upload prediction CSVs (and optional <file>.json sidecars with train_split / train_patients)",
        "results_uploads", UPLOADS_KEPT, ["csv", "json"],
        help="Kept for this session: they are still here when you come back from another page.")
    sources: dict[str, Predictions] = {}
    training: dict[str, dict] = {}
    for name in chosen:
        path = found[name]
        with user_errors(f"model '{name}'"):
            data = read_file_bytes(path, error=PredictionsError, what="predictions file",
                                   max_bytes=limit(*MAX_TABLE_BYTES), env=MAX_TABLE_BYTES[0])
            sources[name] = read_prediction_bytes(data, str(path))
        if name in sources:
            side = sidecar_path(path)
            if side is not None:
                with user_errors(f"model '{name}', training metadata"):
                    meta = read_file_bytes(side, error=ConfigError, what="sidecar", max_bytes=limit(*MAX_JSON_BYTES))
                    training[name] = parse_sidecar(meta, str(side), base=side.parent)
    jsons = {n: data for n, data in uploads if n.lower().endswith(".json")}
    csvs = [(n, data) for n, data in uploads if not n.lower().endswith(".json")]
    named = unique_names([Path(n) for n, _ in csvs], taken=[*taken, *sources])
    for name, (file_name, data) in zip(named, csvs):
        with user_errors(f"uploaded '{file_name}'"):
            sources[name] = read_prediction_bytes(data, file_name)
        side_name = next((n for n in (file_name + ".json", _stem(file_name) + ".json") if n in jsons), None)
        if name in sources and side_name is not None:
            with user_errors(f"uploaded '{side_name}'"):
                training[name] = parse_sidecar(jsons[side_name], side_name)
    return sources, training


# ---------------------------------------------------------------------------------------------
# Evaluating (cached)


@dataclass
class Evaluated:
    """One model's predictions joined to the split's labels and evaluated."""

    name: str
    predictions: Predictions
    aligned: Aligned
    result: EvaluationResult
    #: What the evaluation was computed from (predictions' content, split, bootstrap replicates).
    key: tuple = ()

    def column(self, label: str) -> tuple[np.ndarray, np.ndarray]:
        j = self.aligned.labels.index(label)
        return self.aligned.y[:, j], self.aligned.probs[:, j]

    def defined(self) -> list[str]:
        return [label for label, m in self.result.classes.items() if not math.isnan(m.auroc)]


def fingerprint(predictions: Predictions) -> str:
    """Content hash of parsed predictions (images, classes, probabilities): the evaluation's cache key."""
    h = hashlib.blake2b(digest_size=16)
    h.update("\n".join(map(str, predictions.images)).encode())
    h.update(",".join(predictions.labels).encode())
    h.update(np.ascontiguousarray(predictions.probs).tobytes())
    return h.hexdigest()


@st.cache_data(show_spinner=False, max_entries=64)
def _align(pred_key: str, labels_key: tuple, subset: bool, _predictions: Predictions, _split: Split) -> Aligned:
    return align(_predictions, _split, subset=subset)


def align_source(predictions: Predictions, split: Split, subset: bool) -> Aligned:
    """Join to the split: strict (every image predicted), or with `subset` the predicted images only."""
    return _align(fingerprint(predictions), split_key([split]), subset, predictions, split)


@st.cache_data(show_spinner="Evaluating: AUROC with patient-bootstrap intervals...", max_entries=64)
def _evaluate(pred_key: str, labels_key: tuple, images_key: str, n_bootstrap: int,
              _aligned: Aligned) -> EvaluationResult:
    a = _aligned
    return evaluate(a.y, a.probs, a.labels, a.patient_ids, n_bootstrap=n_bootstrap, seed=0)


def images_key(aligned: Aligned) -> str:
    """Identifies the evaluated images (all of the split, or the part every model covers)."""
    return digest("\n".join(map(str, aligned.images)).encode())


def evaluate_source(name: str, predictions: Predictions, split: Split, n_bootstrap: int,
                    aligned: Aligned | None = None) -> Evaluated:
    """Evaluate `aligned` (default: the strict join to the split); cached by content, split and images."""
    aligned = aligned if aligned is not None else align_source(predictions, split, False)
    key = (fingerprint(predictions), split_key([split]), images_key(aligned), n_bootstrap)
    return Evaluated(name, predictions, aligned, _evaluate(*key, aligned), key)


def join_sources(split: Split, sources: Mapping[str, Predictions], partial: Iterable[str] = ()
                 ) -> tuple[dict[str, Aligned], str | None]:
    """Each source joined to the split, then restricted to the images all of them cover; with the
    sentence saying so when that is fewer than the split holds.

    Strict joins, except against a whole-dataset table (predictions made elsewhere for one split of
    it) and for the `partial` sources (models that predicted only the images on disk)."""
    from cxrcore.data.dataset import is_dataset_table
    from cxrcore.data.predictions import common_images, coverage_line

    whole = is_dataset_table(split)
    partial = set(partial)
    aligned: dict[str, Aligned] = {}
    for name, predictions in sources.items():
        with user_errors(f"model '{name}' on {split.name}"):
            aligned[name] = align_source(predictions, split, whole or name in partial)
    if not aligned:
        return {}, None
    with user_errors(f"the images the models share on {split.name}"):
        joined = dict(zip(aligned, common_images(list(aligned.values()))))
        first = next(iter(joined.values()))
        if not first.is_subset:
            return joined, None
        what = "those in the predictions file" if len(joined) == 1 else "those every model predicted"
        return joined, coverage_line(len(first), first.n_labelled, what)
    return {}, None


def evaluated_key(evaluated: Mapping[str, Evaluated]) -> tuple:
    """Identifies a set of evaluated models (names and contents): the key of the figures drawn from them."""
    return tuple((name, e.key) for name, e in evaluated.items())


@st.cache_data(show_spinner="DeLong tests...", max_entries=32)
def _compare(keys: tuple, labels_key: tuple, labels: tuple, reference: int, n_bootstrap: int, _y: np.ndarray,
             _probs: list, _patients: np.ndarray) -> Comparison:
    names = [k[0] for k in keys]
    return compare_models(_y, _probs, list(labels), names, reference, patient_ids=_patients,
                          n_bootstrap=n_bootstrap, seed=0)


def common_labels(evaluated: Mapping[str, Evaluated]) -> list[str]:
    """Classes every model predicts, in LABELS order."""
    return [label for label in LABELS if all(label in e.aligned.labels for e in evaluated.values())]


def comparison(evaluated: Mapping[str, Evaluated], split: Split, reference: str, n_bootstrap: int) -> Comparison:
    """DeLong comparison of every model against `reference` on the classes they share (cached)."""
    names = list(evaluated)
    labels = common_labels(evaluated)
    first = evaluated[names[0]]
    y = first.aligned.y[:, [first.aligned.labels.index(label) for label in labels]]
    probs = [e.aligned.probs[:, [e.aligned.labels.index(label) for label in labels]] for e in evaluated.values()]
    keys = tuple((name, fingerprint(e.predictions), images_key(e.aligned)) for name, e in evaluated.items())
    return _compare(keys, split_key([split]), tuple(labels), names.index(reference), n_bootstrap, y, probs,
                    first.aligned.patient_ids)


# ---------------------------------------------------------------------------------------------
# Tables


def summary_table(evaluated: Mapping[str, Evaluated], overlaps: Mapping[str, int | None]) -> pd.DataFrame:
    """One row per model: images, patients, classes, mean AUROC with its interval, training overlap."""
    rows = []
    for name, e in evaluated.items():
        r = e.result
        overlap = overlaps.get(name)
        rows.append({"model": name, "file": Path(e.predictions.file).name, "images": r.n_images,
                     "patients": r.n_patients, "classes": len(r.mean_auroc_classes), "mean AUROC": r.mean_auroc,
                     "95% CI low": r.mean_auroc_ci_low, "95% CI high": r.mean_auroc_ci_high,
                     "patients seen in training": "unknown" if overlap is None else str(overlap)})
    return pd.DataFrame(rows)


def metrics_table(evaluated: Mapping[str, Evaluated]) -> pd.DataFrame:
    """Tidy per-model, per-class metrics with a 'mean' row per model: the CSV download."""
    rows = []
    for name, e in evaluated.items():
        for label, m in e.result.classes.items():
            rows.append({"model": name, "label": label, "n_pos": m.n_pos, "n_neg": m.n_neg,
                         "prevalence": m.prevalence, "auroc": m.auroc, "ci_low": m.ci_low, "ci_high": m.ci_high,
                         "auprc": m.auprc, "youden_threshold": m.threshold, "sensitivity": m.sensitivity,
                         "specificity": m.specificity, "sens_at_spec90": m.sens_at_spec90, "brier": m.brier,
                         "ece": m.ece, "note": m.note or ""})
        r = e.result
        rows.append({"model": name, "label": "mean", "auroc": r.mean_auroc, "ci_low": r.mean_auroc_ci_low,
                     "ci_high": r.mean_auroc_ci_high,
                     "note": f"mean over {len(r.mean_auroc_classes)} classes; "
                             f"{r.n_bootstrap} patient-bootstrap replicates"})
    return pd.DataFrame(rows)


def _auroc_ci_text(auroc: float, low: float, high: float) -> str:
    if math.isnan(auroc):
        return "n/a"
    return f"{auroc:.3f}" + ("" if math.isnan(low) or math.isnan(high) else f"  [{low:.3f}, {high:.3f}]")


def auroc_table(evaluated: Mapping[str, Evaluated], split: Split) -> pd.DataFrame:
    """Display table: one row per class (and the mean), one 'AUROC [95% CI]' column per model."""
    labels = [label for label in LABELS if any(label in e.result.classes for e in evaluated.values())]
    counts = dict(zip(LABELS, split.labels.sum(axis=0).tolist()))
    rows = []
    for label in labels:
        row: dict[str, object] = {"class": label, "positives": str(int(counts[label]))}
        for name, e in evaluated.items():
            m = e.result.classes.get(label)
            row[name] = _auroc_ci_text(m.auroc, m.ci_low, m.ci_high) if m else "not predicted"
        rows.append(row)
    mean: dict[str, object] = {"class": "Mean AUROC", "positives": ""}
    for name, e in evaluated.items():
        r = e.result
        mean[name] = _auroc_ci_text(r.mean_auroc, r.mean_auroc_ci_low, r.mean_auroc_ci_high)
    rows.append(mean)
    return pd.DataFrame(rows)


_p = format_p  # one p-value format on every page and report


def delong_table(comp: Comparison) -> pd.DataFrame:
    """One row per (model, class): AUROCs, delta vs the reference with its CIs, p and Holm-adjusted p."""
    rows = []
    for pair in comp.pairs:
        for label in comp.labels:
            t = pair.classes[label]
            holm = pair.p_holm[label]
            row = {"model": pair.model, "class": label, "AUROC reference": t.auc_reference,
                   "AUROC model": t.auc_model, "delta": t.delta,
                   "95% CI (DeLong)": "-" if math.isnan(t.ci_low) else f"[{t.ci_low:+.3f}, {t.ci_high:+.3f}]"}
            if pair.bootstrap_ci:
                low, high = pair.bootstrap_ci[label]
                row["95% CI (patient bootstrap)"] = "-" if math.isnan(low) else f"[{low:+.3f}, {high:+.3f}]"
            row.update({"p": _p(t.p_value), "Holm p": _p(holm),
                        "Holm p < 0.05": bool(not math.isnan(holm) and holm < 0.05), "note": t.note or ""})
            rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty and not table["note"].astype(bool).any():
        table = table.drop(columns="note")
    return table


def mean_difference_table(comp: Comparison) -> pd.DataFrame:
    """One row per model: difference of mean AUROC to the reference, bootstrap CI and p (or why none)."""
    rows = []
    for pair in comp.pairs:
        m = pair.mean
        rows.append({"model": pair.model, "classes": len(m.classes), "Δ mean AUROC": f"{m.delta:+.3f}"
                     if not math.isnan(m.delta) else "-",
                     "95% CI (patient bootstrap)": "-" if math.isnan(m.ci_low) else f"[{m.ci_low:+.3f}, {m.ci_high:+.3f}]",
                     "p (bootstrap)": m.p_text(), "note": m.note or ""})
    table = pd.DataFrame(rows)
    if not table.empty and not table["note"].astype(bool).any():
        table = table.drop(columns="note")
    return table


def evaluation_json(split: Split, evaluated: Mapping[str, Evaluated], comp: Comparison | None,
                    overlaps: Mapping[str, int | None], n_bootstrap: int) -> str:
    """The whole evaluation as JSON: split, every model's metrics, the DeLong comparison, literature note."""
    out = {
        "split": {"name": split.name, "source": split.source, "images": len(split),
                  "patients": int(np.unique(split.patients).size),
                  "evaluated_images": len(next(iter(evaluated.values())).aligned) if evaluated else 0},
        "bootstrap": {"replicates": n_bootstrap, "resample": "patient", "seed": 0},
        "models": {name: {"file": e.predictions.file, "training_patients_in_split": overlaps.get(name),
                          **e.result.to_dict()} for name, e in evaluated.items()},
        "comparison": comp.to_dict() if comp is not None else None,
        "literature": {"note": LITERATURE_NOTE,
                       "results": [{"name": p.name, "citation": p.citation, "aurocs": p.aurocs} for p in LITERATURE]},
    }
    return json.dumps(jsonable(out), indent=2, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# Sections


def bootstrap_replicates() -> int:
    """Number input for the bootstrap replicates (0 = no intervals)."""
    st.session_state.setdefault(BOOTSTRAP_KEY, DEFAULT_BOOTSTRAP)
    return int(st.number_input(
        "Bootstrap replicates (patients resampled; 0 = no confidence intervals)", min_value=0,
        max_value=MAX_BOOTSTRAP, step=100, key=BOOTSTRAP_KEY,
        help="Each replicate draws the split's patients with replacement, keeping all their images."))


def render_leakage(split: Split, names: Iterable[str], training: Mapping[str, Mapping],
                   splits: Mapping[str, Split] | None) -> dict[str, int | None]:
    """Warn for each model trained on patients of the evaluated split; returns the overlap per model."""
    overlaps: dict[str, int | None] = {}
    for name in names:
        overlaps[name] = None
        with user_errors(f"model '{name}', training data check"):
            overlaps[name] = training_overlap(split, training.get(name), splits)
        if overlaps[name]:
            st.warning(f"{name}: the evaluated split shares {overlaps[name]} patients with this model's training "
                       "data: its AUROC is no measure of how the model does on new patients, and may be "
                       "inflated. Evaluate it on a split of new patients.", icon=":material/warning:")
    return overlaps


def render_auroc_table(split: Split, evaluated: Mapping[str, Evaluated], overlaps: Mapping[str, int | None],
                       n_bootstrap: int) -> None:
    st.subheader("AUROC")
    summary = summary_table(evaluated, overlaps)
    st.dataframe(summary, hide_index=True, width="stretch", column_config={
        c: st.column_config.NumberColumn(format="%.3f") for c in ("mean AUROC", "95% CI low", "95% CI high")})
    table = auroc_table(evaluated, split)
    st.dataframe(table, hide_index=True, width="stretch", height=35 * (len(table) + 1) + 3,
                 column_config={name: st.column_config.TextColumn(f"{name}: AUROC [95% CI]") for name in evaluated})
    undefined = sorted({n for e in evaluated.values() for n in e.result.notes})
    for note in undefined:
        st.caption(note)
    if n_bootstrap:
        short = sorted({label for e in evaluated.values() for label, m in e.result.classes.items()
                        if 0 < m.bootstrap_used < n_bootstrap and not math.isnan(m.ci_low)})
        if short:
            st.caption("Some replicates drew no positive (or no negative) image and were left out of the interval "
                       "of: " + ", ".join(short) + ". Few positives: read those intervals with care.")
        no_ci = sorted({f"{label}: {m.note}" for e in evaluated.values() for label, m in e.result.classes.items()
                        if m.note and m.note.startswith("no CI") and not math.isnan(m.auroc)})
        if no_ci:
            st.caption("No interval where the bootstrap cannot give one (" + ci_rule_text() + "): "
                       + "; ".join(no_ci[:6]) + (f"; and {len(no_ci) - 6} more." if len(no_ci) > 6 else ""))
    first = next(iter(evaluated.values())).aligned
    st.caption(f"95% CI: percentile interval of {n_bootstrap} bootstrap replicates that resample patients "
               f"(seed 0). Evaluated: {len(first):,} images of {np.unique(first.patient_ids).size:,} patients "
               f"({split.name} holds {len(split):,})."
               if n_bootstrap else "No bootstrap replicates: no confidence intervals.")
    teaching_note("what AUROC means",
                  "The AUROC is the probability that the model gives a randomly chosen image **with** the "
                  "finding a higher score than a randomly chosen image **without** it (ties count half). "
                  "0.5 is chance, 1.0 a perfect ranking. It does not depend on a threshold or on how rare "
                  "the finding is, which is why it is the usual headline number for ChestX-ray14; it says "
                  "nothing about calibration or about which threshold to use.",
                  [r"\mathrm{AUROC} = P\big(\hat p(x^+) > \hat p(x^-)\big)"
                   r" + \tfrac12 P\big(\hat p(x^+) = \hat p(x^-)\big)"])
    teaching_note("why the interval resamples patients",
                  "NIH patients contribute several images each, and images of one patient are alike. "
                  "Resampling single images would treat them as independent and make the interval too "
                  "narrow. The bootstrap here draws **patients** with replacement and keeps all of a drawn "
                  "patient's images, recomputes the AUROC, and reports the 2.5th and 97.5th percentiles. "
                  "Classes with few positives get wide intervals: read them before comparing numbers.")


@section("the AUROC chart")
def render_auroc_bars(evaluated: Mapping[str, Evaluated], literature_default: bool = True) -> None:
    labels = [label for label in LABELS if any(label in e.result.classes for e in evaluated.values())]
    values = {name: {label: (m.auroc, m.ci_low, m.ci_high) for label, m in e.result.classes.items()}
              for name, e in evaluated.items()}
    show = st.toggle("Show published AUROCs (CheXNet, Wang et al. 2017)", value=literature_default,
                     key="results_literature",
                     help="Published results on NIH ChestX-ray14: on by default for NIH data, off over the "
                          "synthetic demo set, where they mean nothing.")
    figure = cached_figure("auroc_bars", (evaluated_key(evaluated), show), lambda: charts.auroc_bars(
        labels, list(evaluated), values, LITERATURE if show else ()))
    st.plotly_chart(figure, width="stretch", key="results_bars")
    if show:
        st.caption("Markers: published per-class AUROCs (CheXNet's Table 1), **measured on other test sets**, "
                   "not on this split; they are context, not a comparison.")
    teaching_note("why published numbers are not comparable", LITERATURE_NOTE + " The papers also used other "
                  "label versions, image sizes and training sets, and a split with other patients has other "
                  "hard cases. Compare your own models on the same images (the DeLong table below), never "
                  "against a paper's number.")


@section("the curves")
def render_curves(evaluated: Mapping[str, Evaluated]) -> None:
    st.subheader("ROC and precision-recall curves")
    names = list(evaluated)
    labels = [label for label in LABELS if any(label in e.defined() for e in evaluated.values())]
    if not labels:
        st.info("No class has both positive and negative images in this split: there are no curves to draw.")
        return
    choice = st.selectbox("Class", [ALL_CLASSES, *labels], key="results_curve_class",
                          help="All classes as small multiples, or one class with its Youden points.")
    # all classes: two tall grids, one per tab; one class: ROC and PR side by side
    roc_tab, pr_tab = st.tabs(["ROC", "Precision-recall"]) if choice == ALL_CLASSES else st.columns(2)
    shown = labels if choice == ALL_CLASSES else [choice]
    aurocs = {n: {label: m.auroc for label, m in e.result.classes.items()} for n, e in evaluated.items()}
    auprcs = {n: {label: m.auprc for label, m in e.result.classes.items()} for n, e in evaluated.items()}

    # The curves are computed inside the builders: only when a figure is not cached yet.
    def rocs() -> dict:
        return {label: {n: roc_curve(*e.column(label)) for n, e in evaluated.items() if label in e.defined()}
                for label in shown}

    def prs() -> dict:
        return {label: {n: pr_curve(*e.column(label)) for n, e in evaluated.items() if label in e.defined()}
                for label in shown}

    def prevalence() -> dict[str, float]:
        owners = {label: next(e for e in evaluated.values() if label in e.aligned.labels) for label in shown}
        return {label: float(np.mean(owner.column(label)[0])) for label, owner in owners.items()}

    key = (evaluated_key(evaluated), choice)
    with roc_tab:
        if choice == ALL_CLASSES:
            figure = cached_figure("roc_grid", key, lambda: charts.roc_grid(rocs(), aurocs, names))
        else:
            points = {}
            for n, e in evaluated.items():
                m = e.result.classes.get(choice)
                if m is not None and not math.isnan(m.threshold):
                    points[n] = (1.0 - m.specificity, m.sensitivity, m.threshold)
            figure = cached_figure("roc_class", key, lambda: charts.roc_figure(
                choice, rocs()[choice], {n: aurocs[n].get(choice, math.nan) for n in names}, points))
        st.plotly_chart(figure, width="stretch", key="results_roc")
    with pr_tab:
        if choice == ALL_CLASSES:
            figure = cached_figure("pr_grid", key, lambda: charts.pr_grid(prs(), auprcs, prevalence(), names))
        else:
            figure = cached_figure("pr_class", key, lambda: charts.pr_figure(
                choice, prs()[choice], {n: auprcs[n].get(choice, math.nan) for n in names}, prevalence()[choice]))
        st.plotly_chart(figure, width="stretch", key="results_pr")
    skipped = [label for label in LABELS if label not in labels
               and any(label in e.aligned.labels for e in evaluated.values())]
    if skipped:
        st.caption("No curve for " + ", ".join(skipped) + ": no positive or no negative image in this split.")


def render_delong(split: Split, evaluated: Mapping[str, Evaluated], n_bootstrap: int) -> Comparison | None:
    st.subheader("Paired comparison (DeLong)")
    if len(evaluated) < 2:
        st.info("Choose two or more models to compare them on the same images.")
        return None
    names = list(evaluated)
    if not common_labels(evaluated):
        st.warning("The models share no class column, so they cannot be compared.")
        return None
    reference = st.selectbox("Reference model", names, key="results_reference")
    comp = comparison(evaluated, split, reference, n_bootstrap)
    table = delong_table(comp)
    config = {
        "AUROC reference": st.column_config.NumberColumn("AUROC ref.", format="%.3f",
                                                         help=f"AUROC of the reference model, {reference}"),
        "AUROC model": st.column_config.NumberColumn(format="%.3f"),
        "delta": st.column_config.NumberColumn("Δ AUROC", format="%+.3f", help="model - reference"),
        "95% CI (DeLong)": st.column_config.TextColumn("Δ 95% CI, DeLong"),
        "95% CI (patient bootstrap)": st.column_config.TextColumn(
            "Δ 95% CI, bootstrap", help="Percentile interval of the difference over bootstrap replicates that "
                                        "resample patients (the same patients for both models)."),
        "Holm p": st.column_config.TextColumn(help="p adjusted for the number of classes tested (Holm)."),
        "Holm p < 0.05": st.column_config.CheckboxColumn("significant", help="Holm-adjusted p < 0.05")}
    models = [pair.model for pair in comp.pairs]
    places = st.tabs([f"{m} vs {reference}" for m in models]) if len(models) > 1 else [st.container()]
    for model, place in zip(models, places):
        part = table[table["model"] == model].drop(columns="model")
        with place:
            st.markdown(f"**{model}** vs **{reference}** (reference)")
            st.caption(f"AUROC ref. = {reference}; AUROC model = {model}.")
            st.dataframe(part, hide_index=True, width="stretch", height=35 * (len(part) + 1) + 3,
                         column_config=config)
    st.markdown("**Mean AUROC**, model - reference, with a paired patient bootstrap (the same resampled "
                "patients for both models):")
    st.dataframe(mean_difference_table(comp), hide_index=True, width="stretch")
    st.caption(f"Δ = model - reference ({reference}) on the same {comp.n_images:,} images; p: DeLong's paired "
               f"two-sided test; Holm p: adjusted across the {len(comp.labels)} classes of each model.")
    for note in comp.notes:
        st.caption(note)
    teaching_note("what DeLong's test checks",
                  "Both models scored the same images, so their AUROCs are correlated: comparing two "
                  "separate confidence intervals would be too conservative. DeLong's method estimates the "
                  "variance of the **difference** of the two AUROCs from each image's contribution to both "
                  "(its 'structural components') and gives a z test of 'no difference'. Fourteen classes "
                  "mean fourteen tests, so the p-values are Holm-adjusted: a class counts as different only "
                  "when its Holm p is below 0.05. DeLong treats images as independent; the patient-bootstrap "
                  "interval of the difference is the check that respects patients.",
                  [r"z = \frac{\widehat{\mathrm{AUC}}_B - \widehat{\mathrm{AUC}}_A}"
                   r"{\sqrt{\mathrm{Var}_A + \mathrm{Var}_B - 2\,\mathrm{Cov}_{AB}}}"])
    return comp


def _default_threshold(e: Evaluated, label: str) -> float:
    m = e.result.classes[label]
    if math.isnan(m.threshold):
        return 0.5
    return min(1.0, max(0.0, math.floor(m.threshold * 1000) / 1000))


@section("the threshold explorer")
def render_threshold_explorer(evaluated: Mapping[str, Evaluated]) -> None:
    st.subheader("Threshold explorer")
    left, right = st.columns(2)
    name = left.selectbox("Model", list(evaluated), key="results_threshold_model")
    e = evaluated[name]
    labels = list(e.aligned.labels)
    defined = e.defined()
    default = labels.index("Cardiomegaly") if "Cardiomegaly" in defined else \
        labels.index(defined[0]) if defined else 0
    label = right.selectbox("Class", labels, index=default, key="results_threshold_class")
    m = e.result.classes[label]
    threshold = st.slider(f"Threshold: {label} is called positive when p >= threshold", 0.0, 1.0,
                          _default_threshold(e, label), 0.001, format="%.3f",
                          key=f"results_threshold|{name}|{label}",
                          help="Starts at the class's Youden point (the threshold maximising sensitivity + "
                               "specificity - 1).")
    y, p = e.column(label)
    tm = threshold_metrics(y, p, threshold)
    if math.isnan(m.threshold):
        st.caption(f"{label} has no {'positive' if m.n_pos == 0 else 'negative'} image in this split: "
                   "no Youden point, default 0.5.")
    else:
        st.caption(f"Youden point of {name} for {label}: threshold {m.threshold:.4f} (sensitivity "
                   f"{m.sensitivity:.3f}, specificity {m.specificity:.3f}).")
    chart, numbers = st.columns([3, 2])
    key = (e.key, name, label, threshold)
    chart.plotly_chart(cached_figure("confusion", key, lambda: charts.confusion_figure(tm, label)), width="stretch",
                       key="results_confusion")
    with numbers:
        a, b = st.columns(2)
        a.metric("Sensitivity", _pct(tm.sensitivity), help="TP / (TP + FN): share of positives found.")
        b.metric("Specificity", _pct(tm.specificity), help="TN / (TN + FP): share of negatives cleared.")
        a.metric("PPV", _pct(tm.ppv), help="TP / (TP + FP): share of alarms that are right (depends on prevalence).")
        b.metric("NPV", _pct(tm.npv), help="TN / (TN + FN): share of all-clears that are right.")
        st.caption(f"{tm.tp + tm.fn:,} images with {label}, {tm.tn + tm.fp:,} without; "
                   f"prevalence {m.prevalence:.1%}.")
    st.plotly_chart(cached_figure("scores", key, lambda: charts.score_histogram(label, y, p, threshold, name)),
                    width="stretch", key="results_scores")
    teaching_note("choosing a threshold",
                  "AUROC summarises every threshold; a deployed model needs one. Lowering the threshold "
                  "finds more positives (sensitivity up) and raises more false alarms (specificity down). "
                  "PPV and NPV also depend on how common the finding is: with a rare finding most alarms are "
                  "false even at high specificity.")


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1%}"


@section("the calibration chart")
def render_calibration(evaluated: Mapping[str, Evaluated]) -> None:
    st.subheader("Calibration")
    labels = [label for label in LABELS if any(label in e.aligned.labels for e in evaluated.values())]
    label = st.selectbox("Class", [POOLED, *labels], index=1 + labels.index("Cardiomegaly")
                         if "Cardiomegaly" in labels else 0, key="results_calibration_class")

    def build():
        bins, brier = {}, {}
        for name, e in evaluated.items():
            if label == POOLED:
                y, p = e.aligned.y.ravel(), e.aligned.probs.ravel()
                bins[name], brier[name] = reliability_bins(y, p), brier_score(y, p)
            elif label in e.result.classes:
                m = e.result.classes[label]
                bins[name], brier[name] = m.reliability, m.brier
        return charts.calibration_figure(label, bins, brier)

    st.plotly_chart(cached_figure("calibration", (evaluated_key(evaluated), label), build), width="stretch",
                    key="results_calibration")
    st.caption("Brier score (in the legend): the mean of (p − y)² over the images; lower is better, and a model "
               "answering 0.5 for every image scores 0.25.")
    teaching_note("calibration",
                  "A calibrated model's 0.3 means 'about 30 % of such images have the finding'. Points above "
                  "the diagonal: the model under-estimates; below: it over-estimates. Weighted losses (as in "
                  "the course) push probabilities up for rare classes on purpose, so a good AUROC with poor "
                  "calibration is expected there.")


def render_downloads(split: Split, evaluated: Mapping[str, Evaluated], comp: Comparison | None,
                     overlaps: Mapping[str, int | None], n_bootstrap: int) -> None:
    st.subheader("Downloads")
    a, b = st.columns(2)
    a.download_button("AUROC table (CSV)", csv_text(metrics_table(evaluated)).encode(),
                      file_name=f"auroc_{split.name}.csv", mime="text/csv", key="results_dl_csv",
                      icon=":material/download:")
    b.download_button("Evaluation (JSON)", evaluation_json(split, evaluated, comp, overlaps, n_bootstrap),
                      file_name=f"evaluation_{split.name}.json", mime="application/json", key="results_dl_json",
                      icon=":material/download:")
    st.caption("Each chart saves itself as PNG with the camera button of its toolbar (hover over the chart).")


def render_results(split: Split, sources: Mapping[str, Predictions], *, training: Mapping[str, Mapping] | None = None,
                   splits: Mapping[str, Split] | None = None, partial: Iterable[str] = (),
                   literature_default: bool = True) -> dict[str, Evaluated]:
    """Every section for `sources` (model name -> predictions) evaluated on `split`; returns the evaluations.

    `training` maps a model name to its training metadata (`train_split` and/or `train_patients`) for
    the leakage check; `splits` lets `train_split` name a split of the active dataset; `partial` names
    sources that cover only part of the split by design (the images on disk); `literature_default`:
    whether the published AUROCs start shown (on for NIH data, off over the synthetic demo).
    """
    if not sources:
        return {}
    n_bootstrap = bootstrap_replicates()
    joined, coverage = join_sources(split, sources, partial)
    if coverage:
        st.info(f"{coverage} (labels: {split.name}).", icon=":material/filter_alt:")
    evaluated: dict[str, Evaluated] = {}
    for name, aligned in joined.items():
        with user_errors(f"model '{name}' on {split.name}"):
            evaluated[name] = evaluate_source(name, sources[name], split, n_bootstrap, aligned)
    show_warnings([w for p in sources.values() for w in p.warnings])
    if not evaluated:
        st.info(f"No model could be evaluated on {split.name}; see the errors above.")
        return {}
    overlaps = render_leakage(split, evaluated, training or {}, splits)
    render_auroc_table(split, evaluated, overlaps, n_bootstrap)
    render_auroc_bars(evaluated, literature_default)
    render_curves(evaluated)
    comp = render_delong(split, evaluated, n_bootstrap)
    render_threshold_explorer(evaluated)
    render_calibration(evaluated)
    render_downloads(split, evaluated, comp, overlaps, n_bootstrap)
    return evaluated


def labels_choices(dataset) -> dict[str, Split]:
    """The splits that can hold the labels: the active dataset's, then labels files uploaded here."""
    splits = dict(dataset.splits) if dataset is not None and dataset.splits else {}
    return {**splits, **uploaded_labels()}


def is_dataset_split(split: Split, dataset) -> bool:
    """True when `split` is one of the active dataset's (its models can predict it from the image folder)."""
    return dataset is not None and any(s is split for s in (dataset.splits or {}).values())


def literature_default(split: Split, dataset) -> bool:
    """Published NIH AUROCs start shown for NIH data, hidden over the synthetic demo set."""
    from cxrcore.data.catalog import DATA_SYNTHETIC

    entry = getattr(dataset, "entry", None)
    return not (is_dataset_split(split, dataset) and entry is not None and entry.kind == DATA_SYNTHETIC)


def render_guidance(models_failed: bool = False) -> None:
    """What to do when there is no prediction file at all (or the chosen models could not predict)."""
    if models_failed:
        st.info("The chosen model could not predict this split (see the message above), and no prediction file "
                "was added. Fix the cause, or upload prediction files above.", icon=":material/info:")
        return
    st.info(f"No model to evaluate yet. Put prediction CSV files with an `Image` column and one `prob_<Label>` "
            f"column per class (e.g. `prob_Cardiomegaly`) under **{models_root()}** (any subfolder) or "
            f"**{runs_root()}/<run>/predictions/**, or upload them above. Each file is one model, named by its "
            "file name; it must cover exactly the images of the chosen split.", icon=":material/info:")
    st.caption("A prediction file looks like: `Image,prob_Atelectasis,prob_Cardiomegaly,...` then one row per "
               "image, e.g. `00000013_005.png,0.12,0.87,...` (probabilities between 0 and 1).")
