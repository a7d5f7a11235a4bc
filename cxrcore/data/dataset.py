"""Load a split (a set of labelled images) from any supported labels file into one normalized table.

Supported inputs, detected from the header, labels always read by column name:
  a) the course's one-hot CSV: `Image`, the 14 label columns in any order, optional `PatientId`;
  b) the NIH label table (`Data_Entry_2017*.csv[.gz]`, Kaggle's `sample_labels.csv`);
  c) a list file (one image name a line, like NIH's `train_val_list.txt`) joined to a label table.
Every split comes out as `Split.frame`: `Image`, `PatientId`, the 14 LABELS as uint8, then metadata.
"""
from __future__ import annotations

import csv
import difflib
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from cxrcore.data.labels import LABELS, NO_FINDING, canonical_label, is_no_finding
from cxrcore.errors import DatasetError, DataWarning
from cxrcore.export import neutralize_formulas
from cxrcore.fileio import read_table_bytes

IMAGE = "Image"
PATIENT = "PatientId"

#: Metadata columns of the NIH table and the names they get in a normalized frame.
NIH_METADATA = {"Follow-up #": "FollowUp", "Patient Age": "Age", "Patient Gender": "Sex",
                "View Position": "View"}
NIH_IMAGE, NIH_FINDINGS, NIH_PATIENT = "Image Index", "Finding Labels", "Patient ID"

FORMAT_ONEHOT, FORMAT_NIH, FORMAT_LIST = "onehot", "nih", "list"

_NIH_NAME = re.compile(r"^(\d{8})_(\d{3})\.png$")
_IMAGE_COLUMN_KEYS = ("image", "imageindex", "imagename", "filename")
_PATIENT_COLUMN_KEYS = ("patientid",)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
_DATA_LINE_OFFSET = 2  # header is line 1, so data row i (0-based) is on line i + 2


def _key(name: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


@dataclass
class Split:
    """One named set of labelled images, normalized whatever file it came from."""

    name: str
    frame: pd.DataFrame
    source: str
    format: str
    warnings: list[DataWarning] = field(default_factory=list)
    #: The file's own rows in file order (for writing a repaired split back in the same format).
    original: pd.DataFrame | None = None

    @property
    def labels(self) -> np.ndarray:
        """(n, 14) uint8 matrix in LABELS order."""
        return self.frame.loc[:, list(LABELS)].to_numpy(dtype=np.uint8)

    @property
    def images(self) -> np.ndarray:
        return self.frame[IMAGE].to_numpy(dtype=object)

    @property
    def patients(self) -> np.ndarray:
        return self.frame[PATIENT].to_numpy(dtype=np.int64)

    def __len__(self) -> int:
        return len(self.frame)


# ---------------------------------------------------------------------------------------------
# Reading raw text


def _display_name(source: str | Path | bytes, name: str | None) -> str:
    if name:
        return name
    return str(source) if not isinstance(source, (bytes, bytearray)) else "uploaded file"


def _read_bytes(source: str | Path | bytes, display: str) -> bytes:
    """The file's bytes, gunzipped, through cxrcore.fileio's guards (regular file, size and line caps)."""
    if not isinstance(source, (bytes, bytearray)):
        path = Path(source)
        if not path.exists():
            raise DatasetError("file not found.", file=display, fix="check the path.")
        if path.is_dir():
            raise DatasetError("is a folder, not a labels file.", file=display,
                               fix="point at a .csv file inside it.")
    return read_table_bytes(source, error=DatasetError, file=display, what="labels file")


def _decode_text(data: bytes, display: str) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DatasetError(f"is not UTF-8 text (byte 0x{data[err.start]:02x} at byte {err.start}).",
                           file=display, rows=[line],
                           fix="save the file as UTF-8 CSV (in Excel: 'CSV UTF-8').") from None
    if "\x00" in text[:4096]:
        raise DatasetError("looks like a binary file, not CSV text.", file=display,
                           fix="choose a .csv labels file.")
    return text


def _first_line(text: str) -> str:
    for line in text[:65536].splitlines():
        if line.strip():
            return line
    return ""


def _looks_like_list_file(text: str) -> bool:
    first = _first_line(text).strip()
    return "," not in first and first.lower().endswith(_IMAGE_SUFFIXES)


def _check_delimiter(header: str, display: str) -> None:
    if "," in header:
        return
    for sep, name in (("\t", "tabs"), (";", "semicolons"), ("|", "pipes")):
        if header.count(sep) >= 2:
            raise DatasetError(f"columns are separated by {name}, not commas.", file=display,
                               rows=[1], fix="save it as comma-separated CSV.")


def _read_csv(text: str, display: str) -> pd.DataFrame:
    if not text.strip():
        raise DatasetError("the file is empty.", file=display,
                           fix="export the split again; it needs a header and one row per image.")
    _check_delimiter(_first_line(text), display)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False,
                            na_values=[], skipinitialspace=True)
    except pd.errors.ParserError as err:
        match = re.search(r"line (\d+)", str(err))
        rows = [int(match.group(1))] if match else []
        raise DatasetError(f"is not valid CSV ({str(err).strip()}).", file=display, rows=rows,
                           fix="check quoting and that every row has the same number of fields.") from None
    except pd.errors.EmptyDataError:
        raise DatasetError("the file is empty.", file=display,
                           fix="export the split again; it needs a header and one row per image.") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = frame.loc[:, [c for c in frame.columns if c and not c.startswith("Unnamed:")]]
    if frame.empty:
        raise DatasetError("has a header but no rows.", file=display, fix="add one row per image.")
    return frame


# ---------------------------------------------------------------------------------------------
# Validation shared by every format


def _lines(mask: np.ndarray | pd.Series) -> list[int]:
    return [int(i) + _DATA_LINE_OFFSET for i in np.flatnonzero(np.asarray(mask))]


def _find_column(columns: Iterable[str], keys: tuple[str, ...]) -> str | None:
    for column in columns:
        if _key(column) in keys:
            return column
    return None


def _missing_column_error(wanted: list[str], columns: list[str], display: str, what: str) -> DatasetError:
    hints = []
    for name in wanted:
        close = difflib.get_close_matches(name, columns, n=1, cutoff=0.6)
        hints.append(f"'{name}'" + (f" (found '{close[0]}'?)" if close else ""))
    return DatasetError(f"missing {what} column{'s' if len(wanted) > 1 else ''} {', '.join(hints)}.",
                        file=display,
                        fix=f"rename the columns to the names above; columns found: {', '.join(columns[:20])}.")


def check_image_names(names: pd.Series, display: str, lines: np.ndarray | None = None) -> None:
    """Refuse names that could resolve outside the image root: separators, '..', empty, absolute.

    `lines` gives each name's line number in the file (default: CSV data rows after a header)."""
    text = names.astype(str)
    bad = (text.str.strip() == "") | text.str.contains(r"[/\\\x00]", regex=True) | (text.str.strip() == "..") \
        | text.str.match(r"^[A-Za-z]:")
    if bad.any():
        rows = _lines(bad.to_numpy()) if lines is None else [int(n) for n in np.asarray(lines)[bad.to_numpy()]]
        example = text[bad.to_numpy()].iloc[0]
        raise DatasetError(f"image name '{example[:80]}' is not a plain file name (empty, a path, or '..').",
                           file=display, rows=rows, column=IMAGE,
                           fix="give bare file names; images are looked up inside the image folder only.")


def _check_duplicates(names: pd.Series, display: str, column: str) -> None:
    dup = names.duplicated(keep=False).to_numpy()
    if dup.any():
        first = names[dup].iloc[0]
        raise DatasetError(f"image '{first}' and {int(dup.sum()) - 1} other row(s) are duplicates.",
                           file=display, rows=_lines(dup), column=column,
                           fix="keep one row per image (merge their labels first).")


def patient_from_names(names: pd.Series) -> pd.Series:
    """Patient number from NIH file names (00008270_015.png -> 8270); NaN where the name is not NIH-style."""
    nih = names.str.fullmatch(_NIH_NAME.pattern.strip("^$")).fillna(False).to_numpy(dtype=bool)
    number = pd.to_numeric(names.str.slice(0, 8), errors="coerce").astype(float)
    return number.where(nih)


#: Numeric patient ids at or above this are not exact in float64; they are treated as text.
_EXACT_ID_LIMIT = 2 ** 53


def _stable_ids(raw: pd.Series) -> np.ndarray:
    """A number per distinct text id that is the same in every file (so leakage across files is
    found), drawn from [2**53, 2**62) so it never collides with a numeric id."""
    codes, uniques = pd.factorize(raw)
    numbers = [_EXACT_ID_LIMIT + int.from_bytes(hashlib.blake2b(str(u).encode(), digest_size=8).digest(), "big")
               % (2 ** 62 - _EXACT_ID_LIMIT) for u in uniques]
    return np.asarray(numbers, dtype=np.int64)[codes]


def _patient_ids(frame: pd.DataFrame, image_col: str, patient_col: str | None, display: str,
                 warnings: list[DataWarning]) -> np.ndarray:
    names = frame[image_col].astype(str)
    inferred = patient_from_names(names)
    if patient_col is None:
        missing = inferred.isna().to_numpy()
        if missing.any():
            raise DatasetError(f"no PatientId column, and image names like '{names[missing].iloc[0]}' "
                               "do not carry a patient number (NIH names look like 00008270_015.png).",
                               file=display, rows=_lines(missing),
                               fix="add a PatientId column so leakage can be checked per patient.")
        return inferred.to_numpy(dtype=np.int64)
    raw = frame[patient_col].astype(str).str.strip()
    blank = raw.isin(["", "nan", "NaN", "NA", "None"]).to_numpy()
    if blank.any():
        raise DatasetError("has empty PatientId values.", file=display, rows=_lines(blank), column=patient_col,
                           fix="fill in every patient id (or drop the column if the image names are NIH-style).")
    ids = pd.to_numeric(raw, errors="coerce")
    bad = ids.isna() | (ids % 1 != 0) | (ids.abs() >= _EXACT_ID_LIMIT)
    if bad.any():
        # Non-numeric patient ids (e.g. "patient00012"): keep a stable integer per distinct id.
        digits = raw.str.extract(r"(\d+)$")[0]
        ids = pd.to_numeric(digits, errors="coerce")
        if ids.isna().any() or (ids >= _EXACT_ID_LIMIT).any() \
                or raw[~raw.duplicated()].size != ids[~raw.duplicated()].nunique():
            warnings.append(DataWarning("patient ids are not numbers; each distinct id was given a stable "
                                        "number (the same in every file).", file=display, column=patient_col))
            return _stable_ids(raw)
    ids = ids.to_numpy(dtype=np.int64)
    known = ~inferred.isna().to_numpy()
    disagree = known & (inferred.to_numpy(dtype=float, na_value=np.nan) != ids)
    if disagree.any():
        i = int(np.flatnonzero(disagree)[0])
        warnings.append(DataWarning(
            f"{int(disagree.sum())} PatientId value(s) disagree with the patient number in the file "
            f"name (e.g. {names.iloc[i]} has PatientId {ids[i]}); the column is used.",
            file=display, rows=tuple(_lines(disagree)[:5]), column=patient_col))
    return ids


# ---------------------------------------------------------------------------------------------
# Format a) the course's one-hot CSV


_BINARY = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "False": 0, "True": 1, "false": 0, "true": 1}


def _parse_binary(values: pd.Series, column: str, display: str) -> np.ndarray:
    # Factorize first: a label column holds a handful of distinct strings, so map those, not every row.
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    text = pd.Series(uniques, dtype=object).astype(str).str.strip()
    table = text.map(_BINARY).to_numpy(dtype=float)
    mapped = pd.Series(table[codes])
    text = pd.Series(np.asarray(text, dtype=object)[codes])
    bad = mapped.isna().to_numpy()
    if bad.any():
        example = text[bad].iloc[0]
        if example in ("", "nan", "NaN", "NA"):
            problem, fix = "has empty/NaN labels.", "fill every label with 0 or 1."
        elif example in ("-1", "-1.0"):
            problem = "has uncertainty labels (-1)."
            fix = "map -1 to 0 (U-Zeros) or 1 (U-Ones) before loading; the tool trains on 0/1 only."
        else:
            problem = f"has label '{example[:20]}', not 0 or 1."
            fix = "use 0 for absent and 1 for present."
        raise DatasetError(problem, file=display, rows=_lines(bad), column=column, fix=fix)
    return mapped.to_numpy(dtype=np.uint8)


def _from_onehot(raw: pd.DataFrame, display: str) -> tuple[pd.DataFrame, list[DataWarning]]:
    warnings: list[DataWarning] = []
    columns = list(raw.columns)
    image_col = _find_column(columns, _IMAGE_COLUMN_KEYS)
    label_cols: dict[str, str] = {}
    for column in columns:
        label = canonical_label(column)
        if label is None or column == image_col:
            continue
        if label in label_cols:
            raise DatasetError(f"columns '{label_cols[label]}' and '{column}' both mean {label}.", file=display,
                               rows=[1], fix="keep one column per label.")
        label_cols[label] = column
    missing = [label for label in LABELS if label not in label_cols]
    if image_col is None:
        raise _missing_column_error([IMAGE], columns, display, "image")
    if missing:
        predicted = [c for c in columns if c.lower().startswith("prob_") and canonical_label(c[5:]) is not None]
        if predicted:
            raise DatasetError(f"looks like a predictions file (probability columns such as '{predicted[0]}'), "
                               "not a labels file.", file=display, rows=[1],
                               fix="give this file as the predictions (--predictions) and the split's labels file "
                                   "(0/1 label columns) as the labels (--labels).")
        unused = [c for c in columns if c not in label_cols.values()]
        raise _missing_column_error(missing, unused or columns, display, "label")
    names = raw[image_col].astype(str).str.strip()
    check_image_names(names, display)
    _check_duplicates(names, display, image_col)
    patient_col = _find_column(columns, _PATIENT_COLUMN_KEYS)
    out = pd.DataFrame({IMAGE: names.to_numpy(dtype=object)})
    out[PATIENT] = _patient_ids(raw.assign(**{image_col: names}), image_col, patient_col, display, warnings)
    for label in LABELS:
        out[label] = _parse_binary(raw[label_cols[label]], label_cols[label], display)
    extra = [c for c in columns if c not in (image_col, patient_col, *label_cols.values())]
    for column in extra:
        out[column] = raw[column].to_numpy()
    return out, warnings


# ---------------------------------------------------------------------------------------------
# Format b) the NIH label table


def _findings_matrix(findings: pd.Series, display: str) -> np.ndarray:
    """Pipe-separated findings -> (n, 14) uint8; parses each distinct string once (~800 in NIH)."""
    codes, uniques = pd.factorize(findings.str.strip())
    table = np.zeros((len(uniques), len(LABELS)), dtype=np.uint8)
    for u, text in enumerate(uniques):
        for token in str(text).split("|"):
            token = token.strip()
            if not token or is_no_finding(token):
                continue
            label = canonical_label(token)
            if label is None:
                bad = codes == u
                raise DatasetError(f"unknown finding '{token}' (expected the 14 ChestX-ray14 labels or "
                                   f"'{NO_FINDING}').", file=display, rows=_lines(bad),
                                   column=NIH_FINDINGS, fix="correct the spelling or remove that finding.")
            table[u, LABELS.index(label)] = 1
    return table[codes]


def _nih_age(values: pd.Series) -> np.ndarray:
    # The 2017 table and Kaggle's sample_labels.csv write ages like "058Y"; v2020 writes 58.
    codes, uniques = pd.factorize(values.astype(str))
    text = pd.Series(uniques, dtype=object).str.strip().str.upper()
    number = pd.to_numeric(text.str.extract(r"^(\d+)")[0], errors="coerce")
    unit = text.str.extract(r"([YMD])$")[0]
    number = number.where(unit.ne("M"), number / 12).where(unit.ne("D"), number / 365)
    return number.to_numpy(dtype=float)[codes]


def _from_nih(raw: pd.DataFrame, display: str) -> tuple[pd.DataFrame, list[DataWarning]]:
    warnings: list[DataWarning] = []
    columns = list(raw.columns)
    needed = [c for c in (NIH_IMAGE, NIH_FINDINGS) if c not in columns]
    if needed:
        raise _missing_column_error(needed, columns, display, "NIH")
    names = raw[NIH_IMAGE].astype(str).str.strip()
    check_image_names(names, display)
    _check_duplicates(names, display, NIH_IMAGE)
    patient_col = NIH_PATIENT if NIH_PATIENT in columns else None
    out = pd.DataFrame({IMAGE: names.to_numpy(dtype=object)})
    out[PATIENT] = _patient_ids(raw.assign(**{NIH_IMAGE: names}), NIH_IMAGE, patient_col, display, warnings)
    matrix = _findings_matrix(raw[NIH_FINDINGS], display)
    for i, label in enumerate(LABELS):
        out[label] = matrix[:, i]
    for source, target in NIH_METADATA.items():
        if source in columns:
            if target == "Age":
                out[target] = _nih_age(raw[source])
            elif target == "FollowUp":
                out[target] = pd.to_numeric(raw[source], errors="coerce").to_numpy()
            else:
                out[target] = raw[source].astype(str).str.strip().to_numpy(dtype=object)
    return out, warnings


# ---------------------------------------------------------------------------------------------
# Format c) a list file joined to a label table


def read_list_file(source: str | Path | bytes, name: str | None = None) -> list[str]:
    """Image names from a list file, one a line; blank lines ignored, duplicates refused."""
    display = _display_name(source, name)
    text = _decode_text(_read_bytes(source, display), display)
    numbered = [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    names = [name for _, name in numbered]
    if not names:
        raise DatasetError("the list file is empty.", file=display, fix="put one image name a line.")
    series = pd.Series(names)
    lines = np.array([i for i, _ in numbered], dtype=np.int64)
    check_image_names(series, display, lines=lines)
    dup = series.duplicated(keep=False).to_numpy()
    if dup.any():
        raise DatasetError(f"image '{series[dup].iloc[0]}' is listed more than once.", file=display,
                           rows=[int(i) for i in lines[dup]], fix="list each image once.")
    return names


def select_images(table: Split, names: list[str], *, name: str, list_display: str) -> Split:
    """Rows of a label table named in a list file, in the list's order."""
    position = pd.Index(table.frame[IMAGE]).get_indexer(names)
    missing = position < 0
    if missing.any():
        rows = [int(i) + 1 for i in np.flatnonzero(missing)]
        examples = ", ".join(np.asarray(names, dtype=object)[missing][:3])
        raise DatasetError(f"{int(missing.sum())} listed image(s) are not in the label table "
                           f"{table.source} (e.g. {examples}).", file=list_display, rows=rows,
                           fix="use the label table that matches this list.")
    frame = table.frame.iloc[position].reset_index(drop=True)
    original = None if table.original is None else table.original.iloc[position].reset_index(drop=True)
    return Split(name=name, frame=frame, source=f"{table.source}@{list_display}", format=FORMAT_LIST,
                 warnings=list(table.warnings), original=original)


# ---------------------------------------------------------------------------------------------
# Entry points


def detect_format(header: list[str]) -> str:
    """Which supported layout a header belongs to: FORMAT_NIH or FORMAT_ONEHOT.

    A header without any label column but with 'Image Index' or a near miss of 'Finding Labels' is
    NIH, so a misspelt column is reported as such (with a suggestion), not as 14 missing labels."""
    if NIH_FINDINGS in header:
        return FORMAT_NIH
    if not any(canonical_label(c) for c in header) and (
            NIH_IMAGE in header or difflib.get_close_matches(NIH_FINDINGS, header, n=1, cutoff=0.8)):
        return FORMAT_NIH
    return FORMAT_ONEHOT


def load_table(source: str | Path | bytes, *, name: str | None = None, split_name: str | None = None) -> Split:
    """Load a labels file (course one-hot CSV or NIH table, optionally gzipped) as a Split."""
    display = _display_name(source, name)
    text = _decode_text(_read_bytes(source, display), display)
    if _looks_like_list_file(text):
        raise DatasetError("is a list of image names without labels.", file=display,
                           fix="pair it with a label table: NAME=TABLE@LIST (e.g. "
                               "train=Data_Entry_2017_v2020.csv.gz@train_val_list.txt).")
    raw = _read_csv(text, display)
    fmt = detect_format(list(raw.columns))
    frame, warnings = (_from_nih if fmt == FORMAT_NIH else _from_onehot)(raw, display)
    label = split_name or Path(display).name.split(".")[0]
    return Split(name=label, frame=frame, source=display, format=fmt, warnings=warnings, original=raw)


def load_split(source: str | Path | bytes, *, name: str | None = None, split_name: str | None = None,
               label_table: Split | str | Path | None = None) -> Split:
    """Load any supported labels file; a list file needs `label_table` to take its labels from."""
    display = _display_name(source, name)
    if label_table is None:
        return load_table(source, name=name, split_name=split_name)
    table = label_table if isinstance(label_table, Split) else load_table(label_table)
    names = read_list_file(source, name=display)
    return select_images(table, names, name=split_name or Path(display).name.split(".")[0],
                         list_display=display)


_LIST_FILE = re.compile(r"^(train_val|train|valid|val|test)_list\.txt$", re.IGNORECASE)


def is_dataset_table(split: Split) -> bool:
    """True when the labels are a whole-dataset table (where labels live), not one split of it.

    An NIH-format table read on its own (the release's Data_Entry_2017 table), or any table with
    split list files (`test_list.txt`...) beside it. Predictions made elsewhere usually cover one
    split of such a table, so evaluating "the images that have predictions" is the intent there;
    a course CSV or TABLE@LIST is itself a split, and a missing prediction is a mistake.
    """
    if split.format == FORMAT_LIST:
        return False
    if split.format == FORMAT_NIH:
        return True
    folder = Path(split.source).parent
    try:
        return folder != Path(".") and folder.is_dir() and any(_LIST_FILE.match(p.name) for p in folder.iterdir())
    except OSError:
        return False


def parse_split_spec(spec: str) -> tuple[str, str, str | None]:
    """'NAME=FILE' or 'NAME=TABLE@LIST' (or a bare FILE) -> (name, file, list_file or None)."""
    name, sep, rest = spec.partition("=")
    if not sep:
        name, rest = Path(spec).name.split(".")[0], spec
    name = name.strip()
    if not name or not rest:
        raise DatasetError(f"'{spec}' is not NAME=FILE.", fix="write e.g. train=train.csv or "
                           "train=Data_Entry_2017_v2020.csv.gz@train_val_list.txt.")
    table, at, list_file = rest.rpartition("@")
    if at and table and list_file:
        return name, table, list_file
    return name, rest, None


def write_split(split: Split, frame: pd.DataFrame, path: str | Path) -> None:
    """Write rows of `split` (a subset/reordering of split.frame, same index labels as original rows)
    back in the split's own format: one-hot and NIH files keep their columns, list splits a name a line."""
    path = Path(path)
    if split.format == FORMAT_LIST:
        path.write_text("\n".join(frame[IMAGE].astype(str)) + "\n", encoding="utf-8")
        return
    rows = split.original.loc[frame.index] if split.original is not None else frame
    neutralize_formulas(rows).to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL)
