"""Prediction files: read and validate per-image class probabilities, join them to labels, write them.

Format: a CSV with an image column (`Image` or `Image Index`) and one column per class, named
`<Label>` or `prob_<Label>` (any spelling `canonical_label` accepts). Any subset of the 14 classes is
allowed (at least one). The canonical writer emits `Image` then `prob_<Label>` for each class in
LABELS order. Image names are matched by file name: a directory part ("images/x.png") is dropped.

Matching rule (documented choice): the predictions must cover exactly the images of the labels file.
A prediction for an image that is not in the labels is an error (it usually means the wrong split),
and so is a labelled image without a prediction (a silently smaller test set changes the result).
One exception: when the labels are a whole-dataset table (`dataset.is_dataset_table`, e.g. NIH's
Data_Entry_2017 table), predictions made elsewhere for one split of it are evaluated on the images
they cover (`align(..., subset=True)`), and `coverage_line` says so.
"""
from __future__ import annotations

import csv
import difflib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cxrcore.data.labels import LABELS, canonical_label
from cxrcore.errors import DataWarning, PredictionsError
from cxrcore.export import FORMULA_START, neutralize_cell
from cxrcore.fileio import make_temp, read_table_bytes

IMAGE = "Image"
PROB_PREFIX = "prob_"
_IMAGE_KEYS = ("image", "imageindex", "imagename", "filename")
_EXAMPLES = 3


def _key(name: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


@dataclass
class Predictions:
    """Validated probabilities of one prediction file: one row per image, one column per class."""

    images: np.ndarray          # (n,) object array of file names
    probs: np.ndarray           # (n, k) float64 in [0, 1]
    labels: tuple[str, ...]     # canonical class names of the k columns, in LABELS order
    file: str
    lines: np.ndarray           # (n,) line number of each row in the file
    warnings: list[DataWarning] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class Aligned:
    """Labels and predictions of the same images in the same order, ready for metrics."""

    images: np.ndarray       # (n,)
    patient_ids: np.ndarray  # (n,) int64
    y: np.ndarray            # (n, k) uint8
    probs: np.ndarray        # (n, k) float64
    labels: tuple[str, ...]
    #: Images of the labels file (more than n when only the predicted images of a whole table were kept).
    n_labelled: int | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def is_subset(self) -> bool:
        """True when fewer images than the labels file holds are evaluated."""
        return self.n_labelled is not None and self.n_labelled > len(self)

    def take(self, rows: np.ndarray) -> "Aligned":
        """The same join restricted to `rows` (positions), keeping the labelled count."""
        return Aligned(images=self.images[rows], patient_ids=self.patient_ids[rows], y=self.y[rows],
                       probs=self.probs[rows], labels=self.labels,
                       n_labelled=self.n_labelled if self.n_labelled is not None else len(self))


# ---------------------------------------------------------------------------------------------
# Reading


def _read_text(source: str | Path | bytes, display: str) -> str:
    if not isinstance(source, (bytes, bytearray)):
        path = Path(source)
        if not path.exists():
            raise PredictionsError("file not found.", file=display, fix="check the path of the predictions file.")
        if path.is_dir():
            raise PredictionsError("is a folder, not a predictions file.", file=display,
                                   fix="point at the .csv file inside it.")
    data = read_table_bytes(source, error=PredictionsError, file=display, what="predictions file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise PredictionsError(f"is not UTF-8 text (byte {err.start}).", file=display,
                               fix="save the predictions as UTF-8 CSV.") from None
    if "\x00" in text[:4096]:
        raise PredictionsError("looks like a binary file, not CSV text.", file=display,
                               fix="choose the .csv predictions file.")
    return text


def _rows(text: str, display: str) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, data rows and the file line number of each data row (blank lines skipped)."""
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                continue
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as err:
        raise PredictionsError(f"is not valid CSV ({err}).", file=display, rows=[reader.line_num],
                               fix="check quoting and commas.") from None
    if header is None:
        raise PredictionsError("the file is empty.", file=display,
                               fix="write a header (Image, prob_<Label>...) and one row per image.")
    if len(header) < 2 and header and any(sep in header[0] for sep in (";", "\t", "|")):
        raise PredictionsError("columns are not separated by commas.", file=display, rows=[1],
                               fix="save it as comma-separated CSV.")
    if not rows:
        raise PredictionsError("has a header but no rows.", file=display, fix="add one row per image.")
    width = len(header)
    bad = [line for row, line in zip(rows, lines) if len(row) != width]
    if bad:
        raise PredictionsError(f"some rows do not have {width} fields like the header.", file=display, rows=bad,
                               fix="check for missing or extra commas.")
    return header, rows, lines


def _close(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _image_column(header: list[str], display: str) -> int:
    for i, column in enumerate(header):
        if _key(column) in _IMAGE_KEYS:
            return i
    guess = difflib.get_close_matches("Image", header, n=1, cutoff=0.5) or \
        difflib.get_close_matches("Image Index", header, n=1, cutoff=0.5)
    hint = f" Column '{guess[0]}' looks close; rename it." if guess else ""
    raise PredictionsError(f"no image column ('Image' or 'Image Index').{hint}", file=display, rows=[1],
                           fix=f"add the image file name column; columns found: {', '.join(header[:10])}.")


def _class_columns(header: list[str], image_col: int, display: str) -> tuple[dict[str, int], list[str]]:
    """Map canonical label -> column index; returns also the ignored column names."""
    found: dict[str, int] = {}
    ignored: list[str] = []
    label_keys = {_key(label): label for label in LABELS}
    for i, column in enumerate(header):
        if i == image_col or not column:  # an empty name: a trailing comma on every line, nothing to ignore
            continue
        prefixed = column.lower().startswith(PROB_PREFIX)
        bare = column[len(PROB_PREFIX):] if prefixed else column
        label = canonical_label(bare)
        if label is None:
            near = difflib.get_close_matches(_key(bare), list(label_keys), n=1, cutoff=0.8)
            if prefixed or near:
                suggestion = f"{PROB_PREFIX}{label_keys[near[0]]}" if near else None
                raise PredictionsError(
                    f"'{column}' is not one of the 14 labels" + (f" (did you mean '{suggestion}'?)." if near else "."),
                    file=display, rows=[1], column=column,
                    fix="name class columns prob_<Label> with one of: " + ", ".join(LABELS) + ".")
            ignored.append(column)
            continue
        if label in found:
            raise PredictionsError(f"two columns hold {label}: '{header[found[label]]}' and '{column}'.",
                                   file=display, rows=[1], column=column, fix="keep one column per class.")
        found[label] = i
    if not found:
        raise PredictionsError("no class columns found.", file=display, rows=[1],
                               fix="name them prob_<Label> or <Label>, e.g. prob_Atelectasis; columns found: "
                                   + ", ".join(header[:10]) + ".")
    return found, ignored


def normalize_image_name(name: str) -> str:
    """File name of an image as written in a predictions file: trimmed, directory and formula quote dropped."""
    text = str(name).strip()
    if text.startswith("'") and text[1:2] in FORMULA_START:
        text = text[1:]
    return re.split(r"[/\\]", text)[-1].strip()


def _parse_column(values: list[str], lines: np.ndarray, column: str, display: str) -> np.ndarray:
    raw = pd.Series(values, dtype=object).str.strip()
    numbers = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    empty = raw.str.lower().isin(("", "nan", "na", "n/a", "none", "null")).to_numpy()
    if empty.any():
        raise PredictionsError(f"{int(empty.sum())} empty or NaN probabilit{'y' if empty.sum() == 1 else 'ies'}.",
                               file=display, rows=lines[empty].tolist(), column=column,
                               fix="every image needs a probability for every class in the file; "
                                   "recompute the missing ones or drop the column.")
    bad = np.isnan(numbers)
    if bad.any():
        example = raw[bad].iloc[0]
        raise PredictionsError(f"value '{example[:30]}' is not a number ({int(bad.sum())} such value(s)).",
                               file=display, rows=lines[bad].tolist(), column=column,
                               fix="write probabilities as plain decimal numbers such as 0.137.")
    outside = ~((numbers >= 0.0) & (numbers <= 1.0))
    if outside.any():
        example = numbers[outside][0]
        logits = _out_of_range_hint(numbers)
        raise PredictionsError(f"{int(outside.sum())} value(s) outside [0, 1] (e.g. {example:g}).", file=display,
                               rows=lines[outside].tolist(), column=column,
                               fix="write probabilities between 0 and 1." + logits)
    return numbers


def _out_of_range_hint(numbers: np.ndarray) -> str:
    """Why a column leaves [0, 1]: percentages (every value within 0-100, at least a tenth above 1), or
    logits / scores (negative or above 100); nothing for a stray value such as 1.7."""
    if not np.isfinite(numbers).all():
        return ""
    if numbers.min() >= 0.0 and numbers.max() <= 100.0:
        if np.mean(numbers > 1.0) >= 0.1:  # a column of percentages, not one stray value above 1
            return " They look like percentages (every value lies within 0-100): divide by 100."
        return ""
    return " They look like logits or scores: apply a sigmoid first."


def read_predictions(source: str | Path | bytes, *, name: str | None = None) -> Predictions:
    """Read and validate a prediction file; raises PredictionsError naming file, lines, column and fix."""
    display = name or (str(source) if not isinstance(source, (bytes, bytearray)) else "uploaded predictions")
    header, rows, line_list = _rows(_read_text(source, display), display)
    lines = np.asarray(line_list, dtype=np.int64)
    image_col = _image_column(header, display)
    columns, ignored = _class_columns(header, image_col, display)
    image_header = header[image_col]
    images = pd.Series([normalize_image_name(row[image_col]) for row in rows], dtype=object)
    empty = (images == "").to_numpy()
    if empty.any():
        raise PredictionsError(f"{int(empty.sum())} row(s) have no image name.", file=display,
                               rows=lines[empty].tolist(), column=image_header,
                               fix="give every row its image file name.")
    dup = images.duplicated(keep=False).to_numpy()
    if dup.any():
        first = images[dup].iloc[0]
        raise PredictionsError(f"image '{first}' appears more than once ({int(dup.sum())} duplicate rows in all).",
                               file=display, rows=lines[dup].tolist(), column=image_header,
                               fix="keep one row per image (average repeated predictions first if intended).")
    labels = tuple(label for label in LABELS if label in columns)
    probs = np.empty((len(rows), len(labels)), dtype=np.float64)
    for j, label in enumerate(labels):
        i = columns[label]
        probs[:, j] = _parse_column([row[i] for row in rows], lines, header[i], display)
    warnings: list[DataWarning] = []
    if ignored:
        warnings.append(DataWarning(f"columns ignored (not an image or class column): {', '.join(ignored[:8])}.",
                                    file=display))
    if len(rows) > 1 and np.isin(probs, (0.0, 1.0)).all():
        warnings.append(DataWarning("every value is exactly 0 or 1: these look like hard labels, not "
                                    "probabilities, so AUROC and calibration will be coarse.", file=display))
    return Predictions(images=images.to_numpy(dtype=object), probs=probs, labels=labels, file=display,
                       lines=lines, warnings=warnings)


# ---------------------------------------------------------------------------------------------
# Joining to labels


def _examples(names: Sequence[str]) -> str:
    shown = ", ".join(str(n) for n in list(names)[:_EXAMPLES])
    more = len(names) - _EXAMPLES
    return shown + (f", ... ({more} more)" if more > 0 else "")


def align(predictions: Predictions, split: object, labels_name: str | None = None, *,
          subset: bool = False) -> Aligned:
    """Join predictions to a Split (or a frame with Image, PatientId and the label columns) by image name.

    Rows come out in the labels' order. Predictions for unlabelled images are an error, reported with
    counts and example names; so are labelled images without predictions, unless `subset` (the labels
    are a whole-dataset table): then only the predicted images are kept and `n_labelled` counts all.
    """
    frame = split if isinstance(split, pd.DataFrame) else getattr(split, "frame")
    source = labels_name or getattr(split, "source", None) or "the labels file"
    missing_cols = [c for c in (IMAGE, "PatientId", *predictions.labels) if c not in frame.columns]
    if missing_cols:
        raise PredictionsError(f"the labels table lacks column(s) {', '.join(missing_cols)}.", file=source,
                               fix="load the labels with cxrcore.data.dataset.load_split.")
    label_images = frame[IMAGE].astype(str).to_numpy(dtype=object)
    index = pd.Index(predictions.images)
    position = index.get_indexer(label_images)
    known = pd.Index(label_images)
    if known.has_duplicates:
        raise PredictionsError("the labels list an image more than once.", file=source, fix="deduplicate the labels.")
    extra = ~index.isin(known)
    no_pred = position < 0
    if no_pred.all():
        raise PredictionsError(
            f"no image in common with the labels {source} ({len(predictions)} predictions, e.g. "
            f"{_examples(predictions.images)}; {len(label_images)} labelled images, e.g. {_examples(label_images)}).",
            file=predictions.file, fix="use the predictions made for this split, or the labels of the split "
                                       "the predictions were made for.")
    if extra.any():
        names = predictions.images[extra]
        raise PredictionsError(
            f"{int(extra.sum())} of {len(predictions)} predicted images are not in the labels {source} "
            f"(e.g. {_examples(names)}).", file=predictions.file, rows=predictions.lines[extra].tolist(),
            fix="predict exactly the images of this labels file (remove these rows, or pass the labels "
                "file of the split the predictions were made for).")
    if no_pred.any() and not subset:
        names = label_images[no_pred]
        raise PredictionsError(
            f"{int(no_pred.sum())} of {len(label_images)} labelled images in {source} have no prediction "
            f"(e.g. {_examples(names)}).", file=predictions.file,
            fix="predict every image of the labels file; a silently smaller test set would change the metrics.")
    y = frame.loc[:, list(predictions.labels)].to_numpy(dtype=np.uint8)
    patients = frame["PatientId"].to_numpy(dtype=np.int64)
    whole = Aligned(images=label_images, patient_ids=patients, y=y, probs=predictions.probs[np.maximum(position, 0)],
                    labels=predictions.labels, n_labelled=len(label_images))
    return whole.take(np.flatnonzero(~no_pred)) if no_pred.any() else whole


def common_images(aligned: Sequence[Aligned]) -> list[Aligned]:
    """Each join restricted to the images every one of them covers (in the first one's order).

    `compare` on a whole-dataset table: several prediction files, each for its own share of the
    table, are compared on the images they all predicted. PredictionsError when there are none."""
    keep = pd.Index(aligned[0].images)
    for a in aligned[1:]:
        keep = keep[keep.isin(a.images)]
    if keep.empty:
        raise PredictionsError("the prediction files have no image in common.",
                               fix="compare predictions made for the same images (the same split).")
    return [a.take(pd.Index(a.images).get_indexer(keep)) for a in aligned]


def coverage_line(n_evaluated: int, n_labelled: int, what: str = "those in the predictions file") -> str:
    """The first line of an evaluation on part of a whole-dataset table, e.g.
    '22,433 of 112,120 labelled images: those in the predictions file'."""
    return f"{n_evaluated:,} of {n_labelled:,} labelled images: {what}"


# ---------------------------------------------------------------------------------------------
# Writing


def write_predictions(path: str | Path, images: Sequence[str], probs: np.ndarray,
                      labels: Sequence[str] = LABELS) -> Path:
    """Write the canonical prediction file (Image, prob_<Label>...) atomically; 9 significant digits."""
    path = Path(path)
    p = np.asarray(probs, dtype=np.float64)
    names = [str(n) for n in images]
    canon = [canonical_label(label) for label in labels]
    if any(c is None for c in canon):
        bad = [label for label, c in zip(labels, canon) if c is None]
        raise PredictionsError(f"unknown label(s) {', '.join(bad)}.", fix="use the 14 ChestX-ray14 labels.")
    if len(set(canon)) != len(canon):
        raise PredictionsError("a label is given twice.", fix="pass each class once.")
    if p.ndim != 2 or p.shape != (len(names), len(canon)):
        raise PredictionsError(f"probabilities have shape {p.shape}, expected ({len(names)}, {len(canon)}).",
                               fix="pass one row per image and one column per label.")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise PredictionsError("probabilities must be finite and within [0, 1].", file=str(path),
                               fix="apply a sigmoid to logits before writing.")
    if len(set(names)) != len(names):
        raise PredictionsError("an image name is given twice.", file=str(path), fix="write one row per image.")
    header = [IMAGE] + [f"{PROB_PREFIX}{c}" for c in canon]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp(path, suffix=".csv")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            for name, row in zip(names, p):
                writer.writerow([neutralize_cell(name)] + [f"{v:.9g}" for v in row])
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path

